"""Which folder a checkpoint name means: a folder on disk, or a model shipped with difflab.

`difflab sample fashion-mnist` and `Generator.from_checkpoint("runs/x/last")` both come
through `resolve_checkpoint`: a path that is a folder is taken as it is (and so is one whose
newest complete version a crash left as NAME.prev/, which `load_checkpoint` falls back to).
A training run's own folder (runs/x: last/ and best/, but no model weights of its own)
means its newest checkpoint, runs/x/last. Otherwise a bare name is looked up among the shipped
models in `difflab/weights/`.
"""

from __future__ import annotations

import os
from pathlib import Path

from difflab.checkpoints.store import MODEL_FILE, checkpoint_candidates

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def shipped_models() -> list[str]:
    """The names of the models shipped in difflab/weights/, sorted."""
    return sorted(d.name for d in WEIGHTS_DIR.glob("*") if d.is_dir())


def _is_run_folder(folder: Path) -> bool:
    """True for the output folder of `difflab train`: no model weights of its own, but a last/
    (or the last.prev/ a crash left, or best/) that `load_checkpoint(folder / "last")` reads."""
    return not (folder / MODEL_FILE).exists() and any(
        c.is_dir() for c in checkpoint_candidates(folder / "last")
    )


def resolve_checkpoint(name: str | Path) -> Path:
    """A checkpoint folder, or the name of one shipped with difflab (e.g. 'fashion-mnist')."""
    if not isinstance(name, str | os.PathLike):
        raise TypeError(f"a checkpoint is a folder or a shipped model's name (a str or a "
                        f"path), got {type(name).__name__} {name!r}")
    if not str(name).strip():  # Path("") is the current folder, which is never meant
        raise FileNotFoundError(
            f"the checkpoint's name is empty; give a checkpoint folder or one of the shipped "
            f"models: {', '.join(shipped_models()) or 'none'}")
    p = Path(name)
    if p.is_file():
        raise FileNotFoundError(f"checkpoint {str(name)!r} is a file; a checkpoint is a folder "
                                "(config.json, model.safetensors, ...)")
    if p.is_dir():
        if _is_run_folder(p):
            return p / "last"
        if not (p / MODEL_FILE).exists() and (p / "metrics.jsonl").is_file():
            raise FileNotFoundError(
                f"{p} is a training run with no checkpoint yet: it saves one every "
                "train.checkpoint_every steps, at its end and at Ctrl-C"
            )
        return p
    if any(c.is_dir() for c in checkpoint_candidates(p)[1:]):
        return p  # a crash left an earlier complete one: load_checkpoint takes it, and warns
    if (WEIGHTS_DIR / str(name)).is_dir():
        return WEIGHTS_DIR / str(name)
    raise FileNotFoundError(
        f"checkpoint {str(name)!r} not found; give a checkpoint folder or "
        f"one of the shipped models: {', '.join(shipped_models()) or 'none'}"
    )
