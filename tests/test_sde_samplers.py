"""Oracle tests of the score-based samplers: Euler–Maruyama, predictor–corrector, probability flow.

Driven by exact denoisers (difflab.diffusion.oracles), so a failure is the sampler's.

Gaussian data N(0.5, 0.4^2 I), D = 8, 4000 samples (32,000 values) in float64: sampling error
alone is 0.0022 on the mean and 0.4 % on the std. Stated tolerances: mean within 0.012 of 0.5,
std within 3 % of 0.4. Measured worst cases over 4 seeds: EM (500 steps VP / VE / discrete)
0.0047 / 0.75 %; PC (300 steps, snr 0.16) 0.0066 / 1.3 % (reverse-diffusion
predictor); ODE (RK45, rtol = atol = 1e-5) 0.0049 / 0.3 %.

Ring of 8 Gaussians (radius 2, std 0.1): every mode's weight 0.125 +- 0.03 (0.0052 sampling
error; measured worst 0.015), residual std around the nearest mode 0.1 +- 0.015 (measured
0.0985..0.1033; EM 200 and PC 150 steps on a grid dense near t_min, see test_ring_mixture).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from difflab.diffusion import sde as sde_mod
from difflab.diffusion.noise import per_sample_generators, randn
from difflab.diffusion.oracles import gaussian_oracle, ring_mixture
from difflab.diffusion.process import DiscreteProcess, VEProcess, VPProcess
from difflab.samplers.ode import sample_ode
from difflab.samplers.sde import sample_euler_maruyama, sample_pc

MU, STD, DIM, N = 0.5, 0.4, 8, 4000
MEAN_TOL, STD_RTOL = 0.012, 0.03


def make_process(kind):
    if kind == "vp":
        return VPProcess("linear")
    if kind == "ve":
        return VEProcess(sigma=25.0)
    return DiscreteProcess.from_schedule("linear", T=1000)


def grid(process, n_points):
    return torch.linspace(process.t_max, process.t_min, n_points, dtype=torch.float64)


def quadratic_grid(process, n_points):
    """Times dense near t_min, uniform in sqrt(t - t_min): near t = 0, sigma(t)^2 grows like t."""
    u = torch.linspace(1.0, 0.0, n_points, dtype=torch.float64)
    return process.t_min + (process.t_max - process.t_min) * u**2


def prior_noise(process, n, dim, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=gen, dtype=torch.float64) * process.prior_std()


def assert_gaussian(y, mu=MU, std=STD):
    assert y.dtype == torch.float64 and torch.isfinite(y).all()
    assert abs(float(y.mean()) - mu) < MEAN_TOL, float(y.mean())
    assert abs(float(y.std()) / std - 1) < STD_RTOL, float(y.std())


# ----------------------------------------------------------------------------- SDE helpers


@settings(max_examples=10, deadline=None)
@given(kind=st.sampled_from(["vp", "ve"]), u=st.floats(0.0, 1.0))
def test_score_is_gradient_of_marginal_log_density(kind, u):
    process = make_process(kind)
    t = process.t_min + u * (process.t_max - process.t_min)
    oracle = ring_mixture(process)
    x = prior_noise(process, 16, 2, seed=3) * 0.5
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(oracle.log_prob(xg, t).sum(), xg)
    torch.testing.assert_close(sde_mod.score(oracle, x, t), grad, rtol=1e-6, atol=1e-8)


def test_drifts_follow_song_et_al():
    process = make_process("vp")
    oracle = gaussian_oracle(process, MU, STD, 3)
    x, t = prior_noise(process, 5, 3, seed=1), 0.4
    beta = process.beta_min + t * (process.beta_max - process.beta_min)
    s = sde_mod.score(oracle, x, t)
    # VP SDE, eq. 11: f = -beta / 2, g^2 = beta.
    torch.testing.assert_close(sde_mod.reverse_drift(oracle, x, t), -0.5 * beta * x - beta * s)
    torch.testing.assert_close(
        sde_mod.probability_flow_drift(oracle, x, t), -0.5 * beta * x - 0.5 * beta * s
    )


def test_write_up_ve_helpers_match_the_process():
    process = VEProcess(sigma=25.0)
    t = torch.tensor([1e-4, 0.3, 1.0], dtype=torch.float64)
    torch.testing.assert_close(sde_mod.marginal_prob_std(t, 25.0), process.sigma(t))
    f, g2 = process.sde_coefficients(t)
    torch.testing.assert_close(sde_mod.diffusion_coeff(t, 25.0) ** 2, g2)
    assert torch.all(f == 0)


# ----------------------------------------------------------------------------- Gaussian oracle


@pytest.mark.parametrize("kind, n_points", [("vp", 501), ("ve", 501), ("discrete", 501)])
def test_euler_maruyama_gaussian(kind, n_points):
    process = make_process(kind)
    oracle = gaussian_oracle(process, MU, STD, DIM)
    gen = torch.Generator().manual_seed(0)
    y = sample_euler_maruyama(
        oracle, prior_noise(process, N, DIM, 1), grid(process, n_points), generator=gen
    )
    assert_gaussian(y)


@pytest.mark.parametrize("kind", ["vp", "ve"])
@pytest.mark.parametrize("predictor", ["euler_maruyama", "reverse_diffusion"])
def test_pc_gaussian(kind, predictor):
    process = make_process(kind)
    oracle = gaussian_oracle(process, MU, STD, DIM)
    gen = torch.Generator().manual_seed(0)
    y = sample_pc(
        oracle,
        prior_noise(process, N, DIM, 1),
        grid(process, 301),
        generator=gen,
        predictor=predictor,
        snr=0.16,
    )
    assert_gaussian(y)


def test_pc_per_sample_rule_high_dimension():
    # The algorithms' literal per-sample norms concentrate in high dimension (D = 256).
    process = make_process("ve")
    oracle = gaussian_oracle(process, MU, STD, 256)
    gen = torch.Generator().manual_seed(0)
    y = sample_pc(
        oracle,
        prior_noise(process, 250, 256, 1),
        grid(process, 201),
        generator=gen,
        step_rule="per_sample",
    )
    assert_gaussian(y)


def test_pc_without_corrector_is_euler_maruyama():
    process = make_process("vp")
    oracle = gaussian_oracle(process, MU, STD, DIM)
    x, ts = prior_noise(process, 64, DIM, 1), grid(process, 50)
    a = sample_pc(oracle, x, ts, generator=torch.Generator().manual_seed(4), corrector_steps=0)
    b = sample_euler_maruyama(oracle, x, ts, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["vp", "discrete"])
def test_ode_gaussian(kind):
    process = make_process(kind)
    oracle = gaussian_oracle(process, MU, STD, DIM)
    y, info = sample_ode(
        oracle, prior_noise(process, N, DIM, 1), grid(process, 2), return_info=True
    )
    assert_gaussian(y)
    assert 10 < info["nfe"] < 1000 and info["nfe"] == oracle.nfe


def test_ode_gaussian_ve_prior_mismatch_is_the_predicted_one():
    """VE with sigma = 25 ends at a marginal std of only 9.8, so the N(0, prior_std^2) start
    misses the data mean. The flow is affine here, x0 = mu + s (x1 - mu) / sqrt(v1), which
    predicts the shift exactly; from the true marginal the ODE recovers the data."""
    process = make_process("ve")
    oracle = gaussian_oracle(process, MU, STD, DIM)
    x1 = prior_noise(process, N, DIM, 1)
    y = sample_ode(oracle, x1, grid(process, 2))
    v1 = STD**2 + float(process.sigma(torch.tensor(1.0))) ** 2
    expected = MU + STD * (x1 - MU) / math.sqrt(v1)
    torch.testing.assert_close(y, expected, rtol=0, atol=2e-3)
    z = x1 / process.prior_std()
    assert_gaussian(sample_ode(oracle, MU + math.sqrt(v1) * z, grid(process, 2)))


def test_ode_is_deterministic_and_reports_every_evaluation():
    process = make_process("vp")
    oracle = ring_mixture(process)
    x = prior_noise(process, 32, 2, seed=2)
    seen = []
    a, info = sample_ode(oracle, x, grid(process, 10), callback=seen.append, return_info=True)
    b = sample_ode(oracle, x, grid(process, 10), generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    assert len(seen) == info["nfe"] - 1  # every drift evaluation, then the final denoise
    assert {"x", "i", "t", "denoised", "total", "nfe"} <= set(seen[0])
    assert [d["i"] for d in seen] == list(range(len(seen)))
    assert seen[0]["t"] == pytest.approx(process.t_max)


# ----------------------------------------------------------------------------- ring mixture


def mode_stats(oracle, y):
    k = torch.cdist(y, oracle.means).argmin(1)
    weights = torch.bincount(k, minlength=len(oracle.means)).double() / len(y)
    return weights, float((y - oracle.means[k]).std())


@pytest.mark.parametrize("kind", ["vp", "ve"])
@pytest.mark.parametrize("sampler", ["em", "pc", "ode"])
def test_ring_mixture(kind, sampler):
    process = make_process(kind)
    oracle = ring_mixture(process, k=8, radius=2.0, std=0.1)
    x = prior_noise(process, N, 2, seed=1)
    gen = torch.Generator().manual_seed(0)
    # A uniform grid would need ~1000 steps for VE: g^2 ~ 1 while sigma(t)^2 ~ t near t_min,
    # so its last step leaves noise ~ sqrt(dt) that the final denoise cannot see (std 0.109
    # with 300 steps). The quadratic grid puts its steps where sigma is small.
    if sampler == "em":
        y = sample_euler_maruyama(oracle, x, quadratic_grid(process, 201), generator=gen)
    elif sampler == "pc":
        y = sample_pc(oracle, x, quadratic_grid(process, 151), generator=gen)
    else:
        y = sample_ode(oracle, x, grid(process, 2))
    weights, spread = mode_stats(oracle, y)
    assert torch.all((weights - 0.125).abs() < 0.03), weights.tolist()
    assert abs(spread - 0.1) < 0.015, spread


# ----------------------------------------------------------------------------- batch invariance


@pytest.mark.parametrize("sampler", [sample_euler_maruyama, sample_pc])
def test_same_seed_same_sample_whatever_the_batch(sampler):
    process = make_process("vp")
    oracle = ring_mixture(process)
    ts = grid(process, 40)

    def run(offset, n):
        gens = per_sample_generators(7, n, offset)
        x = randn((n, 2), gens, dtype=torch.float64)
        return sampler(oracle, x, ts, generator=gens)

    whole = run(0, 6)
    parts = torch.cat([run(0, 2), run(2, 3), run(5, 1)])
    torch.testing.assert_close(whole, parts, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sampler", [sample_euler_maruyama, sample_pc])
def test_callback_sees_every_step(sampler):
    process = make_process("ve")
    oracle = ring_mixture(process)
    seen = []
    ts = grid(process, 11)
    y = sampler(oracle, prior_noise(process, 4, 2, 0), ts, callback=seen.append)
    assert [d["i"] for d in seen] == list(range(10))
    assert all(d["total"] == 10 for d in seen)
    assert [d["t"] for d in seen] == pytest.approx(ts[:-1].tolist())
    assert seen[-1]["denoised"].shape == y.shape == seen[-1]["x"].shape


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("sampler", [sample_euler_maruyama, sample_pc, sample_ode])
@pytest.mark.parametrize("bad", [[0.5, 0.5, 0.1], [0.1, 0.5], [2.0, 0.5]])
def test_bad_time_grid_raises(sampler, bad):
    process = make_process("vp")
    oracle = ring_mixture(process)
    with pytest.raises(ValueError, match="decreasing|must lie"):
        sampler(oracle, prior_noise(process, 2, 2, 0), torch.tensor(bad))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"predictor": "heun"}, "unknown predictor 'heun'; allowed: euler_maruyama"),
        ({"snr": 0.0}, "snr must be a positive number"),
        ({"snr": -0.1}, "snr must be a positive number"),
        ({"snr": float("nan")}, "snr must be a positive number"),
        ({"corrector_steps": -1}, "corrector_steps must be an integer >= 0"),
        ({"step_rule": "batch"}, "unknown step_rule 'batch'"),
    ],
)
def test_pc_bad_options_raise(kwargs, match):
    process = make_process("vp")
    oracle = ring_mixture(process)
    with pytest.raises(ValueError, match=match):
        sample_pc(oracle, prior_noise(process, 2, 2, 0), grid(process, 5), **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"method": "euler"}, "unknown ODE method 'euler'"), ({"rtol": 0.0}, "must be positive")],
)
def test_ode_bad_options_raise(kwargs, match):
    process = make_process("vp")
    oracle = ring_mixture(process)
    with pytest.raises(ValueError, match=match):
        sample_ode(oracle, prior_noise(process, 2, 2, 0), grid(process, 2), **kwargs)
