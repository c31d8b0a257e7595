"""The score-based write-up's 1-D experiment: diffusing a point and un-diffusing it.

Forward: dx = sigma dw (constant noise strength, no drift) from x(0) = x0, simulated by
Euler–Maruyama, x_{k+1} = x_k + sigma sqrt(dt) z. The marginal is x(t) ~ N(x0, sigma^2 t), so
the spread of the endpoints at T is sigma^2 T.

Reverse: the same SDE backwards in time (Anderson 1982; Song et al. 2021, eq. 6),
dx = -sigma^2 score(x, t) dt + sigma dw_bar, with the score of that marginal known in closed form,
score(x, t) = -(x - x0) / (sigma^2 t). Started from x(T) ~ N(x0, sigma^2 T), every path is
pulled back to x0: the last Euler–Maruyama step (t = dt) lands exactly on x0 plus its own
noise sigma sqrt(dt) z, so the endpoints spread by only sigma sqrt(T / n_steps).

`plot_toy1d` draws a few paths each way, for `difflab viz toy1d`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from difflab.ownership import MARK

Tensor = torch.Tensor


def _check(sigma: float, n_paths: int, n_steps: int, T: float) -> None:
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    if not T > 0:
        raise ValueError(f"T must be positive, got {T!r}")
    for name, n in (("n_paths", n_paths), ("n_steps", n_steps)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {n!r}")


def forward_trajectories(
    x0: float = 0.0,
    sigma: float = 1.0,
    n_paths: int = 5,
    n_steps: int = 500,
    T: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Euler–Maruyama paths of dx = sigma dw from x0 over [0, T].

    Returns (t, x): times (n_steps + 1,) increasing from 0 to T, and paths
    (n_paths, n_steps + 1) float64 with x[:, 0] = x0.
    """
    _check(sigma, n_paths, n_steps, T)
    dt = T / n_steps
    t = torch.linspace(0.0, T, n_steps + 1, dtype=torch.float64)
    z = torch.randn(n_paths, n_steps, generator=generator, dtype=torch.float64)
    steps = sigma * math.sqrt(dt) * z  # x_{k+1} = x_k + sigma sqrt(dt) z_k
    x = x0 + torch.cat([torch.zeros(n_paths, 1, dtype=torch.float64), steps.cumsum(1)], 1)
    return t, x


def reverse_trajectories(
    x0: float = 0.0,
    sigma: float = 1.0,
    n_paths: int = 5,
    n_steps: int = 500,
    T: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Euler–Maruyama paths of the reverse SDE with the analytic score, from t = T to 0.

    x(T) ~ N(x0, sigma^2 T); each step from t to t - dt is
    x <- x + sigma^2 score(x, t) dt + sigma sqrt(dt) z, with score = -(x - x0) / (sigma^2 t).
    Returns (t, x): times (n_steps + 1,) decreasing from T to 0, and paths (n_paths, n_steps + 1).
    """
    _check(sigma, n_paths, n_steps, T)
    dt = T / n_steps
    t = torch.linspace(T, 0.0, n_steps + 1, dtype=torch.float64)
    z = torch.randn(n_paths, n_steps + 1, generator=generator, dtype=torch.float64)
    x = torch.empty(n_paths, n_steps + 1, dtype=torch.float64)
    x[:, 0] = x0 + sigma * math.sqrt(T) * z[:, 0]
    for k in range(n_steps):
        tk = T - k * dt  # computed, not read from t, so the last step has t = dt exactly
        score = -(x[:, k] - x0) / (sigma**2 * tk)
        # reverse-time Euler–Maruyama: x_{t-dt} = x_t + sigma^2 score dt + sigma sqrt(dt) z
        x[:, k + 1] = x[:, k] + sigma**2 * score * dt + sigma * math.sqrt(dt) * z[:, k + 1]
    return t, x


def plot_toy1d(
    out: str | Path,
    *,
    x0: float = 0.0,
    sigma: float = 1.0,
    n_paths: int = 5,
    n_steps: int = 500,
    T: float = 1.0,
    seed: int = 0,
) -> Path:
    """Draw forward and reverse trajectories side by side and save them as a PNG at `out`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    gen = torch.Generator().manual_seed(seed)
    t_f, x_f = forward_trajectories(x0, sigma, n_paths, n_steps, T, gen)
    t_r, x_r = reverse_trajectories(x0, sigma, n_paths, n_steps, T, gen)

    fig = Figure(figsize=(10, 4), constrained_layout=True)
    FigureCanvasAgg(fig)  # Agg canvas: no display or pyplot state needed
    ax_f, ax_r = fig.subplots(1, 2, sharey=True)
    band = 2 * sigma * torch.sqrt(t_f)
    for ax, t, x, title in (
        (ax_f, t_f, x_f, rf"Forward diffusion $dx = \sigma\,dw$, $\sigma = {sigma:g}$"),
        (ax_r, t_r, x_r, "Reverse diffusion with the exact score"),
    ):
        ax.fill_between(
            t_f.numpy(),
            (x0 - band).numpy(),
            (x0 + band).numpy(),
            color="0.9",
            label=r"$x_0 \pm 2\sigma\sqrt{t}$",
        )
        for path in x:
            ax.plot(t.numpy(), path.numpy(), lw=0.8)
        ax.axhline(x0, color="k", lw=0.5, ls="--")
        ax.set_title(title)
        ax.set_xlabel("t")
    ax_r.invert_xaxis()  # reverse time runs from T down to 0
    ax_f.set_ylabel("x")
    ax_f.legend(loc="upper left", fontsize="small")

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=100, metadata={"Software": MARK})
    return out
