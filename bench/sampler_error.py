"""Sample error against NFE for every registered sampler, on a 2-D ring of 8 Gaussians.

The denoiser is the exact one (GaussianMixtureOracle), so every difference from the data
distribution is the sampler's own discretisation error (plus Monte-Carlo noise). Metrics:
- SW: sliced Wasserstein-1 distance to fresh samples of the data (oracle.sample), averaged
  over 50 fixed projection directions, 5000 samples each;
- weight error: max over modes of |share of samples nearest that mode - 1/8|;
- mode std: std of samples around their nearest mode (truth: 0.1).
"floor" is SW between two independent sets of true samples (mean and std over 5 pairs): no
sampler can be told apart from the data below it. All samplers start from the same prior noise.
NFE is counted by the oracle; samplers with 2 evaluations per step get (NFE + 1) // 2 points.
Each sampler runs on the grid `difflab.samplers.sample` would use (default_timesteps: its
default spacing, and the Karras grid capped at sigma_max = 80 for VP processes).
The adaptive probability-flow ODE ("ode") is run at a few tolerances and reported by its NFE.

    python bench/sampler_error.py [--schedule linear|cosine] [--spacing NAME] [--n 5000]

Writes bench/results/sampler_error.json and .png (per schedule suffix when not linear).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from difflab.diffusion.oracles import ring_mixture
from difflab.diffusion.process import DiscreteProcess
from difflab.samplers import DEFAULTS, EVALS_PER_STEP, SAMPLERS, default_timesteps

NFES = (5, 10, 20, 50, 100, 200, 1000)
ODE_TOLERANCES = (1e-2, 1e-3, 1e-5)
RESULTS = Path(__file__).parent / "results"


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, dirs: torch.Tensor) -> float:
    """Mean over directions of the 1-D Wasserstein-1 distance of the projections."""
    pa, pb = (a @ dirs.T).sort(0).values, (b @ dirs.T).sort(0).values  # (n, P)
    return float((pa - pb).abs().mean())


def metrics(out: torch.Tensor, oracle, ref: torch.Tensor, dirs: torch.Tensor) -> dict:
    k = torch.cdist(out, oracle.means).argmin(1)
    share = torch.bincount(k, minlength=len(oracle.means)).double() / len(out)
    return {
        "sw": sliced_wasserstein(out, ref, dirs),
        "weight_err": float((share - oracle.weights).abs().max()),
        "mode_std": float((out - oracle.means[k]).std()),
    }


def run(schedule: str, spacing: str | None, n: int, seed: int = 0) -> dict:
    process = DiscreteProcess.from_schedule(schedule, 1000)
    oracle = ring_mixture(process)
    gen = torch.Generator().manual_seed(seed)
    ref = oracle.sample(n, gen)
    angles = torch.arange(50, dtype=torch.float64) * math.pi / 50
    dirs = torch.stack([angles.cos(), angles.sin()], 1)  # 50 directions over the half circle
    floor = [
        sliced_wasserstein(oracle.sample(n, gen), oracle.sample(n, gen), dirs) for _ in range(5)
    ]
    x_T = torch.randn(n, 2, generator=gen, dtype=torch.float64) * process.prior_std()
    rows = []
    for name, fn in SAMPLERS.items():
        sp = spacing or DEFAULTS.get(name, (None, "uniform"))[1]
        grid = ODE_TOLERANCES if name == "ode" else NFES
        for target in grid:
            evals = EVALS_PER_STEP.get(name, 1)  # NFE = evals * (steps - 1) + 1
            steps = 2 if name == "ode" else (target - 1) // evals + 1
            if steps > process.T:
                continue
            opts = {"rtol": target, "atol": target} if name == "ode" else {}
            oracle.nfe, t0 = 0, time.perf_counter()
            out = fn(
                oracle,
                x_T.clone(),
                default_timesteps(name, process, steps, sp),
                generator=torch.Generator().manual_seed(seed + 1),
                **opts,
            )
            row = {
                "sampler": name,
                "spacing": sp,
                "steps": steps,
                "target_nfe": target,
                "nfe": oracle.nfe,
                "seconds": time.perf_counter() - t0,
            }
            rows.append(row | metrics(out, oracle, ref, dirs))
    floor_t = torch.tensor(floor)
    return {
        "schedule": schedule,
        "n": n,
        "rows": rows,
        "floor": {"mean": float(floor_t.mean()), "std": float(floor_t.std())},
    }


def table(result: dict, key: str, fmt: str) -> str:
    names = list(dict.fromkeys(r["sampler"] for r in result["rows"] if r["sampler"] != "ode"))
    lines = [
        f"| sampler (spacing) | {' | '.join(str(n) for n in NFES)} |",
        "|---" * (len(NFES) + 1) + "|",
    ]
    for name in names:
        rs = {r["target_nfe"]: r for r in result["rows"] if r["sampler"] == name}
        cells = [format(rs[n][key], fmt) if n in rs else "-" for n in NFES]
        lines.append(f"| {name} ({next(iter(rs.values()))['spacing']}) | {' | '.join(cells)} |")
    return "\n".join(lines)


def first_nfe_from(rows: list[dict], ok) -> int | None:
    """Smallest NFE from which `ok(row)` holds at every larger NFE too (robust to MC noise)."""
    rows = sorted(rows, key=lambda r: r["nfe"])
    first = None
    for r in rows:
        first = (first or r["nfe"]) if ok(r) else None
    return first


def summary(result: dict) -> list[str]:
    """Per sampler: from which NFE its SW stays within DDPM-1000's (+ 2 floor std) and its
    std around the modes within 0.01 of the truth (0.1)."""
    rows = [r for r in result["rows"] if r["sampler"] != "ode"]
    ref = next(r for r in rows if r["sampler"] == "ddpm" and r["steps"] == 1000)
    bar = ref["sw"] + 2 * result["floor"]["std"]
    out = [
        f"DDPM 1000: SW {ref['sw']:.4f}, mode std {ref['mode_std']:.3f}; true-vs-true SW floor "
        f"{result['floor']['mean']:.4f} +- {result['floor']['std']:.4f}; SW bar {bar:.4f}",
        "",
        "| sampler | SW <= bar from NFE | mode std within 0.1 +- 0.01 from NFE |",
        "|---|---|---|",
    ]
    for name in dict.fromkeys(r["sampler"] for r in rows):
        mine = [r for r in rows if r["sampler"] == name]
        sw = first_nfe_from(mine, lambda r: r["sw"] <= bar)
        spread = first_nfe_from(mine, lambda r: abs(r["mode_std"] - 0.1) <= 0.01)
        out.append(f"| {name} | {sw or 'never'} | {spread or 'never'} |")
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    names = list(dict.fromkeys(r["sampler"] for r in result["rows"]))
    ax.set_prop_cycle(color=[plt.cm.tab20(i % 20) for i in range(len(names))])
    for name in names:
        rs = sorted((r for r in result["rows"] if r["sampler"] == name), key=lambda r: r["nfe"])
        style = "s--" if name == "ode" else "o-"
        ax.plot([r["nfe"] for r in rs], [r["sw"] for r in rs], style, ms=3, label=name)
    ref = next(r["sw"] for r in result["rows"] if r["sampler"] == "ddpm" and r["steps"] == 1000)
    ax.axhline(ref, color="k", ls=":", label="DDPM 1000")
    ax.axhline(result["floor"]["mean"], color="gray", ls="-.", label="true vs true (floor)")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="NFE (denoiser evaluations)",
        ylabel="sliced Wasserstein-1 to data",
        title=f"8-mode ring, exact denoiser, {result['schedule']} T=1000, n={result['n']}",
    )
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedule", default="linear", choices=["linear", "cosine"])
    parser.add_argument("--spacing", default=None, help="override every sampler's default")
    parser.add_argument("--n", type=int, default=5000)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the oracle's tensors are small: threads only add contention
    t0 = time.perf_counter()
    result = run(args.schedule, args.spacing, args.n)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "sampler_error" + ("" if args.schedule == "linear" else f"_{args.schedule}")
    if args.spacing:
        stem += f"_{args.spacing}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=1))
    plot(result, RESULTS / f"{stem}.png")
    print(f"## Sliced Wasserstein-1 to data vs NFE ({args.schedule}, n = {args.n})\n")
    print(table(result, "sw", ".4f"))
    print("\n## Max mode-weight error vs NFE\n")
    print(table(result, "weight_err", ".4f"))
    print("\n## Std around nearest mode vs NFE (truth 0.1)\n")
    print(table(result, "mode_std", ".3f"))
    odes = [r for r in result["rows"] if r["sampler"] == "ode"]
    if odes:
        print("\n## Adaptive probability-flow ODE (RK45)\n")
        print("| rtol = atol | NFE | SW | weight err | mode std |\n|---|---|---|---|---|")
        for r, tol in zip(odes, ODE_TOLERANCES, strict=True):
            print(
                f"| {tol:g} | {r['nfe']} | {r['sw']:.4f} | {r['weight_err']:.4f} | "
                f"{r['mode_std']:.3f} |"
            )
    print("\n" + "\n".join(summary(result)))
    print(f"\n({time.perf_counter() - t0:.0f} s; results in {RESULTS / stem}.json / .png)")


if __name__ == "__main__":
    main()
