"""Samplers: plain functions `sample_X(denoiser, x, timesteps, *, generator, callback, **options)`.

`SAMPLERS` maps a name to each function; `get_sampler(name)` looks one up with a clear error, and
`sample(denoiser, shape, ...)` builds the time grid, draws the prior noise and runs a sampler.
Every sampler evaluates the denoiser at the given strictly decreasing times and returns the last
denoised x0 prediction; see each module for the paper it implements.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from difflab.diffusion.denoiser import Denoiser
from difflab.diffusion.edm import EDMProcess
from difflab.diffusion.noise import GeneratorLike, randn
from difflab.diffusion.process import NoiseProcess
from difflab.samplers.common import Callback
from difflab.samplers.ddim import sample_ddim
from difflab.samplers.ddpm import sample_ddpm
from difflab.samplers.deis import sample_deis
from difflab.samplers.dpm_solver import (
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2s,
    sample_dpmpp_3m,
)
from difflab.samplers.flow import sample_flow_euler, sample_flow_heun
from difflab.samplers.karras import sample_euler, sample_euler_ancestral, sample_heun
from difflab.samplers.ode import sample_ode
from difflab.samplers.plms import sample_plms
from difflab.samplers.sde import sample_euler_maruyama, sample_pc
from difflab.samplers.timesteps import SPACINGS, make_timesteps

Tensor = torch.Tensor

SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "plms": sample_plms,
    "deis": sample_deis,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_3m": sample_dpmpp_3m,
    "dpmpp_2s": sample_dpmpp_2s,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "euler": sample_euler,
    "heun": sample_heun,
    "euler_ancestral": sample_euler_ancestral,
    "flow_euler": sample_flow_euler,
    "flow_heun": sample_flow_heun,
    "euler_maruyama": sample_euler_maruyama,
    "pc": sample_pc,
    "ode": sample_ode,
}

# Model evaluations per time point, for matching samplers at equal cost (last point: 1).
EVALS_PER_STEP = {"heun": 2, "dpmpp_2s": 2, "pc": 2, "flow_heun": 2}

# Defaults for `sample`: (steps, spacing). steps=None means every step of a discrete process
# (1000 for continuous ones). "uniform" includes both ends of the process' time range; "karras"
# is the grid Karras et al. tuned their solvers on and suits the log-SNR-based solvers; measured
# with bench/sampler_error.py.
DEFAULTS: dict[str, tuple[int | None, str]] = {
    "ddpm": (None, "uniform"),
    "ddim": (50, "uniform"),
    "plms": (50, "karras"),
    "deis": (20, "karras"),
    "dpmpp_2m": (20, "karras"),
    "dpmpp_3m": (20, "karras"),
    "dpmpp_2s": (10, "karras"),
    "dpmpp_2m_sde": (50, "karras"),
    "euler": (50, "karras"),
    "heun": (18, "karras"),
    "euler_ancestral": (50, "karras"),
    "euler_maruyama": (None, "uniform"),
    "pc": (None, "uniform"),
    "ode": (2, "uniform"),  # adaptive solver: only the two ends of the grid matter
    # Integrators in t for flow matching: uniform in t suits its straight paths.
    "flow_euler": (50, "uniform"),
    "flow_heun": (25, "uniform"),
}

# Top of the default Karras grid for processes that end in noise of unit scale (sigma(t_max)
# <= 1: VP, discrete, flow matching), as Karras et al. (2022) do for VP models: above it x_t is
# pure noise for data of unit scale (alpha < 0.0125), and the discrete cosine schedule
# (sigma_ve(T-1) ~ 2e4) or flow matching (sigma_ve(t_max) = 999) would otherwise spend a
# quarter to a half of the grid up there. On flow matching and Gaussian data it lowers the std
# error of DPM-Solver++(2M) and Heun at 10 steps by 2-10x (std 0.1: -0.038 -> -0.004 and
# +0.115 -> +0.042).
KARRAS_SIGMA_MAX = 80.0


def get_sampler(name: str) -> Callable[..., Tensor]:
    """The sampler function registered under `name`."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; allowed: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]


def default_steps(name: str, process: NoiseProcess) -> int:
    """How many steps `name` takes when none are asked for (DEFAULTS; None there: every step of
    a discrete process, 1000 for a continuous one)."""
    return DEFAULTS.get(name, (50, "uniform"))[0] or (process.T if process.discrete else 1000)


def spacing_for(name: str, edm: bool) -> str:
    """The time spacing sampler `name` steps on when none is asked for, by name alone (a config
    is checked before any process exists): the sampler's DEFAULTS, except on EDM, where every
    sampler takes the Karras grid. EDM's time is its noise level, t = sigma in [0.002, 80]
    (Karras et al. 2022): a grid uniform in it puts one point of 50 below sigma 1.6, and its
    eq. 5 grid is the one the process is designed for."""
    get_sampler(name)
    return "karras" if edm else DEFAULTS.get(name, (50, "uniform"))[1]


def default_spacing(name: str, process: NoiseProcess) -> str:
    """The time spacing `name` samples `process` on when none is asked for (`spacing_for`)."""
    return spacing_for(name, isinstance(process, EDMProcess))


def default_timesteps(
    name: str,
    process: NoiseProcess,
    steps: int | None = None,
    spacing: str | None = None,
    sigma_max: float | None = None,
    rho: float = 7.0,
) -> Tensor:
    """The time grid `sample` uses: `default_steps` and `default_spacing` for whatever is
    None, and for "karras" on a process that ends in noise of unit scale (sigma(t_max) <= 1)
    sigma_max = min(sigma_ve(t_max), KARRAS_SIGMA_MAX). `rho` shapes the Karras grid only
    (eq. 5: larger spends more of the steps at low noise)."""
    get_sampler(name)
    if steps is None:
        steps = default_steps(name, process)
    spacing = spacing or default_spacing(name, process)
    t_max = torch.tensor(process.t_max, dtype=torch.float64)
    if spacing == "karras" and sigma_max is None and float(process.sigma(t_max)) <= 1 + 1e-9:
        top = float(process.sigma_ve(t_max))
        sigma_max = KARRAS_SIGMA_MAX if top > KARRAS_SIGMA_MAX else None
    return make_timesteps(process, steps, spacing, sigma_max=sigma_max, rho=rho)


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    shape: Sequence[int],
    sampler: str = "ddim",
    steps: int | None = None,
    spacing: str | None = None,
    *,
    generator: GeneratorLike = None,
    callback: Callback = None,
    device=None,
    dtype: torch.dtype = torch.float32,
    sigma_max: float | None = None,
    **options,
) -> Tensor:
    """Draw samples of `shape`: prior noise randn(shape) * process.prior_std(), then `sampler`
    on default_timesteps(sampler, process, steps, spacing, sigma_max) (see DEFAULTS).
    `options` go to the sampler (e.g. eta=, variance=, order=, clip_denoised=: each sampler
    takes its own; one it does not take is a ValueError that lists those it does)."""
    fn = get_sampler(sampler)
    check_sampler_options(sampler, options)
    if (not isinstance(shape, Sequence | torch.Size) or isinstance(shape, str) or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1
                       for d in shape)):
        raise ValueError(f"shape must be a tuple of whole numbers >= 1, (batch, ...) e.g. "
                         f"(16, 1, 28, 28), got {shape!r}")
    process = denoiser.process
    timesteps = default_timesteps(sampler, process, steps, spacing, sigma_max)
    x = randn(shape, generator, device, dtype) * process.prior_std()
    return fn(denoiser, x, timesteps, generator=generator, callback=callback, **options)


def sampler_options(fn: Callable[..., Tensor]) -> list[str]:
    """The keyword options a sampler function takes beyond what `sample` passes itself."""
    own = {"denoiser", "x", "timesteps", "generator", "callback"}
    return [name for name, p in inspect.signature(fn).parameters.items()
            if name not in own and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _takes_any_keyword(fn: Callable[..., Tensor]) -> bool:
    return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())


def check_sampler_options(sampler: str, options: dict[str, Any], caller: str = "",
                          own: Sequence[str] = ()) -> None:
    """ValueError unless the sampler takes every key of `options`; it names the nearest of
    the sampler's options and of `caller`'s `own` keywords (a misspelt or diffusers-style
    keyword passed on to the sampler by a function that takes **options)."""
    fn = get_sampler(sampler)
    takes = sampler_options(fn)
    unknown = sorted(set(options) - set(takes))
    if not unknown or _takes_any_keyword(fn):
        return
    near = difflib.get_close_matches(unknown[0], [*own, *takes], n=1, cutoff=0.5)
    by = f"{caller} takes no {', '.join(unknown)}" if caller else (
        f"the {sampler} sampler takes no {', '.join(unknown)}")
    whose = f"the {sampler} sampler's" if caller else "its"
    raise ValueError(f"{by}{f' (did you mean {near[0]}?)' if near else ''}; {whose} options: "
                     f"{', '.join(takes) or 'none'}")


__all__ = [
    "DEFAULTS",
    "EVALS_PER_STEP",
    "SAMPLERS",
    "SPACINGS",
    "KARRAS_SIGMA_MAX",
    "default_spacing",
    "spacing_for",
    "default_steps",
    "check_sampler_options",
    "default_timesteps",
    "get_sampler",
    "make_timesteps",
    "sample",
    *sorted(n for n in globals() if n.startswith("sample_")),
]
