"""Log-likelihood through the probability-flow ODE against closed-form densities.

With an exact denoiser the ODE likelihood is the noisy marginal log p_{t_min}(x), which the
oracle knows analytically; for points of typical density it is the data density up to
~D sigma(t_min)^2 / (2 s^2). Stated tolerance 1e-2 nats (measured: Gaussians D = 2..8 below
3e-4, the 8-mode ring below 1.5e-3, RK45 with rtol = atol = 1e-5). The prior at t_max is the
oracle's exact marginal unless a test says otherwise, so that what is measured is the solver
and the divergence, not the prior mismatch (for VE with sigma = 25 that mismatch is 0.1-0.3 nats
for data of mean 0.5).
"""

from __future__ import annotations

import math

import pytest
import torch

from difflab.diffusion.oracles import gaussian_oracle, ring_mixture
from difflab.diffusion.process import DiscreteProcess, VEProcess, VPProcess
from difflab.samplers.likelihood import (
    bits_per_dim,
    gaussian_log_prob,
    ode_bits_per_dim,
    ode_log_likelihood,
)

TOL = 1e-2


def make_process(kind):
    # VP's default t_min = 1e-3 blurs the data by sigma ~ 0.01; 1e-5 makes that negligible.
    return VPProcess("linear", t_min=1e-5) if kind == "vp" else VEProcess(sigma=25.0)


def exact_prior(oracle):
    return lambda x: oracle.log_prob(x, oracle.process.t_max)


@pytest.mark.parametrize("kind", ["vp", "ve"])
@pytest.mark.parametrize("dim", [2, 5, 8])
def test_exact_divergence_matches_gaussian_density(kind, dim):
    oracle = gaussian_oracle(make_process(kind), 0.5, 0.4, dim)
    x = oracle.sample(12, torch.Generator().manual_seed(dim))
    log_p = ode_log_likelihood(oracle, x, prior_log_prob=exact_prior(oracle))
    assert log_p.shape == (12,) and log_p.dtype == torch.float64
    torch.testing.assert_close(log_p, oracle.log_prob(x), rtol=0, atol=TOL)


@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_exact_divergence_matches_ring_mixture_density(kind):
    oracle = ring_mixture(make_process(kind))
    x = oracle.sample(12, torch.Generator().manual_seed(0))
    log_p = ode_log_likelihood(oracle, x, prior_log_prob=exact_prior(oracle))
    torch.testing.assert_close(log_p, oracle.log_prob(x), rtol=0, atol=TOL)


@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_far_from_the_modes_the_ode_measures_p_at_t_min(kind):
    # Between modes log p ~ -200 and the blur by sigma(t_min) matters: d^2 sigma^2 / (2 s^4)
    # is 0.2 nats for VE (sigma^2 = 1e-5) at the ring's centre. The ODE gets p_{t_min} right.
    oracle = ring_mixture(make_process(kind))
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.5, 0.3]], dtype=torch.float64)
    log_p = ode_log_likelihood(oracle, x, prior_log_prob=exact_prior(oracle))
    t_min = oracle.process.t_min
    torch.testing.assert_close(log_p, oracle.log_prob(x, t_min), rtol=0, atol=TOL)


def test_default_t_min_gives_the_blurred_density():
    process = VPProcess("linear")  # t_min = 1e-3
    oracle = ring_mixture(process)
    x = oracle.sample(8, torch.Generator().manual_seed(1))
    log_p = ode_log_likelihood(oracle, x, prior_log_prob=exact_prior(oracle))
    torch.testing.assert_close(log_p, oracle.log_prob(x, process.t_min), rtol=0, atol=TOL)


def test_default_prior_is_the_samplers_prior():
    # VP ends at N(alpha(1) mu_k, ~1): for the symmetric ring, N(0, I) is within 1e-3 nats.
    oracle = ring_mixture(make_process("vp"))
    x = oracle.sample(8, torch.Generator().manual_seed(2))
    log_p = ode_log_likelihood(oracle, x)
    torch.testing.assert_close(log_p, oracle.log_prob(x), rtol=0, atol=TOL)
    std = oracle.process.prior_std()
    same = ode_log_likelihood(oracle, x, prior_log_prob=lambda z: gaussian_log_prob(z, std))
    torch.testing.assert_close(log_p, same)


def test_discrete_process():
    process = DiscreteProcess.from_schedule("linear", T=1000)
    oracle = gaussian_oracle(process, 0.5, 0.4, 4)
    x = oracle.sample(6, torch.Generator().manual_seed(3))
    log_p = ode_log_likelihood(oracle, x, prior_log_prob=exact_prior(oracle))
    torch.testing.assert_close(log_p, oracle.log_prob(x, 0.0), rtol=0, atol=TOL)


@pytest.mark.parametrize("kind", ["vp", "ve"])
@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(kind, probe):
    oracle = ring_mixture(make_process(kind))
    n_points, n_probes = 4, 128
    x = oracle.sample(n_points, torch.Generator().manual_seed(4))
    exact = ode_log_likelihood(oracle, x, prior_log_prob=exact_prior(oracle))
    # One solve: each point repeated with its own probe, held fixed along the path.
    est = ode_log_likelihood(
        oracle,
        x.repeat_interleave(n_probes, 0),
        divergence="hutchinson",
        probe=probe,
        generator=torch.Generator().manual_seed(5),
        prior_log_prob=exact_prior(oracle),
    ).reshape(n_points, n_probes)
    se = est.std(1) / math.sqrt(n_probes)
    assert torch.all(se > 1e-3)  # really a random estimate
    assert torch.all((est.mean(1) - exact).abs() < 4 * se), ((est.mean(1) - exact) / se).tolist()


def test_rademacher_probe_is_exact_for_a_diagonal_jacobian():
    # Isotropic Gaussian data: d score / dx is a multiple of I, and e^T (c I) e = c D for e = +-1.
    oracle = gaussian_oracle(make_process("vp"), 0.5, 0.4, 6)
    x = oracle.sample(5, torch.Generator().manual_seed(6))
    exact = ode_log_likelihood(oracle, x)
    est = ode_log_likelihood(
        oracle,
        x,
        divergence="hutchinson",
        generator=[torch.Generator().manual_seed(i) for i in range(5)],
    )
    torch.testing.assert_close(est, exact, rtol=0, atol=1e-4)


def test_bits_per_dim_of_a_uniform_density():
    # Uniform on [-1, 1]^D has log p = -D ln 2. With Song et al.'s 1/128-wide bins that is
    # exactly 8 bits (256 equally likely levels); with x = k / 127.5 - 1 it is log2(255).
    dim = 3
    log_p = torch.tensor([-dim * math.log(2)], dtype=torch.float64)
    assert float(bits_per_dim(log_p, dim, data_scale=128)) == pytest.approx(8.0)
    assert float(bits_per_dim(log_p, dim)) == pytest.approx(math.log2(255))
    assert float(bits_per_dim(log_p, dim, data_scale=None)) == pytest.approx(1.0)


def test_ode_bits_per_dim_uses_the_log_likelihood():
    oracle = gaussian_oracle(make_process("vp"), 0.0, 0.5, 4)
    x = oracle.sample(3, torch.Generator().manual_seed(7))
    bpd = ode_bits_per_dim(oracle, x, data_scale=127.5, prior_log_prob=exact_prior(oracle))
    expected = (-oracle.log_prob(x) + 4 * math.log(127.5)) / (4 * math.log(2))
    torch.testing.assert_close(bpd, expected, rtol=0, atol=TOL / (4 * math.log(2)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"divergence": "trace"}, "unknown divergence 'trace'; allowed: exact, hutchinson"),
        ({"probe": "uniform"}, "unknown probe 'uniform'"),
        ({"t_min": 0.5, "t_max": 0.5}, "t_min < t_max"),
        ({"t_max": 2.0}, "t_min < t_max"),
        ({"method": "euler"}, "unknown ODE method"),
    ],
)
def test_bad_options_raise(kwargs, match):
    oracle = ring_mixture(make_process("vp"))
    with pytest.raises(ValueError, match=match):
        ode_log_likelihood(oracle, oracle.sample(2), **kwargs)


def test_bad_data_scale_raises():
    with pytest.raises(ValueError, match="data_scale must be positive"):
        bits_per_dim(torch.zeros(1), 2, data_scale=0.0)
