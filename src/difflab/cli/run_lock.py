"""One trainer per run folder.

Two `difflab train` processes on one --out (a second `--resume` while the first still runs, or
a second `--overwrite`) would write the same checkpoints and the same metrics.jsonl, each
cutting the log back to its own last checkpoint under the other, and --overwrite would clear
a run that is still training. So `train` holds RUN/.difflab-lock for as long as it runs, and a
second trainer is refused in one line that names the first.

The lock is POSIX `flock`, which the kernel drops when its process dies however it dies: a
killed run never leaves a stale lock for the next one to trip on. Under torchrun only rank 0
takes it; the ranks of one run share the folder by design. Without fcntl (Windows) nothing
is locked.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from difflab.cli.errors import CLIError

LOCK_FILE = ".difflab-lock"


@contextlib.contextmanager
def run_folder_lock(out: Path) -> Iterator[None]:
    """Hold `out` for this trainer (see the module's docstring); CLIError if another holds it.
    Folders this call had to create, if they hold nothing else when it ends (a command
    refused before training), are removed again."""
    try:
        import fcntl
    except ImportError:  # Windows
        fcntl = None
    if fcntl is None or int(os.environ.get("RANK", "0")) != 0 or (
            os.path.lexists(out) and not out.is_dir()):  # a file: check_run_folder says so
        yield
        return
    created = [d for d in (out, *out.parents) if not d.exists()]  # innermost first
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_FILE
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "r+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = f.read(200).strip() or "another process"
            raise CLIError(
                f"--out {out} is being trained by {holder}; wait for it to end or stop it "
                "(Ctrl-C saves a checkpoint), or give another --out"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"difflab train (PID {os.getpid()} on {socket.gethostname()})\n")
        f.flush()
        try:
            yield
        finally:
            if created and [p.name for p in out.iterdir()] == [LOCK_FILE]:
                lock.unlink()
                for folder in created:  # out, then the parents made for it, while empty
                    with contextlib.suppress(OSError):
                        folder.rmdir()
            fcntl.flock(f, fcntl.LOCK_UN)
