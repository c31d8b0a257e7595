"""EDM (Karras et al. 2022) against closed forms: the preconditioning of Table 1, the denoiser
built from the optimal network for Gaussian data, the loss at that optimum, every sampler and
the likelihood on the EDM process, guidance, and a small learning test.

The optimal denoiser for x0 ~ N(mu, s^2 I) at x = x0 + sigma n is D*(x; sigma) = mu +
s^2 / (s^2 + sigma^2) (x - mu), so the optimal network is F* = (D* - c_skip x) / c_out with
x = x_in / c_in and sigma = exp(4 c_noise): written out below from the paper's formulas, not
from difflab.diffusion.edm, and compared with difflab.diffusion.oracles, which derives the same
posterior mean from alpha and sigma. At that optimum the per-sample loss, given sigma, is
m(sigma) chi^2_D / D with m(sigma) = s^2 (sigma^2 + sigma_data^2) / (sigma_data^2 (s^2 +
sigma^2)) (the posterior variance over c_out^2), so its ratio to m has mean 1 and standard
error sqrt(2 / (D N)) over N samples: the tolerances below are 4.5 of those.

Sampling: N(0.3, 0.5^2 I), D = 8, 4000 samples in float64 through `sample`, i.e. from the
prior, on Karras grids (EDM's eq. 5 grid; a uniform grid in t = sigma would put almost no points
at low noise). Monte-Carlo error: 0.0028 on the mean, 0.002 on the std. Mean tolerance 0.012;
std tolerance per sampler, above its discretisation bias measured over 8 seeds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from process_learning import held_out_losses

from difflab.diffusion.denoiser import GuidedDenoiser
from difflab.diffusion.edm import (
    EDMDenoiser,
    EDMProcess,
    edm_loss_weight,
    edm_preconditioning,
)
from difflab.diffusion.oracles import gaussian_oracle
from difflab.diffusion.process import DiscreteProcess, VEProcess, VPProcess
from difflab.samplers import (
    DEFAULTS,
    EVALS_PER_STEP,
    SAMPLERS,
    default_spacing,
    default_timesteps,
    make_timesteps,
    sample,
)
from difflab.samplers.likelihood import ode_log_likelihood
from difflab.samplers.timesteps import truncate_timesteps

MU, S, D, N = 0.3, 0.5, 8, 4000
SD = 0.5  # sigma_data


def optimal_net(mu: float, s: float, sigma_data: float = SD):
    """F*(x_in, c_noise) for N(mu, s^2 I) data, from Table 1 and the Gaussian posterior mean."""

    def net(x_in, c_noise, cond=None):
        sigma = torch.exp(4 * c_noise.double())[:, None]
        var = sigma**2 + sigma_data**2
        x = x_in * torch.sqrt(var)  # c_in = 1 / sqrt(sigma^2 + sigma_data^2)
        d_star = mu + s**2 / (s**2 + sigma**2) * (x - mu)
        c_skip, c_out = sigma_data**2 / var, sigma * sigma_data / torch.sqrt(var)
        return (d_star - c_skip * x) / c_out

    return net


def m_opt(sigma, s, sigma_data=SD):
    """Loss per dimension of the optimal network at noise level sigma."""
    return s**2 * (sigma**2 + sigma_data**2) / (sigma_data**2 * (s**2 + sigma**2))


# ------------------------------------------------------------------ Table 1
@settings(max_examples=30, deadline=None)
@given(log_sigma=st.floats(-7, 5), sigma_data=st.floats(0.05, 2.0))
def test_preconditioning_is_table_1_and_gives_unit_variances(log_sigma, sigma_data):
    sigma = math.exp(log_sigma)
    c_skip, c_out, c_in, c_noise = (float(c) for c in edm_preconditioning(sigma, sigma_data))
    var = sigma**2 + sigma_data**2
    assert c_skip == pytest.approx(sigma_data**2 / var, rel=1e-12)
    assert c_out == pytest.approx(sigma * sigma_data / math.sqrt(var), rel=1e-12)
    assert c_in == pytest.approx(1 / math.sqrt(var), rel=1e-12)
    assert c_noise == pytest.approx(log_sigma / 4, rel=1e-9, abs=1e-12)
    # For data of std sigma_data: the network's input and its target have unit variance ...
    assert c_in**2 * var == pytest.approx(1, rel=1e-12)
    target_var = ((1 - c_skip) ** 2 * sigma_data**2 + c_skip**2 * sigma**2) / c_out**2
    assert target_var == pytest.approx(1, rel=1e-9)
    # ... and lambda(sigma) c_out^2 = 1: the weighted loss is the plain MSE of F.
    assert float(edm_loss_weight(sigma, sigma_data)) * c_out**2 == pytest.approx(1, rel=1e-12)


# ------------------------------------------------------------------ the process
def test_process_is_sigma_equals_t():
    p = EDMProcess()
    t = make_timesteps(p, 18, "karras")
    # Karras et al. eq. 5 with N = 18, rho = 7, sigma from 80 down to 0.002.
    i = torch.arange(18, dtype=torch.float64)
    eq5 = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    torch.testing.assert_close(t, eq5, rtol=1e-13, atol=0)  # float64 throughout
    assert torch.equal(p.alpha(t), torch.ones_like(t)) and torch.equal(p.sigma(t), t)
    assert torch.equal(p.sigma_ve(t), t)
    torch.testing.assert_close(p.t_from_log_snr(p.log_snr(t)), t, rtol=1e-12, atol=0)
    f, g2 = p.sde_coefficients(t)  # f = d log alpha / dt, g^2 = d sigma^2 / dt - 2 f sigma^2
    h = 1e-6 * t
    dvar = (p.sigma(t + h) ** 2 - p.sigma(t - h) ** 2) / (2 * h)
    assert torch.equal(f, torch.zeros_like(t))
    torch.testing.assert_close(g2, dvar, rtol=1e-8, atol=0)
    x0, n = torch.ones(18, 3, dtype=torch.float64), torch.randn(18, 3, dtype=torch.float64)
    torch.testing.assert_close(p.q_sample(x0, t, n), x0 + t[:, None] * n)
    # `sample`'s default grid for EDM's Heun sampler is exactly that one (no cap: not VP).
    seen = []
    sample(gaussian_oracle(p, MU, S, 2), (2, 2), "heun", callback=seen.append)
    assert [info["t"] for info in seen] == pytest.approx(eq5.tolist(), rel=1e-13)


def test_the_karras_grid_takes_the_process_own_ends_as_bounds():
    """sigma_min = 0.002 and sigma_max = 80 name EDM's own range (they once failed the range
    check by float32 rounding of 0.002)."""
    p = EDMProcess()
    torch.testing.assert_close(make_timesteps(p, 10, "karras", sigma_min=0.002, sigma_max=80.0),
                               make_timesteps(p, 10, "karras"), rtol=1e-13, atol=0)


def test_every_sampler_samples_edm_on_the_karras_grid_by_default():
    """t = sigma: a grid uniform in it (DDIM's, DDPM's, the SDE samplers' own default) would
    put one point of 50 below sigma 1.6; on EDM every sampler takes eq. 5's grid unless told."""
    p = EDMProcess()
    for name in SAMPLERS:
        assert default_spacing(name, p) == "karras"
        want = make_timesteps(p, 7, "karras")
        assert torch.equal(default_timesteps(name, p, 7), want), name
    assert torch.equal(default_timesteps("ddim", p, 7, "uniform"), make_timesteps(p, 7))
    assert default_spacing("ddim", VPProcess()) == DEFAULTS["ddim"][1] == "uniform"


def test_training_noise_levels_are_log_normal():
    p = EDMProcess(p_mean=-1.2, p_std=1.2)
    n = 200_000
    sigma = p.sample_t(n, torch.Generator().manual_seed(0))
    assert sigma.dtype == torch.float64 and bool((sigma > 0).all())
    log_s = torch.log(sigma)
    se = 1.2 / math.sqrt(n)
    assert abs(float(log_s.mean()) + 1.2) < 4.5 * se
    assert abs(float(log_s.std()) - 1.2) < 4.5 * se / math.sqrt(2)
    again = p.sample_t(n, torch.Generator().manual_seed(0))
    assert torch.equal(sigma, again)


# ------------------------------------------------------------------ the denoiser vs the oracle
def test_zero_network_is_optimal_for_data_of_std_sigma_data():
    """For N(0, sigma_data^2 I) data D* = c_skip x, so F* = 0: Table 1's whole design."""
    p = EDMProcess()
    oracle = gaussian_oracle(p, 0.0, SD, 5)
    den = EDMDenoiser(lambda x, c, cond=None: torch.zeros_like(x), p)
    x = 3 * torch.randn(40, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in make_timesteps(p, 12, "karras"):
        got, want = den(x, t), oracle(x, t)
        torch.testing.assert_close(got.x0, want.x0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got.eps, want.eps, rtol=1e-10, atol=1e-10)


PROCESSES = {
    "edm": EDMProcess(),
    "vp": VPProcess(),
    "cosine": DiscreteProcess.from_schedule("cosine", 1000),
}


@pytest.mark.parametrize("name", list(PROCESSES))
def test_preconditioned_optimal_network_recovers_the_oracle(name):
    """The EDM wrapper works on the VE view x / alpha, sigma_ve of any process."""
    p = PROCESSES[name]
    mu, s = 0.7, 0.3
    oracle = gaussian_oracle(p, mu, s, 4)
    den = EDMDenoiser(optimal_net(mu, s), p)
    gen = torch.Generator().manual_seed(1)
    for t in make_timesteps(p, 9, "karras"):
        a, sg = float(p.alpha(t)), float(p.sigma(t))
        x = a * mu + math.sqrt(a * a * s * s + sg * sg) * torch.randn(
            30, 4, generator=gen, dtype=torch.float64
        )
        got, want = den(x, t), oracle(x, t)
        torch.testing.assert_close(got.x0, want.x0, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(got.eps, want.eps, rtol=1e-7, atol=1e-7)


# ------------------------------------------------------------------ the loss at the optimum
@pytest.mark.parametrize("s", [SD, 0.2])
def test_loss_at_the_optimum_is_the_posterior_variance_over_c_out_squared(s):
    p = EDMProcess()
    gen = torch.Generator().manual_seed(2)
    x0 = gaussian_oracle(p, MU, s, D).sample(N, gen)
    sigma = torch.exp(torch.linspace(math.log(0.002), math.log(80), N, dtype=torch.float64))
    noise = torch.randn(N, D, generator=gen, dtype=torch.float64)
    loss = p.loss_at(optimal_net(MU, s), x0, sigma, noise)
    assert loss.shape == (N,) and loss.dtype == torch.float64
    ratio = loss / m_opt(sigma, s)
    assert abs(float(ratio.mean()) - 1) < 4.5 * math.sqrt(2 / (D * N))
    if s == SD:  # m = 1 at every sigma: the loss does not depend on the noise level
        assert float(m_opt(sigma, s).sub(1).abs().max()) < 1e-12
    # The trained objective is lambda(sigma) ||D - x0||^2 for the D the samplers use.
    den = p.denoiser(optimal_net(MU, s))
    x0_hat = den(x0 + sigma[:, None] * noise, sigma).x0
    weighted = edm_loss_weight(sigma) * ((x0_hat - x0) ** 2).mean(1)
    torch.testing.assert_close(loss, weighted, rtol=1e-9, atol=1e-12)


def test_training_loss_at_the_optimum_matches_the_log_normal_expectation():
    p, s = EDMProcess(), 0.2
    gen = torch.Generator().manual_seed(3)
    x0 = gaussian_oracle(p, MU, s, D).sample(N, gen)
    loss = p.training_loss(optimal_net(MU, s), x0, None, torch.Generator().manual_seed(4))
    again = p.training_loss(optimal_net(MU, s), x0, None, torch.Generator().manual_seed(4))
    assert torch.equal(loss, again)  # sigma and noise come from the generator only
    # E over ln sigma ~ N(P_mean, P_std^2) of m(sigma), by 64-point Gauss-Hermite quadrature.
    z, w = np.polynomial.hermite.hermgauss(64)
    sigma = np.exp(p.p_mean + p.p_std * math.sqrt(2) * z)
    expected = float((w * m_opt(sigma, s)).sum() / math.sqrt(math.pi))
    se = float(loss.std()) / math.sqrt(N)
    assert abs(float(loss.mean()) - expected) < 4.5 * se, (float(loss.mean()), expected)


# ------------------------------------------------------------------ every sampler on EDM
# sampler -> (steps or None for the default, std tolerance). Karras grids throughout.
# Measured std bias over 8 seeds in brackets.
SAMPLER_CASES = {
    "ddpm": (200, 0.03),  # [-0.017, -0.013]
    "ddim": (None, 0.045),  # [-0.034, -0.025] first order at 50 steps
    "plms": (None, 0.015),  # [-0.005, +0.004]
    "deis": (None, 0.04),  # [-0.028, -0.019]
    "dpmpp_2m": (None, 0.04),  # [+0.019, +0.028]
    "dpmpp_3m": (None, 0.025),  # [-0.011, -0.002]
    "dpmpp_2s": (None, 0.055),  # [-0.044, -0.036] 10 points, 19 NFE
    "dpmpp_2m_sde": (None, 0.025),  # [+0.006, +0.012]
    "euler": (None, 0.045),  # = DDIM
    "heun": (None, 0.045),  # [+0.022, +0.031] EDM's Algorithm 1, 18 points, 35 NFE
    "euler_ancestral": (None, 0.07),  # [-0.058, -0.052]
    "flow_euler": (None, 0.045),  # = DDIM
    "flow_heun": (None, 0.03),  # [+0.007, +0.016]
    "euler_maruyama": (200, 0.025),  # [+0.004, +0.009]
    "pc": (100, 0.025),  # [+0.005, +0.011]
    "ode": (None, 0.015),  # [-0.006, +0.003] adaptive RK45
}


def test_every_registered_sampler_is_checked_on_edm():
    assert set(SAMPLER_CASES) == set(SAMPLERS)


@pytest.mark.parametrize("name", list(SAMPLER_CASES))
def test_every_sampler_reproduces_gaussian_data(name):
    steps, tol = SAMPLER_CASES[name]
    p = EDMProcess()
    oracle = gaussian_oracle(p, MU, S, D)
    gen = torch.Generator().manual_seed(5)
    out = sample(oracle, (N, D), name, steps, "karras", generator=gen, dtype=torch.float64)
    assert out.shape == (N, D) and bool(torch.isfinite(out).all())
    assert abs(float(out.mean()) - MU) < 0.012
    assert abs(float(out.std()) - S) < tol, f"std {float(out.std()):.4f} vs {S} (tol {tol})"
    if name != "ode":
        n_points = steps or DEFAULTS[name][0]
        assert oracle.nfe == EVALS_PER_STEP.get(name, 1) * (n_points - 1) + 1


def test_stochastic_sampler_algorithm_2():
    """EDM's stochastic sampler is `heun` with churn (ImageNet settings of Table 5)."""
    p = EDMProcess()
    oracle = gaussian_oracle(p, MU, S, D)
    churn = dict(s_churn=40, s_tmin=0.05, s_tmax=50, s_noise=1.003)
    gen = torch.Generator().manual_seed(6)
    out = sample(oracle, (N, D), "heun", 40, generator=gen, dtype=torch.float64, **churn)
    assert abs(float(out.mean()) - MU) < 0.012
    assert abs(float(out.std()) - S) < 0.03  # measured +0.016..+0.022 over 4 seeds
    assert oracle.nfe == 2 * 40 - 1
    plain = sample(oracle, (N, D), "heun", 40, generator=torch.Generator().manual_seed(6))
    churned = sample(
        oracle, (N, D), "heun", 40, generator=torch.Generator().manual_seed(6), **churn
    )
    assert not torch.equal(plain, churned)


def test_heun_in_t_is_edms_heun():
    """With sigma(t) = t, Heun in t on the probability-flow ODE is Algorithm 1 itself."""
    p = EDMProcess()
    oracle = gaussian_oracle(p, MU, S, 3)
    ts = make_timesteps(p, 18, "karras")
    x = 80 * torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(
        SAMPLERS["flow_heun"](oracle, x, ts),
        SAMPLERS["heun"](oracle, x, ts),
        rtol=1e-10,
        atol=1e-10,
    )


# ------------------------------------------------------------------ guidance and likelihood
def test_guidance_on_the_prediction_is_guidance_on_the_network_output():
    p, w = EDMProcess(), 3.0
    f_c, f_u = optimal_net(0.8, 0.3), optimal_net(-0.2, 0.3)
    guided = GuidedDenoiser(EDMDenoiser(f_c, p), EDMDenoiser(f_u, p), w)
    direct = EDMDenoiser(lambda x, c, cond=None: f_u(x, c) + w * (f_c(x, c) - f_u(x, c)), p)
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in (0.01, 0.5, 7.0):
        got, want = guided(x, torch.tensor(t)), direct(x, torch.tensor(t))
        torch.testing.assert_close(got.x0, want.x0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got.eps, want.eps, rtol=1e-12, atol=1e-12)


def test_ode_likelihood_on_the_edm_process():
    """The probability-flow ODE log-likelihood is the exact log p at sigma_min (test_likelihood's
    tolerance, 1e-2 nats; measured 1.3e-4)."""
    p = EDMProcess()
    oracle = gaussian_oracle(p, 0.5, 0.4, 3)
    x = oracle.sample(12, torch.Generator().manual_seed(0))
    log_p = ode_log_likelihood(oracle, x, prior_log_prob=lambda y: oracle.log_prob(y, p.t_max))
    torch.testing.assert_close(log_p, oracle.log_prob(x, p.t_min), rtol=0, atol=1e-2)


# ------------------------------------------------------------------ learning
def test_training_closes_the_gap_to_the_closed_form_minimum():
    """400 Adam steps on N(0.8, 0.3^2 I) in 2-D (about a second): the held-out loss must close
    97 % of the gap between the zero network and the optimum (measured 99.5-99.7 %, 5 seeds)."""
    trained, zero, best = held_out_losses(EDMProcess(), optimal_net(0.8, 0.3))
    assert best < trained < zero
    assert (zero - trained) / (zero - best) > 0.97, (trained, zero, best)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sigma_min": 0.0}, "sigma_min must be a positive finite number"),
        ({"sigma_max": math.inf}, "sigma_max must be a positive finite number"),
        ({"sigma_min": 5.0, "sigma_max": 1.0}, "sigma_min < sigma_max"),
        ({"sigma_data": -0.5}, "sigma_data must be a positive"),
        ({"p_std": 0.0}, "P_std must be a positive"),
        ({"p_mean": math.nan}, "P_mean must be a finite number"),
        ({"p_mean": "low"}, "P_mean must be a finite number"),
    ],
)
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EDMProcess(**kwargs)
    with pytest.raises(ValueError, match="sigma_data must be a positive"):
        EDMDenoiser(optimal_net(0.0, 1.0), VPProcess(), sigma_data=0)


# ------------------------------------------------------------------ img2img strength
@pytest.mark.parametrize("strength", [0.05, 0.3, 0.5, 0.9])
def test_img2img_strength_is_the_cosine_schedules_noise_level(strength):
    """EDM's time is sigma itself (up to 80): strength read linearly in it would put 0.5 at
    sigma 40, nothing left of the image. It is read as the noise-to-signal ratio the cosine
    schedule reaches after that fraction of its steps, tan(pi/2 (s + 0.008) / 1.008)
    (Nichol & Dhariwal 2021, eq. 17), for EDM and VE alike; the default DDPM preset's own
    table gets there too, up to its discretisation."""
    want = math.tan(math.pi / 2 * (strength + 0.008) / 1.008)
    for process in (EDMProcess(), VEProcess(25.0, 1e-3)):
        t = torch.tensor(process.img2img_time(strength), dtype=torch.float64)
        assert float(process.sigma(t) / process.alpha(t)) == pytest.approx(want, rel=1e-9)
    ddpm = DiscreteProcess.from_schedule("cosine", T=1000)
    t = torch.tensor(ddpm.img2img_time(strength), dtype=torch.float64)
    assert ddpm.img2img_time(strength) == pytest.approx(strength * 999)  # its own reading
    assert float(ddpm.sigma(t) / ddpm.alpha(t)) == pytest.approx(want, rel=2e-2)


def test_img2img_strength_ends_and_the_grid_it_keeps():
    edm = EDMProcess()
    assert edm.img2img_time(1.0) == edm.t_max and edm.img2img_time(0.0) < 0.013
    grid = torch.tensor([80.0, 40.0, 10.0, 2.0, 1.0, 0.5, 0.1, 0.002], dtype=torch.float64)
    kept = truncate_timesteps(grid, edm, 0.5)  # starts at sigma 1.0125: the grid below it
    assert kept.tolist() == [1.0, 0.5, 0.1, 0.002]
    assert truncate_timesteps(grid, edm, 1.0).tolist() == grid.tolist()
