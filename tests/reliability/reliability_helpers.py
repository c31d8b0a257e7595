"""Shared by the reliability tests: a tiny digits8 run (seconds on a CPU), its final tensors,
its metrics rows, and the debris check."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from tiny_run import TINY as TINY_RUN

from difflab.checkpoints.store import load_checkpoint
from difflab.config import load_config
from difflab.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
# tests/tiny_run.py's run with a checkpoint every step: most of a run is checkpoint writes,
# so kills and injected faults land in them often.
TINY = [*TINY_RUN, "train.precision=fp32", "train.threads=1", "train.checkpoint_every=1"]
TEMP = re.compile(r"^\..*\.(tmp|del)-")  # difflab's temporary folder names


def tiny_config(steps: int, *extra: str):
    return load_config(ROOT / "configs" / "digits8.toml", [*TINY, f"train.max_steps={steps}",
                                                           *extra])


def trainer(out: Path, steps: int, *extra: str, data=None) -> Trainer:
    return Trainer(tiny_config(steps, *extra), out, device="cpu", quiet=True, data=data)


def final_tensors(run: Path) -> dict[str, torch.Tensor]:
    """Model, EMA and optimizer tensors of run/last, flattened into one dict to compare."""
    ck = load_checkpoint(run / "last", with_training_state=True, fallback=False)
    out = {f"model.{k}": v for k, v in ck.model.items()}
    out.update({f"ema.{k}": v for k, v in ck.ema.items()})
    for pid, state in ck.optimizer["state"].items():
        out.update({f"opt.{pid}.{k}": torch.as_tensor(v) for k, v in state.items()})
    return out


def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names whose tensors are not bit-identical (or present in only one)."""
    keys = set(a) | set(b)
    return sorted(k for k in keys if k not in a or k not in b or not torch.equal(a[k], b[k]))


def metric_rows(run: Path, kind: str = "loss") -> list[tuple]:
    """metrics.jsonl's rows of one kind (loss, health, fid) without their timing columns:
    what an uninterrupted run must match, row for row."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[kind], r.get("lr")) for r in rows if kind in r]


def debris(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if TEMP.match(p.name))
