"""Samplers against exact oracles: Gaussian and ring-mixture data, closed-form flow maps,
exact equivalences between samplers, reproducibility, callbacks and errors.

Everything runs in float64 with the exact denoiser (difflab.diffusion.oracles), so a failure
is the sampler's, not a network's. Tolerances are stated per case; they sit above each
sampler's measured discretisation bias (first-order methods at 50 steps are ~5 % off in std on
N(0.3, 0.5^2)) and ~4 standard errors of the Monte-Carlo noise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from difflab.diffusion.noise import per_sample_generators
from difflab.diffusion.oracles import gaussian_oracle, ring_mixture
from difflab.diffusion.process import DiscreteProcess, VEProcess, VPProcess
from difflab.samplers import (
    DEFAULTS,
    EVALS_PER_STEP,
    SAMPLERS,
    SPACINGS,
    default_timesteps,
    get_sampler,
    make_timesteps,
    sample,
)
from difflab.samplers.timesteps import karras_sigmas

MINE = [
    "ddpm",
    "ddim",
    "plms",
    "deis",
    "dpmpp_2m",
    "dpmpp_3m",
    "dpmpp_2s",
    "dpmpp_2m_sde",
    "euler",
    "heun",
    "euler_ancestral",
]
MU, S, D, N = 0.3, 0.5, 8, 4000
PROCESSES = {
    "linear": DiscreteProcess.from_schedule("linear", 1000),
    "cosine": DiscreteProcess.from_schedule("cosine", 1000),
    "vp": VPProcess(),
    "ve": VEProcess(),
}


def marginal_noise(process, t, n=N, dim=D, seed=1):
    """x_t drawn from the exact marginal of N(MU, S^2 I) at time t (no prior mismatch)."""
    a, s = float(process.alpha(t)), float(process.sigma(t))
    z = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a * MU + math.sqrt(a * a * S * S + s * s) * z


def grid(process, steps, spacing):
    """Karras grids use sigma_max = 80 on VP processes, as `sample` does (the cosine table's
    sigma_ve(T-1) ~ 2e4 would waste most of the grid)."""
    return default_timesteps("ddim", process, steps, spacing)


# ------------------------------------------------------------------ Gaussian data, every process
# (sampler, time points, spacing, options, std tolerance). Mean tolerance is 0.01 throughout.
FAST_CASES = [
    ("ddim", 50, "uniform", {}, 0.045),  # first order: measured std bias up to -0.033
    ("euler", 50, "karras", {}, 0.045),  # = DDIM on the same grid
    ("plms", 50, "karras", {}, 0.015),
    ("deis", 20, "karras", {}, 0.02),
    ("dpmpp_2m", 20, "karras", {}, 0.04),  # measured +0.027
    ("dpmpp_3m", 20, "karras", {}, 0.01),
    ("dpmpp_3m", 20, "karras", {"exact_third_order": True}, 0.02),
    ("dpmpp_2s", 15, "karras", {}, 0.03),  # 29 NFE
    ("dpmpp_2m_sde", 50, "karras", {}, 0.02),
    ("heun", 20, "karras", {}, 0.04),  # 39 NFE, measured +0.026
    ("euler_ancestral", 100, "karras", {}, 0.04),
]
# 1000 stochastic steps (~2 s each): (process, sampler, steps, spacing, options, std tol).
# DDIM eta = 1 is DDPM with the posterior variance draw for draw (test_equivalences).
SLOW_CASES = [
    *[(p, "ddpm", 1000, "uniform", {"variance": "posterior"}, 0.015) for p in ("linear", "ve")],
    *[(p, "ddpm", 1000, "uniform", {"variance": "beta"}, 0.015) for p in ("linear", "cosine")],
]


def check_gaussian(process_name, name, steps, spacing, options, tol):
    process = PROCESSES[process_name]
    oracle = gaussian_oracle(process, MU, S, D)
    ts = grid(process, steps, spacing)
    x = marginal_noise(process, ts[0])
    out = SAMPLERS[name](oracle, x, ts, generator=torch.Generator().manual_seed(2), **options)
    assert out.shape == x.shape and out.dtype == torch.float64
    assert abs(float(out.mean()) - MU) < 0.01
    assert abs(float(out.std()) - S) < tol, f"std {float(out.std()):.4f} vs {S} (tol {tol})"
    assert oracle.nfe == EVALS_PER_STEP.get(name, 1) * (steps - 1) + 1


@pytest.mark.parametrize("process_name", list(PROCESSES))
@pytest.mark.parametrize(
    ("name", "steps", "spacing", "options", "tol"),
    FAST_CASES,
    ids=[f"{c[0]}-{c[1]}{'-x' if c[3] else ''}" for c in FAST_CASES],
)
def test_gaussian_mean_and_std(process_name, name, steps, spacing, options, tol):
    check_gaussian(process_name, name, steps, spacing, options, tol)


@pytest.mark.parametrize(
    ("process_name", "name", "steps", "spacing", "options", "tol"),
    SLOW_CASES,
    ids=[f"{c[1]}-{c[4]}-{c[0]}" for c in SLOW_CASES],
)
def test_gaussian_mean_and_std_1000_steps(process_name, name, steps, spacing, options, tol):
    check_gaussian(process_name, name, steps, spacing, options, tol)


# ------------------------------------------------------------------ closed-form flow map
def exact_flow_map(process, ts, x):
    """For N(MU, S^2 I) data the probability-flow ODE is linear: x_t = alpha_t MU + v_t / v_T
    (x_T - alpha_T MU), v^2 = alpha^2 S^2 + sigma^2; then the final denoise E[x0 | x_tN]."""
    a_T, a_N = float(process.alpha(ts[0])), float(process.alpha(ts[-1]))
    v_T = math.sqrt(a_T**2 * S**2 + float(process.sigma(ts[0])) ** 2)
    v_N = math.sqrt(a_N**2 * S**2 + float(process.sigma(ts[-1])) ** 2)
    return MU + a_N * S**2 / (v_N * v_T) * (x - a_T * MU)


def flow_error(name, process, steps, spacing="karras", **options):
    oracle = gaussian_oracle(process, MU, S, 4)
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    ts = make_timesteps(process, steps, spacing)
    out = SAMPLERS[name](oracle, x.clone(), ts, **options)
    return float((out - exact_flow_map(process, ts, x)).abs().max())


def test_ddim_matches_the_analytic_probability_flow_map():
    process = PROCESSES["linear"]
    assert flow_error("ddim", process, 1000, "uniform") < 0.02  # every step: first order
    assert flow_error("deis", process, 200, "uniform") < 2e-3
    assert flow_error("dpmpp_3m", process, 100, "karras", exact_third_order=True) < 2e-3


# (sampler, options, minimum error ratio when the steps double 80 -> 160, on VP with Karras grid)
ORDERS = [
    ("ddim", {}, 1.8),  # first order: 2
    ("plms", {}, 3.5),  # second order on non-uniform grids (equal-step weights)
    ("deis", {"order": 3}, 6.5),
    ("dpmpp_2m", {}, 3.5),
    ("dpmpp_2s", {}, 3.5),
    ("heun", {}, 3.5),
    ("dpmpp_3m", {}, 3.0),  # reference coefficients: second order (see sample_dpmpp_3m)
    ("dpmpp_3m", {"exact_third_order": True}, 7.0),
    ("dpmpp_2m_sde", {"eta": 0.0}, 3.5),
]


@pytest.mark.parametrize(
    ("name", "options", "ratio"), ORDERS, ids=[f"{o[0]}{'-x' if o[1] else ''}" for o in ORDERS]
)
def test_convergence_order(name, options, ratio):
    coarse = flow_error(name, PROCESSES["vp"], 80, **options)
    fine = flow_error(name, PROCESSES["vp"], 160, **options)
    assert coarse / fine > ratio, f"error {coarse:.2e} -> {fine:.2e}"


def test_dpmpp_3m_reference_coefficients_are_second_order_only():
    ref = [flow_error("dpmpp_3m", PROCESSES["vp"], n) for n in (160, 320)]
    assert 3.0 < ref[0] / ref[1] < 5.0


# ------------------------------------------------------------------ exact equivalences
def run(name, process, ts, x, seed=None, **options):
    oracle = gaussian_oracle(process, MU, S, x.shape[1])
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    return SAMPLERS[name](oracle, x.clone(), ts, generator=gen, **options)


@pytest.mark.parametrize("process_name", ["cosine", "ve"])
def test_equivalences(process_name):
    process = PROCESSES[process_name]
    ts = make_timesteps(process, 30, "uniform")
    x = marginal_noise(process, ts[0], n=64, dim=3)
    close = dict(rtol=1e-9, atol=1e-9)
    ddim = run("ddim", process, ts, x)
    # Euler in sigma_ve (Karras Alg. 1), first-order DEIS / PLMS are DDIM.
    torch.testing.assert_close(run("euler", process, ts, x), ddim, **close)
    torch.testing.assert_close(run("deis", process, ts, x, order=1), ddim, **close)
    torch.testing.assert_close(run("plms", process, ts, x, order=1), ddim, **close)
    torch.testing.assert_close(
        run("dpmpp_2m_sde", process, ts, x, eta=0.0), run("dpmpp_2m", process, ts, x), **close
    )
    # DDIM eta = 1, ancestral Euler and DDPM with the posterior variance: draw for draw.
    ddpm = run("ddpm", process, ts, x, seed=3)
    torch.testing.assert_close(run("ddim", process, ts, x, seed=3, eta=1.0), ddpm, **close)
    torch.testing.assert_close(run("euler_ancestral", process, ts, x, seed=3), ddpm, **close)
    # Two time points: every solver takes one first-order step, i.e. DDIM.
    ts2 = ts[[0, 15]]
    for name in ("dpmpp_2m", "dpmpp_3m", "plms", "deis"):
        torch.testing.assert_close(
            run(name, process, ts2, x), run("ddim", process, ts2, x), **close, msg=name
        )


@pytest.mark.parametrize("name", [n for n in MINE if n != "heun"])
def test_zero_terminal_snr_start_is_stable(name):
    """Lin et al. (2024): the grid starts where alpha = 0 (sigma_ve ~ 1e20 in the table)."""
    process = DiscreteProcess.from_schedule("linear", 1000, zero_terminal_snr=True)
    oracle = gaussian_oracle(process, MU, S, D)
    ts = make_timesteps(process, 30, "uniform")
    assert float(process.alpha(ts[0])) < 1e-15
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = SAMPLERS[name](oracle, x, ts, generator=torch.Generator().manual_seed(1))
    assert abs(float(out.mean()) - MU) < 0.015
    # 30 uniform steps: first-order and SDE solvers are coarse (2M SDE: +0.18, DDPM: -0.09).
    assert abs(float(out.std()) - S) < (0.25 if name == "dpmpp_2m_sde" else 0.1)


def test_ddim_eta1_matches_ddpm_in_distribution_on_strided_grids():
    process = PROCESSES["linear"]
    ts = make_timesteps(process, 100, "uniform")
    x = marginal_noise(process, ts[0])
    a = run("ddim", process, ts, x, seed=5, eta=1.0)
    b = run("ddpm", process, ts, x, seed=6)  # independent noise
    assert abs(float(a.std()) - float(b.std())) < 0.01
    assert abs(float(a.mean()) - float(b.mean())) < 0.01


# ------------------------------------------------------------------ ring mixture
RING_CASES = [  # (sampler, time points): 20+ NFE, grids as `sample` builds them
    ("ddim", 50),
    ("plms", 20),
    ("deis", 20),
    ("dpmpp_2m", 20),
    ("dpmpp_3m", 50),
    ("dpmpp_2s", 15),
    ("heun", 25),
    ("dpmpp_2m_sde", 50),
]


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize(("name", "steps"), RING_CASES, ids=[c[0] for c in RING_CASES])
def test_ring_mixture_modes_and_spread(schedule, name, steps):
    process = PROCESSES[schedule]
    oracle = ring_mixture(process, k=8, radius=2.0, std=0.1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, 2, generator=gen, dtype=torch.float64) * process.prior_std()
    out = SAMPLERS[name](oracle, x, default_timesteps(name, process, steps), generator=gen)
    nearest = torch.cdist(out, oracle.means).argmin(1)
    share = torch.bincount(nearest, minlength=8).double() / N
    assert float((share - 0.125).abs().max()) < 0.03, share
    spread = float((out - oracle.means[nearest]).std())
    assert abs(spread - 0.1) < 0.02, f"std around modes {spread:.4f}"


# ------------------------------------------------------------------ reproducibility
@pytest.mark.parametrize("name", ["ddpm", "ddim", "euler_ancestral", "dpmpp_2m_sde", "heun"])
def test_same_seed_same_samples_whatever_the_batch(name):
    process = PROCESSES["cosine"]
    oracle = gaussian_oracle(process, MU, S, 3)
    opts = {"eta": 1.0} if name == "ddim" else {"s_churn": 5.0} if name == "heun" else {}
    kw = dict(sampler=name, steps=40, dtype=torch.float64, **opts)
    whole = sample(oracle, (6, 3), generator=per_sample_generators(7, 6), **kw)
    parts = torch.cat(
        [
            sample(oracle, (2, 3), generator=per_sample_generators(7, 2), **kw),
            sample(oracle, (4, 3), generator=per_sample_generators(7, 4, offset=2), **kw),
        ]
    )
    assert torch.equal(whole, parts)
    other = sample(oracle, (6, 3), generator=per_sample_generators(8, 6), **kw)
    assert not torch.equal(whole, other)


# ------------------------------------------------------------------ callback, NFE, dtype
@pytest.mark.parametrize("name", MINE)
def test_callback_once_per_time_point(name):
    process = PROCESSES["vp"]
    oracle = gaussian_oracle(process, MU, S, 2)
    ts = make_timesteps(process, 7, "uniform")
    seen = []
    out = SAMPLERS[name](
        oracle,
        torch.randn(5, 2),
        ts,
        callback=seen.append,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.dtype == torch.float32 and out.shape == (5, 2)
    assert [info["i"] for info in seen] == list(range(7))
    assert all({"x", "i", "t", "denoised", "total"} <= set(info) for info in seen)
    assert all(info["total"] == 7 for info in seen)
    assert [info["t"] for info in seen] == pytest.approx(ts.tolist())
    torch.testing.assert_close(seen[-1]["denoised"], out)
    assert oracle.nfe == EVALS_PER_STEP.get(name, 1) * 6 + 1


def test_clip_denoised_wraps_a_thresholded_denoiser():
    process = PROCESSES["linear"]
    oracle = gaussian_oracle(process, 3.0, 0.1, 2)  # data far outside [-1, 1]
    ts = make_timesteps(process, 20, "uniform")
    x = torch.randn(50, 2, dtype=torch.float64)
    for name in ("ddpm", "ddim"):
        out = SAMPLERS[name](oracle, x, ts, clip_denoised=True)
        assert float(out.abs().max()) <= 1.0
        assert float(SAMPLERS[name](oracle, x, ts).mean()) > 2.5


def test_sample_defaults():
    process = PROCESSES["linear"]
    oracle = gaussian_oracle(process, MU, S, 2)
    out = sample(oracle, (4, 2), "ddpm", generator=torch.Generator().manual_seed(0))
    assert oracle.nfe == 1000 and out.dtype == torch.float32  # DDPM: every step of T
    oracle.nfe = 0
    sample(oracle, (4, 2), "heun")
    assert oracle.nfe == 2 * DEFAULTS["heun"][0] - 1
    ts = default_timesteps("dpmpp_2m", PROCESSES["cosine"])
    assert float(PROCESSES["cosine"].sigma_ve(ts[0])) == pytest.approx(80.0)
    assert float(ts[-1]) == 0.0
    ts = default_timesteps("dpmpp_2m", PROCESSES["ve"])  # VE: the prior sets the top, no cap
    assert float(ts[0]) == 1.0


# ------------------------------------------------------------------ registry and errors
def test_registry():
    for name in MINE:
        assert get_sampler(name) is SAMPLERS[name]
    for name, fn in SAMPLERS.items():
        assert callable(fn) and name in DEFAULTS
    with pytest.raises(ValueError) as err:
        get_sampler("dpm++")
    for name in SAMPLERS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="allowed"):
        sample(gaussian_oracle(PROCESSES["vp"], 0.0, 1.0, 2), (2, 2), "nope")


@pytest.mark.parametrize("name", MINE)
def test_bad_time_grids(name):
    process = PROCESSES["linear"]
    oracle = gaussian_oracle(process, MU, S, 2)
    fn, x = SAMPLERS[name], torch.randn(3, 2)
    for bad in ([10.0, 10.0, 0.0], [0.0, 10.0], [20.0, 30.0, 5.0]):
        with pytest.raises(ValueError, match="strictly decreasing"):
            fn(oracle, x, torch.tensor(bad))
    with pytest.raises(ValueError, match=r"must lie in \[0.0, 999.0\]"):
        fn(oracle, x, torch.tensor([1200.0, 10.0]))
    with pytest.raises(ValueError, match="empty"):
        fn(oracle, x, torch.tensor([]))


def test_bad_options():
    process = PROCESSES["vp"]
    oracle, x = gaussian_oracle(process, MU, S, 2), torch.randn(3, 2)
    ts = make_timesteps(process, 5)
    with pytest.raises(ValueError, match="posterior, beta"):
        SAMPLERS["ddpm"](oracle, x, ts, variance="large")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        SAMPLERS["ddim"](oracle, x, ts, eta=1.5)
    with pytest.raises(ValueError, match="1, 2, 3, 4"):
        SAMPLERS["deis"](oracle, x, ts, order=5)
    with pytest.raises(ValueError, match=r"\[1, 2, 3, 4\]"):
        SAMPLERS["plms"](oracle, x, ts, order=0)
    with pytest.raises(ValueError, match="static, dynamic"):
        SAMPLERS["ddpm"](oracle, x, ts, clip_denoised="soft")


# ------------------------------------------------------------------ time grids
def test_spacings_follow_lin_et_al_table_2():
    process, T, n = PROCESSES["linear"], 1000, 50
    expected = {  # diffusers' formulas in 0-based step indices
        "linspace": np.round(np.linspace(0, T - 1, n))[::-1],
        "leading": (np.arange(0, n) * (T // n))[::-1],
        "trailing": np.round(np.arange(T, 0, -T / n)) - 1,
    }
    expected["uniform"] = expected["linspace"]
    for spacing, want in expected.items():
        got = make_timesteps(process, n, spacing).numpy()
        np.testing.assert_array_equal(got, want.astype(np.float64), err_msg=spacing)
    assert make_timesteps(process, n, "leading", offset=1).tolist()[-1] == 1.0  # SD's offset
    assert make_timesteps(process, 1, "linspace").tolist() == [999.0]
    assert make_timesteps(process, 1, "trailing").tolist() == [999.0]


def test_karras_grid_is_eq5():
    for process in PROCESSES.values():
        ts = make_timesteps(process, 12, "karras", rho=7.0)
        lo, hi = (float(process.sigma_ve(torch.tensor(t))) for t in (process.t_min, process.t_max))
        torch.testing.assert_close(
            process.sigma_ve(ts), karras_sigmas(lo, hi, 12, 7.0), rtol=1e-6, atol=0
        )
        assert float(ts[0]) == process.t_max and float(ts[-1]) == process.t_min
    ts = make_timesteps(PROCESSES["linear"], 10, "karras", sigma_min=0.1, sigma_max=80.0)
    torch.testing.assert_close(
        PROCESSES["linear"].sigma_ve(ts), karras_sigmas(0.1, 80.0, 10), rtol=1e-6, atol=0
    )


@settings(max_examples=80, deadline=None)
@given(T=st.integers(1, 2000), data=st.data(), spacing=st.sampled_from(SPACINGS))
def test_discrete_grids_are_valid(T, data, spacing):
    process = DiscreteProcess.from_schedule("linear", T)
    steps = data.draw(st.integers(1, T))
    ts = make_timesteps(process, steps, spacing)
    assert ts.shape == (steps,) and ts.dtype == torch.float64
    assert bool((ts[1:] < ts[:-1]).all())
    assert float(ts.min()) >= 0 and float(ts.max()) <= T - 1
    if spacing != "karras":
        assert torch.equal(ts, ts.round())
    if spacing in ("uniform", "linspace", "trailing", "karras"):
        assert float(ts[0]) == T - 1
    if spacing in ("uniform", "linspace", "leading", "karras") and steps > 1:
        assert float(ts[-1]) == 0


@pytest.mark.parametrize("process_name", ["vp", "ve"])
@pytest.mark.parametrize("spacing", SPACINGS)
def test_continuous_grids_are_valid(process_name, spacing):
    process = PROCESSES[process_name]
    ts = make_timesteps(process, 25, spacing)
    assert bool((ts[1:] < ts[:-1]).all())
    assert process.t_min <= float(ts.min()) and float(ts.max()) <= process.t_max
    if spacing in ("uniform", "linspace"):
        torch.testing.assert_close(
            ts, torch.linspace(process.t_max, process.t_min, 25, dtype=torch.float64)
        )


def test_grid_errors():
    process = PROCESSES["linear"]
    with pytest.raises(ValueError) as err:
        make_timesteps(process, 10, "quadratic")
    for spacing in SPACINGS:
        assert spacing in str(err.value)
    for steps in (0, -3, 1001, 2.5, True):
        with pytest.raises(ValueError, match="steps"):
            make_timesteps(process, steps)
    with pytest.raises(ValueError, match="between 1 and T = 1000"):
        sample(gaussian_oracle(process, 0.0, 1.0, 2), (2, 2), "ddim", steps=1001)
    with pytest.raises(ValueError, match="sigma_max"):
        make_timesteps(process, 10, "karras", sigma_max=1e6)
    with pytest.raises(ValueError, match="offset"):
        make_timesteps(process, 10, "leading", offset=500)


def test_an_option_a_sampler_does_not_take_is_named_with_those_it_does():
    """sample()'s options go to the sampler; clip_denoised is ddpm's and ddim's, not deis's:
    one line that lists what deis takes, not Python's TypeError."""
    oracle = gaussian_oracle(PROCESSES["vp"], 0.0, 1.0, 2)
    with pytest.raises(ValueError, match=r"^the deis sampler takes no clip_denoised; its "
                                         r"options: order$"):
        sample(oracle, (2, 2), "deis", steps=3, clip_denoised=False)
    assert sample(oracle, (2, 2), "ddim", steps=3, clip_denoised=False).shape == (2, 2)
