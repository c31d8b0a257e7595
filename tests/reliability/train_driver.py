"""A tiny digits8 run in its own process, for the kill -9 tests: resumes when OUT has a
checkpoint, prints "ready" when training starts, trains to STEPS.

With DIFFLAB_PAUSE_AT_OP=J it announces the J-th filesystem operation (mkdir, fsync, replace,
rename, rmtree) after training starts, which are those of checkpoint writing, "paused J", and
waits there to be killed: the kill then lands exactly between operations J-1 and J. With
DIFFLAB_PAUSE_AT_OP=NAME:J it counts only the operations called NAME (replace:3 is the third
rename of folders, the one that makes a new checkpoint last/ after last/ became last.prev/)."""

import os
import shutil
import sys
import time
from pathlib import Path

# Run as a script: its own folder (reliability_helpers) and tests/ (tiny_run) on the path.
sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]

from reliability_helpers import trainer  # noqa: E402

from difflab.checkpoints import store as ckpt_io  # noqa: E402

COUNTING = False  # set when training starts


def pause_at(spec: str) -> None:
    only, _, op = spec.rpartition(":")
    count = 0

    def wrap(name, fn):
        def counted(*args, **kwargs):
            nonlocal count
            count += COUNTING and only in ("", name)
            if COUNTING and count == int(op):
                print(f"paused {spec}", flush=True)
                time.sleep(120)
            return fn(*args, **kwargs)

        return counted

    for name in ("mkdir", "fsync", "replace", "rename"):
        setattr(os, name, wrap(name, getattr(os, name)))
    shutil.rmtree = wrap("rmtree", shutil.rmtree)


def main() -> None:
    global COUNTING
    out, steps = Path(sys.argv[1]), int(sys.argv[2])
    if os.environ.get("DIFFLAB_PAUSE_AT_OP"):
        pause_at(os.environ["DIFFLAB_PAUSE_AT_OP"])
    tr = trainer(out, steps)
    if any(p.is_dir() for p in ckpt_io.checkpoint_candidates(out / "last")):
        tr.resume()
    print(f"ready {tr.step}", flush=True)
    COUNTING = True
    tr.train()
    print(f"done {tr.step}", flush=True)


if __name__ == "__main__":
    main()
