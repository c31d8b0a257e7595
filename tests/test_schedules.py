"""Noise schedules (difflab.diffusion.schedules): property tests over every schedule and T."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import quad

from difflab.diffusion import schedules
from difflab.diffusion.process import DiscreteProcess, VPProcess

NAMES = sorted(schedules.BETA_SCHEDULES)
any_schedule = given(name=st.sampled_from(NAMES), T=st.integers(2, 2000))
fast = settings(max_examples=60, deadline=None)


@fast
@any_schedule
def test_betas_and_alpha_bar_are_valid(name, T):
    betas = schedules.make_betas(name, T)
    assert betas.shape == (T,) and betas.dtype == torch.float64
    assert bool(((betas > 0) & (betas <= 1)).all())
    alpha_bar = torch.cumprod(1 - betas, 0)
    assert bool(((alpha_bar > 0) & (alpha_bar <= 1)).all())
    assert bool((alpha_bar[1:] < alpha_bar[:-1]).all()), "alpha_bar must strictly decrease"
    if name == "cosine":
        assert float(betas.max()) <= 0.999


@fast
@any_schedule
def test_posterior_variance_is_ho_eq7_and_below_beta(name, T):
    process = DiscreteProcess(schedules.make_betas(name, T))
    t = torch.arange(1, T, dtype=torch.float64)  # 0-based step t, previous step t - 1
    zeros = torch.zeros(T - 1, 1, dtype=torch.float64)
    _, var = process.posterior(zeros, zeros, t, t - 1)
    var = var.flatten().double()
    ab, betas = process.alphas_cumprod, process.betas
    beta_tilde = (1 - ab[:-1]) / (1 - ab[1:]) * betas[1:]  # Ho et al. (2020), eq. 7
    torch.testing.assert_close(var, beta_tilde, rtol=1e-6, atol=1e-12)
    assert bool((var <= betas[1:] * (1 + 1e-9)).all())


def test_cosine_clip_is_hit_at_the_end():
    betas = schedules.cosine_betas(1000)
    assert float(betas[-1]) == pytest.approx(0.999)
    assert float(betas[:-1].max()) < 0.999


@fast
@any_schedule
def test_zero_terminal_snr(name, T):
    plain = schedules.make_betas(name, T)
    betas = schedules.make_betas(name, T, zero_terminal_snr=True)
    alpha_bar = torch.cumprod(1 - betas, 0)
    assert float(alpha_bar[-1]) == 0.0
    assert float(alpha_bar[0]) == pytest.approx(float(1 - plain[0]), rel=1e-9)
    assert bool((alpha_bar[1:] < alpha_bar[:-1]).all())
    assert bool(((betas > 0) & (betas <= 1)).all())
    DiscreteProcess(betas)  # accepted: the last beta is exactly 1


def test_unknown_schedule_lists_the_allowed_names():
    with pytest.raises(ValueError) as err:
        schedules.make_betas("exponential", 10)
    for name in NAMES:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="integer >= 1"):
        schedules.make_betas("linear", 0)


def test_linear_schedule_endpoints():
    betas = schedules.make_betas("linear", 1000)
    assert float(betas[0]) == pytest.approx(1e-4) and float(betas[-1]) == pytest.approx(0.02)


@settings(max_examples=30, deadline=None)
@given(t=st.floats(1e-4, 1.0), sigma=st.floats(2.0, 100.0))
def test_ve_marginal_std_is_the_integral_of_sigma_to_the_2t(t, sigma):
    """dx = sigma^t dw from x(0): Var x(t) = int_0^t sigma^(2 tau) d tau."""
    var, _ = quad(lambda tau: sigma ** (2 * tau), 0.0, t, epsabs=0, epsrel=1e-12)
    std = float(schedules.ve_marginal_std(torch.tensor(t, dtype=torch.float64), sigma))
    assert std == pytest.approx(math.sqrt(var), rel=1e-8)


@settings(max_examples=30, deadline=None)
@given(t=st.floats(0.0, 1.0))
def test_vp_linear_log_alpha_integrates_beta(t):
    """log alpha(t) = -1/2 int_0^t beta(tau) d tau with beta linear from 0.1 to 20."""
    integral, _ = quad(lambda tau: 0.1 + tau * (20.0 - 0.1), 0.0, t)
    log_a = float(schedules.vp_linear_log_alpha(torch.tensor(t, dtype=torch.float64)))
    assert log_a == pytest.approx(-0.5 * integral, rel=1e-10, abs=1e-14)


def test_continuous_cosine_matches_the_discrete_table():
    """alpha_bar of the discrete cosine schedule = alpha(t)^2 of the continuous one at t = k/T."""
    T = 1000
    ab = torch.cumprod(1 - schedules.cosine_betas(T, max_beta=1.0), 0)
    t = torch.arange(1, T, dtype=torch.float64) / T  # the table's steps 1..T-1
    ab_cont = torch.exp(2 * schedules.vp_cosine_log_alpha(t))
    torch.testing.assert_close(ab[:-1], ab_cont, rtol=1e-9, atol=1e-12)
    assert VPProcess("cosine").alpha(torch.tensor(0.0)).item() == pytest.approx(1.0)
