"""The variational bound against closed-form answers (Gaussian data, optimal denoiser)."""

import math

import pytest
import torch

from difflab.diffusion.losses import diffusion_loss, min_snr_weight, training_target
from difflab.diffusion.oracles import gaussian_oracle
from difflab.diffusion.process import DiscreteProcess, VPProcess
from difflab.diffusion.vlb import (
    discretized_gaussian_log_likelihood,
    gaussian_kl,
    vlb_bits_per_dim,
    vlb_term,
)

D, MU, S = 8, 0.1, 0.2


def quantized_gaussian(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = (MU + S * torch.randn(n, D, generator=g, dtype=torch.float64)).clamp(-1, 1)
    return torch.round((x + 1) * 127.5) / 127.5 - 1  # the 8-bit grid in [-1, 1]


def analytic_bpd(x: torch.Tensor) -> torch.Tensor:
    """-log2 P(x) per dim where P integrates N(MU, S^2) over each 8-bit bin."""
    ll = discretized_gaussian_log_likelihood(
        x, torch.full_like(x, MU), torch.full_like(x, math.log(S))
    )
    return -ll.sum(1) / (D * math.log(2))


def test_gaussian_kl_closed_form():
    kl = gaussian_kl(torch.tensor(1.0), torch.tensor(4.0), torch.tensor(0.0), torch.tensor(1.0))
    assert float(kl) == pytest.approx(0.5 * (math.log(1 / 4) + 4 + 1 - 1))
    assert float(
        gaussian_kl(torch.tensor(0.3), torch.tensor(2.0), torch.tensor(0.3), torch.tensor(2.0))
    ) == pytest.approx(0.0)


def test_discretized_likelihood_sums_to_one_over_the_grid():
    grid = torch.linspace(-1, 1, 256, dtype=torch.float64)
    ll = discretized_gaussian_log_likelihood(
        grid, torch.full_like(grid, 0.3), torch.full_like(grid, math.log(0.4))
    )
    assert float(ll.exp().sum()) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_vlb_of_gaussian_oracle_matches_analytic_nll(schedule):
    process = DiscreteProcess.from_schedule(schedule, 1000)
    oracle = gaussian_oracle(process, MU, S, D)
    x = quantized_gaussian(1500)
    ana = analytic_bpd(x)
    out = vlb_bits_per_dim(oracle, x, variance="beta", generator=torch.Generator().manual_seed(1))
    bpd = out["bpd"]
    stderr = math.sqrt(float(bpd.var() / len(x)) + float(ana.var() / len(x)))
    # Upper bound on the NLL, and tight for T = 1000 with the optimal denoiser.
    assert float(bpd.mean()) == pytest.approx(float(ana.mean()), abs=0.06)
    assert float(bpd.mean()) > float(ana.mean()) - 3 * stderr
    assert float(out["prior_bpd"].mean()) < 1e-3  # L_T vanishes for these schedules
    parts = out["prior_bpd"] + out["decoder_bpd"] + out["diffusion_bpd"]
    torch.testing.assert_close(parts, bpd)


def test_posterior_variance_bound_is_looser_than_beta():
    """Ho et al. report beta~_t gives a worse bound than beta_t at small t; so must we."""
    process = DiscreteProcess.from_schedule("linear", 1000)
    oracle = gaussian_oracle(process, MU, S, D)
    x = quantized_gaussian(400)
    post = vlb_bits_per_dim(
        oracle, x, variance="posterior", generator=torch.Generator().manual_seed(2)
    )
    beta = vlb_bits_per_dim(oracle, x, variance="beta", generator=torch.Generator().manual_seed(2))
    assert float(post["bpd"].mean()) > float(beta["bpd"].mean()) + 0.1


def test_subsampled_vlb_is_unbiased():
    process = DiscreteProcess.from_schedule("cosine", 1000)
    oracle = gaussian_oracle(process, MU, S, D)
    x = quantized_gaussian(1500, seed=3)
    full = vlb_bits_per_dim(oracle, x, variance="beta", generator=torch.Generator().manual_seed(0))
    sub = vlb_bits_per_dim(
        oracle, x, variance="beta", num_timesteps=60, generator=torch.Generator().manual_seed(5)
    )
    se = float(sub["bpd"].std()) / math.sqrt(len(x))
    assert abs(float(sub["bpd"].mean()) - float(full["bpd"].mean())) < 4 * se + 0.01


def test_vlb_rejects_bad_input():
    oracle = gaussian_oracle(DiscreteProcess.from_schedule("linear", 10), MU, S, D)
    x = quantized_gaussian(4)
    with pytest.raises(ValueError, match="posterior, beta"):
        vlb_term(oracle, x, 3, variance="learned")
    with pytest.raises(ValueError, match="num_timesteps"):
        vlb_bits_per_dim(oracle, x, num_timesteps=0)
    with pytest.raises(TypeError, match="DiscreteProcess"):
        vlb_term(gaussian_oracle(VPProcess(), MU, S, D), x, 3)


@pytest.mark.parametrize("param", ["eps", "x0", "v", "score"])
def test_loss_is_zero_at_the_target_and_positive_elsewhere(param):
    process = DiscreteProcess.from_schedule("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 1, 4, 4, generator=g), torch.randn(6, 1, 4, 4, generator=g)
    t = torch.tensor([0.0, 10, 200, 500, 900, 999])
    target = training_target(process, param, x0, eps, t).float()
    assert float(diffusion_loss(target, process, param, x0, eps, t)) < 1e-10
    assert float(diffusion_loss(target + 0.1, process, param, x0, eps, t)) > 1e-4


def test_v_target_matches_salimans_ho():
    process = DiscreteProcess.from_schedule("linear", 1000)
    x0, eps, t = torch.randn(3, 5), torch.randn(3, 5), torch.tensor([1.0, 400, 999])
    a = process.alpha(t).float()[:, None]
    s = process.sigma(t).float()[:, None]
    torch.testing.assert_close(training_target(process, "v", x0, eps, t).float(), a * eps - s * x0)


def test_min_snr_weights():
    process = DiscreteProcess.from_schedule("cosine", 1000)
    t = torch.tensor([0.0, 500, 999])
    snr = torch.exp(process.log_snr(t))
    w = min_snr_weight(process, t, "eps", 5.0)
    torch.testing.assert_close(w, snr.clamp(max=5) / snr)
    assert float(w[-1]) == pytest.approx(1.0)  # high noise: plain eps loss
    with pytest.raises(ValueError):
        min_snr_weight(process, t, "score", 5.0)


@pytest.mark.parametrize("t", [1.0, 120.0, 500.0, 900.0])
def test_min_snr_loss_is_the_same_x0_loss_whatever_the_network_predicts(t):
    """Hang et al. (2023, eq. 6): weighted, every target's loss is min(SNR, gamma) ||x0^ - x0||^2.

    One x0 estimate, expressed as the eps, x0 and v outputs that imply it at the same x_t,
    must give the same Min-SNR loss; the v weight min(SNR, gamma) / (SNR + 1) is what the
    default Fashion-MNIST preset trains with.
    """
    process = DiscreteProcess.from_schedule("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 1, 16, dtype=torch.float64, generator=g)
    x0_hat = x0 + 0.3 * torch.randn(1, 16, dtype=torch.float64, generator=g)
    tt = torch.tensor([t])
    a, s = float(process.alpha(tt)), float(process.sigma(tt))
    x_t = a * x0 + s * eps
    eps_hat = (x_t - a * x0_hat) / s
    outputs = {"x0": x0_hat, "eps": eps_hat, "v": a * eps_hat - s * x0_hat}
    snr = a**2 / s**2
    expected = min(snr, 5.0) * float(((x0_hat - x0) ** 2).mean())
    for name, out in outputs.items():
        got = diffusion_loss(out, process, name, x0, eps, tt, snr_gamma=5.0)
        assert float(got) == pytest.approx(expected, rel=1e-6), name


def test_unknown_loss_and_parameterization():
    process = DiscreteProcess.from_schedule("linear", 10)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="l2, l1, huber"):
        diffusion_loss(x, process, "eps", x, x, torch.tensor([1.0, 2.0]), loss_type="l3")
    with pytest.raises(ValueError, match="allowed"):
        training_target(process, "mu", x, x, torch.tensor([1.0, 2.0]))
