"""Ctrl-C during training: finish the step, save a checkpoint, stop.

Python's default turns Ctrl-C into a KeyboardInterrupt wherever the program is, which can be
between two parameters' optimizer updates; a run stopped that way keeps only what its last
periodic checkpoint saved (nothing at all before the first, 1,000 steps into the default
preset). So while a run trains, the first Ctrl-C only asks it to stop: the loop finishes the
step, writes a checkpoint that --resume continues from exactly, and returns. A second Ctrl-C
stops at once, as before.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from tqdm import tqdm

ASKED = ("difflab: Ctrl-C: stopping after this step and saving a checkpoint "
         "(Ctrl-C again stops at once, without one)")


class StopOnCtrlC:
    """For the training loop, between install() and restore(): `requested` turns True at the
    first Ctrl-C.

    Only a single-process run in the main thread, with Python's own Ctrl-C handling, is
    changed: ranks of a distributed run would have to agree on the step to stop at, and a
    program that embeds difflab with its own SIGINT handler keeps it."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.requested = False
        self._previous = None

    def _ask(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(ASKED)

    def install(self) -> StopOnCtrlC:
        """Take over Ctrl-C (where `enabled` and Python's own handling is in place)."""
        if (self.enabled and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._ask)
        return self

    def restore(self) -> None:
        """Give Ctrl-C back to what handled it before."""
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
