"""What the commands are given by name: a config (a TOML file, or a preset in configs/), a
checkpoint (a folder, or a model shipped with difflab), and the files they are to write --
each checked before any work starts, so that a typo costs a second, not a training run."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from difflab.checkpoints import names
from difflab.cli.errors import CLIError
from difflab.ownership import written_by_difflab

DEFAULT_CONFIG = "fashion_mnist"
# The package: src/difflab/ in a checkout, site-packages/difflab/ when installed.
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _configs_dir() -> Path:
    """configs/ of a source checkout, else the copy installed inside the package."""
    for cand in (PACKAGE_DIR.parents[1] / "configs", PACKAGE_DIR / "configs"):
        if cand.is_dir():
            return cand
    return PACKAGE_DIR.parents[1] / "configs"


def resolve_config(name: str) -> Path:
    """A config path, or the name of a preset in configs/ (with or without .toml)."""
    p = Path(name)
    if p.is_file():
        return p
    cand = _configs_dir() / (name if name.endswith(".toml") else f"{name}.toml")
    if cand.is_file():
        return cand
    presets = sorted(f.stem for f in _configs_dir().glob("*.toml"))
    what = ("is empty" if not name.strip() else "is a folder, not a TOML file" if p.is_dir()
            else "not found")
    raise CLIError(
        f"config {name!r} {what}; give a TOML file or one of the presets: {', '.join(presets)}"
    )


CHECKPOINT_HELP = "a checkpoint folder (a run folder means its last/) or a shipped model name"


def resolve_checkpoint(name: str) -> Path:
    """A checkpoint folder, or the folder of a shipped model: CLIError when there is none."""
    try:
        return names.resolve_checkpoint(name)
    except FileNotFoundError as e:
        raise CLIError(str(e)) from None


def check_output_file(path: str | Path, flag: str) -> Path:
    """Refuse, before any work, an output path that cannot be written as a file (an existing
    folder, a path through a file) or that holds a file difflab did not write: difflab
    replaces its own pictures and sample files (rerunning a command is common), never the
    user's."""
    path = Path(path)
    if path.is_dir():
        raise CLIError(f"{flag} {path} is a folder; give a file name")
    if os.path.lexists(path) and (path.is_symlink() or not written_by_difflab(path)):
        raise CLIError(f"{flag} {path} exists and difflab did not write it, so difflab leaves "
                       "it alone; give another file name, or move that file away")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CLIError(f"{flag} {path}: {parent} is a file, not a folder")
            _check_writable(parent, path, flag)
            if parent != path.parent:  # a mistyped folder is created, and said to be
                print(f"difflab: {flag}: creating the folder {path.parent}")
            break
    return path


def _check_writable(folder: Path, path: Path, flag: str) -> None:
    """Write and remove an empty file of our own in the nearest existing folder of `path`:
    the one check that holds for permissions, read-only mounts and dropped privileges alike,
    so that a minute of sampling is not lost to a folder it cannot be saved in."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".difflab-write-check-", dir=folder)
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise CLIError(f"{flag} {path}: cannot write in {folder} ({why.lower()}); give a "
                       "path in a folder you can write to") from None
    os.close(fd)
    os.unlink(probe)

