"""Samplers: plain functions `sample_X(denoiser, x, timesteps, *, generator, callback, **options)`.

`SAMPLERS` maps a name to each function; `get_sampler(name)` looks one up with a clear error, and
`sample(denoiser, shape, ...)` builds the time grid, draws the prior noise and runs a sampler.
Every sampler evaluates the denoiser at the given strictly decreasing times and returns the last
denoised x0 prediction; see each module for the paper it implements.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from difflab.diffusion.denoiser import Denoiser
from difflab.samplers.common import Callback, GeneratorLike, randn
from difflab.samplers.ddim import sample_ddim
from difflab.samplers.ddpm import sample_ddpm
from difflab.samplers.deis import sample_deis
from difflab.samplers.dpm_solver import (
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2s,
    sample_dpmpp_3m,
)
from difflab.samplers.karras import sample_euler, sample_euler_ancestral, sample_heun
from difflab.samplers.plms import sample_plms
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
}

# The SDE samplers live in their own modules (another author); register them once they exist.
try:
    from difflab.samplers.sde import sample_euler_maruyama, sample_pc

    SAMPLERS["euler_maruyama"] = sample_euler_maruyama
    SAMPLERS["pc"] = sample_pc
except ImportError:
    pass
try:
    from difflab.samplers.ode import sample_ode

    SAMPLERS["ode"] = sample_ode
except ImportError:
    pass

# Model evaluations per time point, for matching samplers at equal cost (last point: 1).
EVALS_PER_STEP = {"heun": 2, "dpmpp_2s": 2, "pc": 2}

# Defaults for `sample`: (steps, spacing). steps=None for ddpm means every step of a discrete
# process (1000 for continuous ones). "uniform" includes both ends of the process' time range;
# "karras" is what Karras et al. tuned their solvers on and suits the log-SNR-based solvers.
DEFAULTS: dict[str, tuple[int | None, str]] = {
    "ddpm": (None, "uniform"),
    "ddim": (50, "uniform"),
    "plms": (50, "uniform"),
    "deis": (20, "uniform"),
    "dpmpp_2m": (20, "karras"),
    "dpmpp_3m": (20, "karras"),
    "dpmpp_2s": (10, "karras"),
    "dpmpp_2m_sde": (50, "karras"),
    "euler": (50, "karras"),
    "heun": (10, "karras"),
    "euler_ancestral": (50, "karras"),
    "euler_maruyama": (None, "uniform"),
    "pc": (None, "uniform"),
    "ode": (50, "uniform"),
}


def get_sampler(name: str) -> Callable[..., Tensor]:
    """The sampler function registered under `name`."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; allowed: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]


def default_steps(name: str, process) -> int:
    """Default number of time points for sampler `name` on `process`."""
    steps = DEFAULTS.get(name, (50, "uniform"))[0]
    if steps is None:
        return process.T if process.discrete else 1000
    return steps


@torch.no_grad()
def sample(denoiser: Denoiser, shape: Sequence[int], sampler: str = "ddim",
           steps: int | None = None, spacing: str | None = None, *,
           generator: GeneratorLike = None, callback: Callback = None, device=None,
           dtype: torch.dtype = torch.float32, **options) -> Tensor:
    """Draw samples of `shape`: prior noise randn(shape) * process.prior_std(), then `sampler`
    on make_timesteps(process, steps, spacing). steps / spacing default per sampler (DEFAULTS);
    `options` go to the sampler (e.g. eta=, variance=, order=)."""
    fn = get_sampler(sampler)
    process = denoiser.process
    steps = default_steps(sampler, process) if steps is None else steps
    spacing = DEFAULTS.get(sampler, (None, "uniform"))[1] if spacing is None else spacing
    timesteps = make_timesteps(process, steps, spacing)
    x = randn(shape, generator, device, dtype) * process.prior_std()
    return fn(denoiser, x, timesteps, generator=generator, callback=callback, **options)


__all__ = [
    "DEFAULTS",
    "EVALS_PER_STEP",
    "SAMPLERS",
    "SPACINGS",
    "default_steps",
    "get_sampler",
    "make_timesteps",
    "sample",
    *sorted(n for n in globals() if n.startswith("sample_")),
]
