"""The power EMAs a run keeps for post-hoc EMA (`train.posthoc_ema`), their snapshots, and the
average of any length rebuilt from them afterwards (difflab.training.posthoc_ema has the math).

A run with `train.posthoc_ema = [0.05, 0.1]` updates one power EMA per length at every step
and, every `train.posthoc_every` steps, when it keeps its guide and when it stops, writes each
as a small checkpoint folder RUN/posthoc_ema/step_00001000_sigma_0.050/ (the weights, and in
config.json the network, the step and the length). `rebuild(RUN/last, 0.08)` then returns the
weights of the 0.08-long average at that checkpoint's step, `difflab export --ema-length`
writes them as a model. Snapshot folders are checkpoints: written atomically, and read back as
untrusted input (each checked against the network and its record type-checked).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from difflab.checkpoints import store as ckpt_io
from difflab.training.ema import PowerEMA
from difflab.training.posthoc_ema import sigma_rel_to_gamma, solve_coefficients

SNAPSHOT_DIR = "posthoc_ema"  # inside the run's folder, beside last/ and best/
SNAPSHOT_NAME = re.compile(r"step_\d{8}_sigma_\d\.\d{3}")  # snapshot_name's; nothing else is read
# A rebuilt average whose profile misses the one asked for by more than this (relative L2)
# is refused: the snapshots do not span it (a length far outside the tracked ones).
MAX_FIT_ERROR = 0.1


def component_name(index: int) -> str:
    return f"{ckpt_io.POSTHOC_EMA_PREFIX}{index}"


def snapshot_name(step: int, sigma_rel: float) -> str:
    return f"step_{step:08d}_sigma_{sigma_rel:.3f}"


def save_snapshots(run_dir: Path, emas: list[PowerEMA], step: int, network: dict) -> None:
    """Write each power EMA's weights at `step` as its own snapshot folder."""
    for ema in emas:
        record = {"step": step, "sigma_rel": ema.sigma_rel, "gamma": ema.gamma}
        ckpt_io.save_checkpoint(
            run_dir / SNAPSHOT_DIR / snapshot_name(step, ema.sigma_rel),
            config={"kind": "posthoc_ema_snapshot", "network": network, "posthoc_ema": record},
            model=ema.state_dict(),
        )


@dataclass(frozen=True)
class Snapshot:
    path: Path
    step: int
    gamma: float
    sigma_rel: float


_RECORD = {"step": (int,), "sigma_rel": (int, float), "gamma": (int, float)}


def find_snapshots(run_dir: Path, network: dict, up_to: int) -> list[Snapshot]:
    """The snapshots of the run in `run_dir` for `network`, taken at or before step `up_to`
    (a later one belongs to a future the checkpoint did not reach). Unreadable folders and
    other networks' snapshots are an error, not skipped: a silent gap would change the
    average."""
    folder = run_dir / SNAPSHOT_DIR
    found = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not SNAPSHOT_NAME.fullmatch(path.name):  # a temporary folder, a file of the user's
            continue
        config = ckpt_io.load_checkpoint(path, fallback=False).config
        record = config.get("posthoc_ema")
        if not isinstance(record, dict):
            raise ckpt_io.CheckpointError(f"{path} is not a post-hoc EMA snapshot")
        ckpt_io.require_fields(record, _RECORD, str(path / ckpt_io.CONFIG_FILE))
        if config.get("network") != network:
            raise ckpt_io.CheckpointError(f"{path} is a snapshot of another network")
        if record["step"] <= up_to and record["step"] >= 1 and record["gamma"] >= 0:
            found.append(Snapshot(path, record["step"], float(record["gamma"]),
                                  float(record["sigma_rel"])))
    return found


def rebuild(checkpoint: str | Path, sigma_rel: float, step: int | None = None
            ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights of the power EMA of length `sigma_rel` at `step` (default: the training
    checkpoint's own step), combined from its run's snapshots; and a record of how (length,
    step, snapshots used, the profile's fit error) for the export's provenance. Raises
    CheckpointError when the run kept no snapshots or they cannot make that average."""
    ck = ckpt_io.load_checkpoint(checkpoint, with_training_state=True)
    at = step if step is not None else ck.state.get("step")
    if not isinstance(at, int) or at < 1:
        raise ckpt_io.CheckpointError(
            f"{ck.path} is not a training checkpoint with a step (an export keeps no "
            "snapshots): give a run's last/ or best/"
        )
    snapshots = find_snapshots(ck.path.parent, ck.config.get("network"), at)
    if not snapshots:
        raise ckpt_io.CheckpointError(
            f"{ck.path.parent} holds no post-hoc EMA snapshots up to step {at}: train with "
            "train.posthoc_ema (e.g. [0.05, 0.1]) to keep them"
        )
    gamma = sigma_rel_to_gamma(sigma_rel)
    coeffs, error = solve_coefficients([(s.gamma, s.step) for s in snapshots], gamma, at)
    if error > MAX_FIT_ERROR:
        lengths = sorted({s.sigma_rel for s in snapshots})
        raise ckpt_io.CheckpointError(
            f"the snapshots in {ck.path.parent / SNAPSHOT_DIR} (lengths {lengths}) cannot "
            f"make an average of length {sigma_rel} at step {at} (profile error {error:.0%}); "
            "ask for a length near the tracked ones"
        )
    total: dict[str, torch.Tensor] = {}
    for c, snap in zip(coeffs, snapshots, strict=True):
        weights = ckpt_io.load_checkpoint(snap.path, fallback=False).model
        for key, value in weights.items():
            if not value.is_floating_point():
                total.setdefault(key, value)
                continue
            total[key] = total.get(key, 0) + float(c) * value.double()
    if set(total) != set(ck.weights(prefer_ema=True)):
        raise ckpt_io.CheckpointError(f"the snapshots' weights do not match {ck.path}'s")
    out = {k: v.float() if v.is_floating_point() else v for k, v in total.items()}
    record = {"sigma_rel": sigma_rel, "step": at, "snapshots": len(snapshots),
              "fit_error": round(error, 6)}
    return out, record
