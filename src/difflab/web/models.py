"""The checkpoints and runs the app can open, and the Generators it keeps loaded.

Loading a model takes about a second (the text model: its encoder too), so the last few
stay in memory. A run that is still training rewrites its last/ checkpoint: the cache key
includes the folder's newest file time, so the next request draws from the new weights.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from difflab.checkpoints.names import WEIGHTS_DIR, shipped_models
from difflab.checkpoints.store import PREVIOUS_SUFFIX, is_difflab_checkpoint, trained_steps
from difflab.failures import reading_checkpoint
from difflab.pipeline import Generator
from difflab.web.errors import collecting_warnings
from difflab.web.limits import Roots

# Folders never searched for checkpoints or runs: environments, caches, version control.
SKIPPED = {".git", ".venv", "venv", "node_modules", "__pycache__", ".cache", "site-packages"}
# How deep under a root, and how many, checkpoints and runs are listed: a root of millions
# of files must not stall the page (a deeper one can still be typed in).
SEARCH_DEPTH = 4
MAX_LISTED = 200
METRICS = "metrics.jsonl"  # what makes a folder a training run (difflab.training.trainer)


def _walk(root: Path, depth: int):
    """Folders under `root` (itself included) down to `depth` levels, not following links."""
    stack = [(root, 0)]
    while stack:
        folder, level = stack.pop()
        yield folder
        if level >= depth:
            continue
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)
        except OSError:
            continue
        for entry in entries:
            if entry.name in SKIPPED or entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append((Path(entry.path), level + 1))


def find_checkpoints(roots: Roots) -> list[str]:
    """Checkpoint folders under the roots (the shipped models' own folder left out: they are
    listed by name), as the app displays them."""
    weights = WEIGHTS_DIR.resolve()
    found: list[str] = []
    for root in roots.folders:
        for folder in _walk(root, SEARCH_DEPTH):
            if folder == weights or weights in folder.parents:
                continue
            if is_difflab_checkpoint(folder) and not _fallback_beside_its_newer(folder):
                found.append(roots.display(folder))
                if len(found) >= MAX_LISTED:
                    return found
    return found


def _fallback_beside_its_newer(folder: Path) -> bool:
    """Whether `folder` is a run's NAME.prev/ with its NAME/ beside it: the copy kept to fall
    back on, which loading NAME/ reaches by itself when it must, so not listed as a model."""
    name = folder.name
    if not name.endswith(PREVIOUS_SUFFIX):
        return False
    return is_difflab_checkpoint(folder.with_name(name[: -len(PREVIOUS_SUFFIX)]))


def find_runs(roots: Roots) -> list[str]:
    """Training run folders (those with a metrics.jsonl) under the roots, the one written
    to last first."""
    found: list[tuple[float, str]] = []
    for root in roots.folders:
        for folder in _walk(root, SEARCH_DEPTH):
            metrics = folder / METRICS
            if metrics.is_file():
                found.append((-metrics.stat().st_mtime, roots.display(folder)))
                if len(found) >= MAX_LISTED:
                    break
    return [name for _, name in sorted(found)]


def model_choices(roots: Roots) -> list[str]:
    """What the model pickers offer: the shipped models by name, then checkpoints found."""
    return shipped_models() + find_checkpoints(roots)


def _stamp(folder: Path) -> float:
    """The newest modification time of the folder's files: changes when a run saves again."""
    times = [folder.stat().st_mtime]
    for entry in os.scandir(folder):
        if entry.is_file():
            times.append(entry.stat().st_mtime)
    return max(times)


class ModelStore:
    """Generators by checkpoint, loaded on first use, the `capacity` most recent kept."""

    def __init__(self, roots: Roots, capacity: int = 3, device: str | None = None):
        self.roots, self.capacity, self.device = roots, capacity, device
        # (generator, what its load warned of, its step) by (folder, newest file time)
        self._cache: OrderedDict[tuple[str, float],
                                 tuple[Generator, list[str], int | None]] = OrderedDict()
        self._lock = threading.Lock()

    def path(self, name: str) -> Path:
        """The checkpoint folder `name` means, if the app may open it (limits.Roots)."""
        return self.roots.checkpoint(name)

    def load(self, name: str) -> Generator:
        """The Generator of checkpoint `name` (a shipped model or a folder under a root),
        loaded as `difflab sample` loads it. What the load warned of (a damaged last/ passed
        over for last.prev/, say) is kept with it: `notes_for` gives it to every request that
        draws from it, not only to the one that loaded it."""
        path = self.path(name)
        key = (str(path.resolve()), _stamp(path))
        with self._lock:  # one load at a time: two requests for one model load it once
            entry = self._cache.get(key)
            if entry is None:
                with reading_checkpoint(path), collecting_warnings() as caught:
                    # a mistyped config.json: one line, as the CLI
                    gen = Generator.from_checkpoint(path, device=self.device)
                entry = self._cache[key] = (gen, list(caught), trained_steps(path))
                while len(self._cache) > self.capacity:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(key)
            return entry[0]

    def notes_for(self, gen: Generator) -> list[str]:
        """The warnings loading `gen` raised (see `load`)."""
        with self._lock:
            return next((list(notes) for g, notes, _ in self._cache.values() if g is gen), [])

    def step_for(self, gen: Generator) -> int | None:
        """The step `gen`'s checkpoint was saved at, where it says (state.json, or an
        export's record); a sampling-only load does not read it."""
        with self._lock:
            return next((step for g, _, step in self._cache.values() if g is gen), None)
