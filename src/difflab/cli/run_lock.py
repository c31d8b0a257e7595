"""One trainer per run folder.

Two `difflab train` processes on one --out (a second `--resume` while the first still runs, or
a second `--overwrite`) would write the same checkpoints and the same metrics.jsonl, each
cutting the log back to its own last checkpoint under the other, and --overwrite would clear
a run that is still training. So `train` holds a lock on the run folder itself for as long as
it runs, and a second trainer is refused in one line before it touches anything.

The lock is POSIX `flock` on the folder's own descriptor: no file is written into a folder
that may be the user's, and the kernel drops the lock when its process dies however it dies,
so a killed run never leaves a stale lock for the next one to trip on. Under torchrun only
rank 0 takes it; the ranks of one run share the folder by design. Without fcntl (Windows)
nothing is locked.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from difflab.cli.errors import CLIError
from difflab.training.distributed import launched_rank


@contextlib.contextmanager
def run_folder_lock(out: Path) -> Iterator[None]:
    """Hold `out` for this trainer (see the module's docstring); CLIError if another holds it.
    Folders this call had to create, if still empty when it ends (a command refused before
    training), are removed again."""
    try:
        import fcntl
    except ImportError:  # Windows
        fcntl = None
    if fcntl is None or launched_rank() != 0 or (
            os.path.lexists(out) and not out.is_dir()):  # a file: check_run_folder says so
        yield
        return
    created = [d for d in (out, *out.parents) if not d.exists()]  # innermost first
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as e:  # no permission, a read-only disk, a path through a file
        raise CLIError(f"--out {out}: cannot use it as the run's folder "
                       f"({e.strerror or e})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise CLIError(
                f"--out {out} is being trained by another difflab train right now; wait for "
                "it to end or stop it (Ctrl-C saves a checkpoint), or give another --out"
            ) from None
        try:
            yield
        finally:
            for folder in created:  # out, then the parents made for it, while empty
                with contextlib.suppress(OSError):
                    folder.rmdir()
    finally:
        os.close(fd)  # lets go of the lock
