"""Run folders: what `difflab train` writes there, and the checks before it writes again.

A new run never silently replaces another. A folder that holds a run needs --resume (continue
it) or --overwrite (remove what difflab wrote there, after checking every piece is difflab's,
and the debris of a crashed save; every other file stays).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from difflab.checkpoints.store import (
    checkpoint_candidates,
    is_difflab_checkpoint,
    keep_foreign,
    remove_debris,
)
from difflab.cli.errors import CLIError
from difflab.ownership import written_by_difflab
from difflab.runs.report import COMMAND_HEADER
from difflab.training.distributed import launched_rank
from difflab.training.posthoc_snapshots import SNAPSHOT_DIR, SNAPSHOT_NAME

# What `difflab train` writes into a run folder (trainer.py, runs/report.py): what makes a
# folder a run that a new one must not silently replace, and all that --overwrite removes.
# NAME.prev/ is the checkpoint before NAME/, kept by save_checkpoint(keep_previous=True).
RUN_CHECKPOINTS = ("last", "best", "best_fid", "last.prev", "best.prev", "best_fid.prev")
RUN_FILES = (
    "metrics.jsonl",
    "config.json",
    "command.sh",
    "loss.png",
    "fid.png",
    "samples.png",
    "forward_process.png",
    "reverse_process.gif",
    "reconstructions.png",
)
RUN_SAMPLES = "samples"  # samples/step_0001000.png, ...
# RUN/posthoc_ema/step_00001000_sigma_0.050/, ...: post-hoc EMA snapshots (train.posthoc_ema)
_SAMPLE_GRID = re.compile(r"step_\d+\.png")


def _has_checkpoint(out: Path) -> bool:
    """Whether --resume has something to continue: last/, or what resume falls back to after
    a crash (last.prev/, best/, ...)."""
    return any(map(is_difflab_checkpoint, checkpoint_candidates(out / "last")))


def check_run_folder(out: Path, *, resume: bool, overwrite: bool
                     ) -> Callable[[], None] | None:
    """A new run never silently replaces another: a folder that holds what `difflab train`
    writes needs --resume (continue it) or --overwrite (remove that, keep everything else).
    Removes nothing itself: for --overwrite it returns the removal, for the caller to run
    once the new run has loaded its data and built its network, so that a new run that
    cannot start (a mistyped data.root) leaves the old one as it was."""
    if resume and overwrite:
        raise CLIError("--resume continues the run in --out, --overwrite replaces it: give one")
    if os.path.lexists(out) and not out.is_dir():
        raise CLIError(f"--out {out} is a file; give the folder to write the run into")
    if is_difflab_checkpoint(out):
        raise CLIError(
            f"--out {out} is a checkpoint folder; give the run folder that holds it "
            f"({out.parent}) to --resume, or a new folder"
        )
    if resume:
        if not _has_checkpoint(out):
            found = run_contents(out)
            if found:  # a user's files that share a run's names are not a stopped run
                _check_all_difflabs(out, found)
            why = (" (the run there stopped before its first checkpoint: --overwrite, not "
                   "--resume, starts it again)" if found else "")
            raise CLIError(f"--resume: no checkpoint at {out / 'last'} to continue{why}")
        return None
    found = run_contents(out)
    if not found:
        return None
    # before either branch: a new run would write over them, --overwrite would remove them
    whole_run = _check_all_difflabs(out, found)
    if not overwrite:
        shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
        if not _has_checkpoint(out):
            raise CLIError(
                f"--out {out} holds a run that stopped before its first checkpoint ({shown}): "
                "nothing to resume; --overwrite starts it again (difflab removes only what it "
                "wrote there), or give another --out"
            )
        raise CLIError(
            f"--out {out} already holds a run ({shown}); add --resume to continue it, "
            "--overwrite to replace it (difflab removes only what it wrote there), or give "
            "another --out"
        )
    if launched_rank() != 0:  # torchrun: rank 0 clears, the others train
        return None
    _check_removable(out, found)

    def remove_old_run() -> None:
        clear_run(out, found, whole_run)
        remove_debris(out)  # half-written checkpoints of a crashed run (gone writers' only)
        print(f"difflab: --overwrite: removed {', '.join(found)} from {out} (anything else "
              "there is left alone)")

    return remove_old_run


def _check_removable(out: Path, found: list[str]) -> None:
    """CLIError naming the first folder --overwrite could not empty (no write permission):
    checked before anything is removed, so that a refusal leaves the old run whole, and named
    whole (a removal that fails names only the file, relative to its folder)."""
    folders = [out, *(out / n.rstrip("/") for n in found if n.endswith("/"))]
    for folder in folders:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise CLIError(f"--overwrite: cannot remove what the old run wrote in {folder}: "
                           "permission denied (nothing was removed)")


def run_contents(out: Path) -> list[str]:
    """The names in `out` that `difflab train` writes (folders with a trailing /)."""
    if not out.is_dir():
        return []
    names = [f"{n}/" for n in (*RUN_CHECKPOINTS, RUN_SAMPLES, SNAPSHOT_DIR)
             if os.path.lexists(out / n)]
    return names + [n for n in RUN_FILES if os.path.lexists(out / n)]


def clear_run(out: Path, found: list[str], whole_run: bool) -> None:
    """Remove what an earlier run wrote in `out`: `found` (from run_contents), every piece of
    which `_check_all_difflabs` found to be difflab's and which told `whole_run`."""
    for name in found:
        path = out / name.rstrip("/")
        if name.rstrip("/") in RUN_CHECKPOINTS:
            keep_foreign(path, name.rstrip("/"))  # what a user put in it moves out, and stays
            shutil.rmtree(path)
        elif name == f"{SNAPSHOT_DIR}/":  # the snapshots only: anything else stays
            for snapshot in path.iterdir():
                if SNAPSHOT_NAME.fullmatch(snapshot.name):
                    shutil.rmtree(snapshot)
            remove_debris(path)
            with contextlib.suppress(OSError):
                path.rmdir()
        elif name == f"{RUN_SAMPLES}/":  # the grids only: a file of the user's stays
            for grid in path.iterdir():
                if _SAMPLE_GRID.fullmatch(grid.name) and _is_run_file(grid, whole_run):
                    grid.unlink()
            with contextlib.suppress(OSError):
                path.rmdir()  # only when nothing else was in it
        else:
            path.unlink()


def _holds_sample_grids(folder: Path) -> bool:
    """Whether `folder` is a run's samples/: empty (a run stopped before its first grid) or
    holding a step_NNNNNNN.png. A user's own samples/ holds only other files."""
    names = os.listdir(folder)
    return not names or any(_SAMPLE_GRID.fullmatch(n) for n in names)


def _check_all_difflabs(out: Path, found: list[str]) -> bool:
    """CLIError naming every one of `found` (names a run writes) that difflab did not write:
    a user's file or folder that shares a name with a run's is neither replaced nor removed,
    and all of them are said at once, not one per attempt. Returns whether `out` holds a
    whole run (`_is_whole_run`)."""
    whole_run = _is_whole_run(out)
    theirs = []
    for name in found:
        path = out / name.rstrip("/")
        if name.rstrip("/") in RUN_CHECKPOINTS:
            ours = not path.is_symlink() and is_difflab_checkpoint(path)
            what = "a difflab checkpoint"
        elif name == f"{RUN_SAMPLES}/":
            ours = not path.is_symlink() and path.is_dir() and _holds_sample_grids(path)
            what = "the folder of sample grids difflab writes"
        elif name == f"{SNAPSHOT_DIR}/":
            _check_snapshots(path)
            continue
        elif name == "config.json":
            ours = not path.is_symlink() and path.is_file() and is_run_config(path)
            what = "a run config difflab wrote"
        else:
            ours = not path.is_symlink() and path.is_file() and _is_run_file(path, whole_run)
            what = "a file difflab wrote"
        if not ours:
            theirs.append((path, what))
    if len(theirs) == 1:
        path, what = theirs[0]
        raise CLIError(f"{path} is not {what}, and a run writes that name, so difflab "
                       "leaves it alone: move it away or give another --out")
    if theirs:
        raise CLIError(f"{', '.join(p.name for p, _ in theirs)} in {out} are not difflab's, and "
                       "a run writes those names, so difflab leaves them alone: move them away "
                       "or give another --out")
    return whole_run


def _check_snapshots(path: Path) -> None:
    """CLIError unless every snapshot-named entry of RUN/posthoc_ema/ is difflab's checkpoint."""
    if path.is_symlink() or not path.is_dir():
        raise CLIError(f"{path} is not the folder of post-hoc EMA snapshots difflab writes, "
                       "so difflab leaves it alone: move it away or give another --out")
    for snapshot in path.iterdir():
        if SNAPSHOT_NAME.fullmatch(snapshot.name) and (
            snapshot.is_symlink() or not is_difflab_checkpoint(snapshot)
        ):
            raise CLIError(f"{snapshot} is not a difflab checkpoint, so difflab leaves it "
                           "alone: move it away or give another --out")


def _is_run_file(path: Path, whole_run: bool) -> bool:
    """Whether `path` (one of RUN_FILES) is what difflab wrote: pictures carry difflab's mark
    (difflab.ownership), command.sh its header, metrics.jsonl JSON rows of steps. A picture
    without the mark (written before difflab marked them) counts when it is a picture and
    the folder holds a `whole_run` of such a difflab (`_is_whole_run`)."""
    if path.suffix in (".png", ".gif"):
        return written_by_difflab(path) or (whole_run and _is_picture(path))
    try:
        with path.open(encoding="utf-8") as f:
            head = f.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    if path.name == "command.sh":
        return head.startswith(COMMAND_HEADER)
    if path.name == "metrics.jsonl":
        if not head:  # created, then stopped before its first row
            return True
        try:
            row = json.loads(head.split("\n", 1)[0])
        except ValueError:
            return False
        return isinstance(row, dict) and "step" in row
    return False  # no other name of RUN_FILES comes here (config.json: is_run_config)


def _is_whole_run(out: Path) -> bool:
    """A difflab checkpoint in last/ and the run's config.json, from a difflab that did not
    yet mark its pictures: only there are pictures without the mark trusted as the run's."""
    return (is_difflab_checkpoint(out / "last") and is_run_config(out / "config.json")
            and not _marks_its_pictures(out))


def _marks_its_pictures(out: Path) -> bool:
    """Whether the run in `out` was written by a difflab that marks its pictures: its last
    checkpoint's state says so (`marks_pictures`), or one of its pictures carries the mark.
    A picture without the mark beside such a run is a user's, however much it looks like
    the run's own."""
    try:
        state = json.loads((out / "last" / "state.json").read_text())
    except (OSError, ValueError):
        state = None
    if isinstance(state, dict) and state.get("marks_pictures") is True:
        return True
    pictures = [out / n for n in RUN_FILES if n.endswith((".png", ".gif"))]
    samples = out / RUN_SAMPLES
    if samples.is_dir() and not samples.is_symlink():
        pictures += [p for p in samples.iterdir() if _SAMPLE_GRID.fullmatch(p.name)]
    return any(p.is_file() and not p.is_symlink() and written_by_difflab(p) for p in pictures)


def _is_picture(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            img.verify()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False
    return True


def is_run_config(path: Path) -> bool:
    """Whether `path` is the config.json `difflab train` writes beside a run's checkpoints."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and {"data", "model", "train"} <= set(config)

