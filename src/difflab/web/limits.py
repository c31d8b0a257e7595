"""What the web app lets one request ask for, and which folders it may open.

A page anyone on the machine (or, with --host, the network) can reach must not let one click
pin the CPUs for an hour or fill the memory: steps, image counts, sampler comparisons and
uploads are bounded here, far below the command line's limits (difflab.argtypes), and every
refusal is one line that names the value, the bound and how to raise it. The queue (see
app.py) makes a burst of requests wait for `concurrency` workers instead of running at once.

Checkpoints and runs are opened only from under the folders the app was started with
(`difflab serve --root DIR`), resolved through symlinks, so that a typed path cannot reach a
file elsewhere on the machine; the models shipped with difflab are always available by name.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from difflab.argtypes import MAX_ATTENTION_GUIDANCE, MAX_GUIDANCE, MAX_SEED, check_text
from difflab.checkpoints.names import WEIGHTS_DIR, resolve_checkpoint, shipped_models


@dataclass(frozen=True)
class Limits:
    """Bounds on one request. The defaults keep one generation on a 2-core CPU under about a
    minute (64 images of 28x28 at 200 steps of a ~1 M-parameter UNet) and its memory small:
    the reverse-process frames kept for the GIF are 200 x 64 x 784 bytes = 10 MB."""

    max_steps: int = 200
    max_images: int = 64
    # Sampler comparison: rows (sampler x steps combinations) and images per row.
    max_compare_rows: int = 12
    max_compare_images: int = 8
    # Uploads: gradio refuses larger files before they are written (launch(max_file_size=)).
    max_upload_mb: float = 2.0
    # Requests that sample at once; the others wait in the queue (up to queue_size).
    concurrency: int = 1
    queue_size: int = 100

    def __post_init__(self) -> None:
        for name in ("max_steps", "max_images", "max_compare_rows", "max_compare_images",
                     "concurrency", "queue_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if not math.isfinite(self.max_upload_mb) or self.max_upload_mb <= 0:
            raise ValueError(f"max_upload_mb must be > 0, got {self.max_upload_mb!r}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


def whole_number(value: Any, what: str, low: int, high: int, flag: str | None = None) -> int:
    """`value` (a browser sends numbers as floats, or None for an empty field) as an int in
    [low, high], else a ValueError naming it, the bound and (`flag`) how to raise the bound."""
    allowed = f"allowed {low}..{high}"
    if value is None or value == "":
        raise ValueError(f"{what} is empty; {allowed}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a whole number ({allowed}), got {value!r}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ValueError(f"{what} must be a whole number ({allowed}), got {value!r}")
    number = int(value)
    if number > high and flag:
        raise ValueError(
            f"{what} {number} is over this app's limit of {high} ({allowed}); ask for fewer, "
            f"or start difflab serve with a larger {flag}"
        )
    if not low <= number <= high:
        raise ValueError(f"{what} {number} is out of range ({allowed})")
    return number


def _weight(value: Any, what: str, hint: str = "", most: float = MAX_GUIDANCE) -> float:
    """A guidance weight from a form field, a number in the library's range 0..`most`."""
    allowed = f"allowed 0..{most:g}{hint}"
    if value is None or value == "":
        raise ValueError(f"{what} is empty; {allowed}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number ({allowed}), got {value!r}")
    if not (math.isfinite(value) and 0 <= value <= most):
        raise ValueError(f"{what} {value!r} is out of range ({allowed})")
    return float(value)


def guidance_value(value: Any) -> float:
    """A classifier-free guidance scale from a form field."""
    return _weight(value, "guidance")


def autoguidance_value(value: Any) -> float:
    """An autoguidance weight from a form field (1: the model alone)."""
    return _weight(value, "autoguidance", "; 1: the model alone")


def attention_guidance_value(value: Any, what: str) -> float:
    """A relation or binding guidance scale from a form field (0: off)."""
    return _weight(value, what, "; 0: off", MAX_ATTENTION_GUIDANCE)


def seed_value(value: Any) -> int:
    return whole_number(value, "seed", 0, MAX_SEED)


class Roots:
    """The folders the app may open checkpoints and runs from (resolved, symlinks followed)."""

    def __init__(self, folders: list[str | os.PathLike]):
        if not folders:
            raise ValueError("give at least one folder to serve checkpoints and runs from")
        resolved = []
        for folder in folders:
            path = Path(folder).expanduser()
            if not path.is_dir():
                what = "is not a folder" if path.exists() else "does not exist"
                raise ValueError(f"--root {folder}: {what}")
            resolved.append(path.resolve())
        self.folders = list(dict.fromkeys(resolved))

    def __str__(self) -> str:
        return ", ".join(str(f) for f in self.folders)

    def contains(self, path: str | os.PathLike) -> bool:
        """Whether `path`, with every symlink resolved, is one of the roots or inside one."""
        real = Path(path).resolve()
        return any(real == root or root in real.parents for root in self.folders)

    def confine(self, text: str, what: str = "folder") -> Path:
        """The folder `text` names, refused unless it lies under a root. A relative path is
        read from the app's working folder, else from each root in turn (`run1` in
        `--root runs` is runs/run1, as the API's callers expect)."""
        text = _path_text(text, what)
        path = Path(text).expanduser()
        if not text:
            raise ValueError(f"no {what} given")
        if not path.is_absolute() and not (self.contains(path) and path.is_dir()):
            inside = [root / path for root in self.folders]
            found = next((p for p in inside if self.contains(p) and p.is_dir()), None)
            if found is None and any(self.contains(p) for p in inside):
                # a name that would lie inside a root but is nowhere: a typo, most likely
                raise ValueError(f"{what} {str(text).strip()!r} not found in the folders this "
                                 f"app serves ({self}){self.shipped_hint(what)}")
            path = found or path
        if not self.contains(path):
            raise ValueError(
                f"{what} {str(text).strip()!r} is outside the folders this app serves ({self}); "
                "start difflab serve with --root DIR to serve another folder"
            )
        if not path.is_dir():
            raise ValueError(f"{what} {str(text).strip()!r} is not a folder")
        return path

    @staticmethod
    def shipped_hint(what: str) -> str:
        """For a checkpoint that was not found: the names that are always there."""
        if what != "checkpoint":
            return ""
        return f"; or a shipped model: {', '.join(shipped_models())}"

    def checkpoint(self, name: str) -> Path:
        """A shipped model's folder by name, or a checkpoint folder under a root."""
        name = _path_text(name, "checkpoint")
        if name in shipped_models():
            return resolve_checkpoint(name)
        path = Path(name).expanduser()
        if name and path.resolve().parent == WEIGHTS_DIR.resolve():  # a shipped one by path
            return resolve_checkpoint(path.name)
        return self.confine(name, "checkpoint")

    def display(self, path: Path) -> str:
        """`path` as the app shows it: relative to the working folder when inside it."""
        try:
            return str(path.resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            return str(path.resolve())


def _path_text(text: object, what: str) -> str:
    """A requested name of a folder, stripped; refused in one line when no path can hold it
    (a NUL byte, text that is not UTF-8) rather than failing deep in the filesystem calls."""
    text = str(text or "").strip()
    if "\x00" in text:
        raise ValueError(f"{what} {ascii(text)[:80]} holds a NUL byte, which no path can hold")
    return check_text(text, what)
