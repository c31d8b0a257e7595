"""The noise process contract (difflab.diffusion.process): alpha, sigma, log-SNR and inverses,
SDE coefficients, q_sample, parameterization round trips and the posterior."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from difflab.diffusion.denoiser import PARAMETERIZATIONS, prediction_from_output
from difflab.diffusion.process import (
    DiscreteProcess,
    NoiseProcess,
    VEProcess,
    VPProcess,
    make_process,
)

PROCESSES = {
    "discrete-linear": DiscreteProcess.from_schedule("linear", 1000),
    "discrete-cosine": DiscreteProcess.from_schedule("cosine", 1000),
    "discrete-sigmoid-T50": DiscreteProcess.from_schedule("sigmoid", 50),
    "vp-linear": VPProcess("linear"),
    "vp-cosine": VPProcess("cosine"),
    "ve": VEProcess(25.0),
}
fast = settings(max_examples=40, deadline=None)
each_process = pytest.mark.parametrize("name", list(PROCESSES))


def times(process: NoiseProcess, u: torch.Tensor) -> torch.Tensor:
    """Map u in [0, 1] onto the process' time range."""
    return process.t_min + (process.t_max - process.t_min) * u


@each_process
def test_log_snr_is_strictly_decreasing_and_consistent(name):
    process = PROCESSES[name]
    t = times(process, torch.linspace(0, 1, 501, dtype=torch.float64))
    lam = process.log_snr(t)
    assert bool((lam[1:] < lam[:-1]).all())
    a, s = process.alpha(t), process.sigma(t)
    torch.testing.assert_close(lam, torch.log(a**2 / s**2))
    torch.testing.assert_close(process.sigma_ve(t), s / a)
    if process.variance_preserving:
        torch.testing.assert_close(a**2 + s**2, torch.ones_like(a))


@fast
@given(name=st.sampled_from(list(PROCESSES)), u=st.floats(0.0, 1.0))
def test_t_from_log_snr_and_sigma_ve_invert(name, u):
    process = PROCESSES[name]
    t = times(process, torch.tensor(u, dtype=torch.float64))
    scale = max(1.0, process.t_max)
    assert float(process.t_from_log_snr(process.log_snr(t))) == pytest.approx(
        float(t), abs=1e-7 * scale
    )
    assert float(process.t_from_sigma_ve(process.sigma_ve(t))) == pytest.approx(
        float(t), abs=1e-7 * scale
    )


def test_discrete_fractional_times_interpolate_log_alpha_bar():
    process = PROCESSES["discrete-linear"]
    log_ab = torch.log(process.alphas_cumprod)
    k = torch.arange(0, 999, dtype=torch.float64)
    torch.testing.assert_close(process.log_alpha(k), 0.5 * log_ab[:-1])
    torch.testing.assert_close(
        process.log_alpha(k + 0.25), 0.5 * (0.75 * log_ab[:-1] + 0.25 * log_ab[1:])
    )


@fast
@given(t=st.floats(1e-3, 1.0))  # t >= t_min: at t = 0, sigma = 0 and d sigma^2 / dt is 0 * inf
def test_vp_sde_coefficients_match_the_analytic_beta(t):
    """VP SDE: f = -beta(t) / 2, g^2 = beta(t), beta(t) = b0 + t (b1 - b0) (Song et al., eq. 11)."""
    process = VPProcess("linear", beta_min=0.1, beta_max=20.0)
    f, g2 = process.sde_coefficients(torch.tensor(t, dtype=torch.float64))
    beta = 0.1 + t * (20.0 - 0.1)
    assert float(f) == pytest.approx(-0.5 * beta, rel=1e-9)
    assert float(g2) == pytest.approx(beta, rel=1e-6)


def test_cosine_vp_and_ve_sde_coefficients():
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    # Continuous cosine: beta(t) = -2 d log alpha / dt = pi / (1 + s) tan((t + s) / (1 + s) pi / 2).
    s = 0.008
    beta = math.pi / (1 + s) * torch.tan((t + s) / (1 + s) * math.pi / 2)
    f, g2 = PROCESSES["vp-cosine"].sde_coefficients(t)
    torch.testing.assert_close(f, -0.5 * beta)
    torch.testing.assert_close(g2, beta)
    # VE: f = 0 and g^2 = d sigma(t)^2 / dt = sigma^(2t) for dx = sigma^t dw.
    ve = PROCESSES["ve"]
    f_ve, g2_ve = ve.sde_coefficients(t)
    torch.testing.assert_close(f_ve, torch.zeros_like(t))
    torch.testing.assert_close(g2_ve, 25.0 ** (2 * t))
    h = 1e-6
    dvar = (ve.sigma(t + h) ** 2 - ve.sigma(t - h) ** 2) / (2 * h)
    torch.testing.assert_close(g2_ve, dvar, rtol=1e-6, atol=0)


def test_discrete_sde_drift_between_steps():
    """Between integer steps log alpha_bar is linear, so f = 0.5 log(1 - beta_{k+1})."""
    process = PROCESSES["discrete-linear"]
    k = torch.arange(0, 999, 37, dtype=torch.float64)
    f, _ = process.sde_coefficients(k + 0.5)
    torch.testing.assert_close(f, 0.5 * torch.log(1 - process.betas[k.long() + 1]))


@each_process
def test_q_sample(name):
    process = PROCESSES[name]
    t = times(process, torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=torch.float64))
    x0 = torch.full((4, 3), 0.7, dtype=torch.float64)
    noise = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a, s = process.alpha(t)[:, None], process.sigma(t)[:, None]
    torch.testing.assert_close(process.q_sample(x0, t, noise), a * x0 + s * noise)
    # Statistics of q(x_t | x_0) = N(alpha x0, sigma^2 I) (Ho et al. 2020, eq. 4).
    n = 200_000
    tt = t[2].expand(n)
    g = torch.Generator().manual_seed(1)
    xt = process.q_sample(
        torch.full((n, 1), 0.7, dtype=torch.float64),
        tt,
        torch.randn(n, 1, dtype=torch.float64, generator=g),
    )
    a2, s2 = float(process.alpha(t[2])), float(process.sigma(t[2]))
    assert float(xt.mean()) == pytest.approx(0.7 * a2, abs=4 * s2 / math.sqrt(n))
    assert float(xt.std()) == pytest.approx(s2, rel=0.01)


@each_process
def test_parameterizations_round_trip(name):
    process = PROCESSES[name]
    g = torch.Generator().manual_seed(0)
    t = times(process, torch.rand(64, dtype=torch.float64, generator=g) * 0.98 + 0.01)
    x0 = torch.randn(64, 5, dtype=torch.float64, generator=g)
    eps = torch.randn(64, 5, dtype=torch.float64, generator=g)
    x = process.q_sample(x0, t, eps)
    torch.testing.assert_close(process.x0_from_eps(x, t, eps), x0)
    torch.testing.assert_close(process.eps_from_x0(x, t, x0), eps)
    x0_v, eps_v = process.x0_eps_from_v(x, t, process.v_target(x0, t, eps))
    torch.testing.assert_close(x0_v, x0)
    torch.testing.assert_close(eps_v, eps)
    sigma = process.sigma(t)[:, None]
    outputs = {"eps": eps, "x0": x0, "v": process.v_target(x0, t, eps), "score": -eps / sigma}
    for param in PARAMETERIZATIONS:
        pred = prediction_from_output(process, x, t, outputs[param], param)
        torch.testing.assert_close(pred.x0, x0, msg=param)
        torch.testing.assert_close(pred.eps, eps, msg=param)


def test_posterior_of_consecutive_steps_is_ho_eq7():
    """Ho et al. (2020) eq. 7, with ab = alpha_bar:
    mu~_t = sqrt(ab_{t-1}) beta_t / (1 - ab_t) x0 + sqrt(1 - beta_t) (1 - ab_{t-1}) / (1 - ab_t) x_t
    beta~_t = (1 - ab_{t-1}) / (1 - ab_t) beta_t."""
    process = PROCESSES["discrete-cosine"]
    k = torch.arange(1, 1000, dtype=torch.float64)
    ab, ab_prev, beta = process.alphas_cumprod[1:], process.alphas_cumprod[:-1], process.betas[1:]
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(999, 2, dtype=torch.float64, generator=g)
    x0 = torch.randn(999, 2, dtype=torch.float64, generator=g)
    mean, var = process.posterior(x_t, x0, k, k - 1)
    c0 = (ab_prev.sqrt() * beta / (1 - ab))[:, None]
    ct = ((1 - beta).sqrt() * (1 - ab_prev) / (1 - ab))[:, None]
    torch.testing.assert_close(mean, c0 * x0 + ct * x_t, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(
        var.flatten(), (1 - ab_prev) / (1 - ab) * beta, rtol=1e-6, atol=1e-12
    )
    torch.testing.assert_close(process.transition_variance(k, k - 1), beta, rtol=1e-6, atol=1e-12)


@each_process
def test_posterior_is_gaussian_conditioning(name):
    """For any s < t: x_s = a_s x0 + s_s e1, x_t = (a_t / a_s) x_s + sigma_{t|s} e2; condition."""
    process = PROCESSES[name]
    g = torch.Generator().manual_seed(0)
    u = torch.rand(200, 2, dtype=torch.float64, generator=g).sort(1).values
    s, t = times(process, u[:, 0]), times(process, u[:, 1] + 1e-3)
    t = t.clamp(max=process.t_max)
    x_t = torch.randn(200, 1, dtype=torch.float64, generator=g)
    x0 = torch.randn(200, 1, dtype=torch.float64, generator=g)
    a_s, s_s = process.alpha(s)[:, None], process.sigma(s)[:, None]
    a_t, s_t = process.alpha(t)[:, None], process.sigma(t)[:, None]
    cov = (a_t / a_s) * s_s**2  # Cov(x_s, x_t | x0)
    mean = a_s * x0 + cov / s_t**2 * (x_t - a_t * x0)
    var = s_s**2 - cov**2 / s_t**2
    got_mean, got_var = process.posterior(x_t, x0, t, s)
    torch.testing.assert_close(got_mean, mean, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(got_var, var, rtol=1e-5, atol=1e-10)


def test_prior_std_and_errors():
    assert PROCESSES["vp-linear"].prior_std() == 1.0
    ve = PROCESSES["ve"]
    assert ve.prior_std() == pytest.approx(math.sqrt(1 + float(ve.sigma(torch.tensor(1.0))) ** 2))
    with pytest.raises(ValueError, match="discrete, vp, ve"):
        make_process("edm")
    with pytest.raises(ValueError, match="linear, cosine"):
        VPProcess("quadratic")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        DiscreteProcess(torch.tensor([0.1, 0.0]))
