"""The Runs tab: training runs under the app's folders, read while they train.

A run folder is what `difflab train` writes (difflab.training.trainer, difflab.runs.report):
metrics.jsonl (a row per logged step: loss, lr, images/s; a row per FID evaluation: fid,
kid; a row per health check: the kinds of its findings), samples/step_NNNNNNN.png (the
fixed-seed grid every train.sample_every steps) and, once finished, samples.png and the
report. The tab redraws the curves with `viz.loss_figure`, the training report's own plot,
and shows the newest grids; nothing is written into the run. The trainer appends whole lines
and writes pictures atomically, so a reader never sees half a grid, and a last line still
being written is skipped (as `viz.loss_figure` does).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from difflab import viz
from difflab.pipeline import read_image_file
from difflab.training import health
from difflab.web.limits import Roots
from difflab.web.models import METRICS

GRID_NAME = re.compile(r"step_(\d+)\.png")
SHOWN_GRIDS = 12  # the newest grids shown; older ones stay on disk
SHOWN_CHECKS = 8  # the newest health checks listed


@dataclass
class RunView:
    summary: str
    loss: Any = None  # matplotlib Figure, or None before the first logged step
    fid: Any = None  # the same for FID, where the run tracks it
    grids: list[tuple[Any, str]] = field(default_factory=list)  # (PIL image, caption)
    health: list[str] = field(default_factory=list)


def health_lines(rows: list[dict]) -> list[str]:
    """The newest health checks, newest first: what each found, in the trainer's words."""
    checks = [r for r in rows if isinstance(r.get("health"), list)]
    out = []
    for row in reversed(checks[-SHOWN_CHECKS:]):
        kinds = [str(k) for k in row["health"]]
        said = [health.summary(health.Finding(k, "") for k in kinds)]
        if "slow" in kinds:
            said.append("training ran slower than its start-up timing")
        step = row.get("step")
        where = f"step {step:,}" if isinstance(step, int) else "a check"
        out.append(f"{where}: {'; '.join(said)}")
    return out


def sample_grids(roots: Roots, run: Path) -> list[tuple[Any, str]]:
    """The newest periodic sample grids (and the final one), as (PIL image, caption)."""
    found = []
    folder = run / "samples"
    if folder.is_dir():
        for path in folder.iterdir():
            match = GRID_NAME.fullmatch(path.name)
            if match and path.is_file():
                found.append((int(match.group(1)), path))
    found.sort(reverse=True)
    shown = []
    final = run / "samples.png"
    if final.is_file():
        shown.append((final, "final samples (samples.png)"))
    shown += [(path, f"step {step:,}") for step, path in found[:SHOWN_GRIDS]]
    out = []
    for path, caption in shown:
        if not roots.contains(path):  # a link out of the served folders
            continue
        try:
            out.append((read_image_file(path, "sample grid"), caption))
        except ValueError:
            continue  # being replaced right now, or not a picture: the next refresh has it
    return out


def _ago(seconds: float) -> str:
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            amount = seconds / size
            return f"{amount:.0f} {unit}" + ("s" if unit == "day" and amount >= 1.5 else "")
    return f"{seconds:.0f} s"


def _step(row: dict) -> str:
    return f"{row['step']:,}" if "step" in row else "?"


def _summary(run_name: str, run: Path, rows: list[dict]) -> str:
    logged = [r for r in rows if "loss" in r]
    fids = [r for r in rows if isinstance(r.get("fid"), int | float)]
    age = time.time() - (run / METRICS).stat().st_mtime
    lines = [f"**{run_name}**: metrics last written {_ago(age)} ago"]
    if logged:
        last = logged[-1]
        lines.append(
            f"step {_step(last)} · loss {last['loss']:.4g} · lr {last.get('lr', 0):.3g}"
            f" · {last.get('images_per_sec', 0):.0f} images/s · "
            f"{last.get('elapsed_sec', 0) / 60:.1f} min of training"
        )
    else:
        lines.append("no step logged yet")
    if fids:
        best = min(fids, key=lambda r: r["fid"])
        lines.append(f"FID {fids[-1]['fid']:.2f} at step {_step(fids[-1])} "
                     f"(best {best['fid']:.2f} at step {_step(best)})")
    return "  \n".join(lines)


def view(roots: Roots, run_name: str) -> RunView:
    """What the tab shows of the run folder `run_name` (under a root)."""
    run = roots.confine(run_name, "run")
    metrics = run / METRICS
    if not metrics.is_file():
        raise ValueError(f"{run_name} is not a training run: it has no {METRICS}")
    rows = viz.read_metrics(metrics)
    result = RunView(_summary(run_name, run, rows))
    if any("loss" in r for r in rows):
        result.loss = viz.loss_figure(rows)
    if any(isinstance(r.get("fid"), int | float) for r in rows):
        result.fid = viz.loss_figure(rows, key="fid")
    result.grids = sample_grids(roots, run)
    result.health = health_lines(rows)
    return result
