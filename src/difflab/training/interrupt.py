"""Ctrl-C (or SIGTERM) during training: finish the step, save a checkpoint, stop.

Python's default turns Ctrl-C into a KeyboardInterrupt wherever the program is, which can be
between two parameters' optimizer updates; a run stopped that way keeps only what its last
periodic checkpoint saved (nothing at all before the first, 1,000 steps into the default
preset). So while a run trains, the first Ctrl-C only asks it to stop: the loop finishes the
step, writes a checkpoint that --resume continues from exactly, and returns. A second Ctrl-C
stops at once, as before.

SIGTERM (`kill`, `timeout`, `docker stop`, a batch scheduler's notice before its SIGKILL) asks
the same as a first Ctrl-C; more of it changes nothing, as the sender's SIGKILL is what stops
at once. Under torchrun every rank gets the terminal's Ctrl-C, and torchrun's agent sends each
rank the signal once more as it shuts down (then kills them 30 s later): there a repeated
signal is not a second Ctrl-C either. The ranks agree on the step to stop at in the training
loop (Trainer.train).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from tqdm import tqdm

ASKED = ("difflab: Ctrl-C: stopping after this step and saving a checkpoint "
         "(Ctrl-C again stops at once, without one)")
ASKED_TERM = "difflab: SIGTERM: stopping after this step and saving a checkpoint"
ASKED_DISTRIBUTED = ("difflab: stopping every rank after this step and saving a checkpoint "
                     "(torchrun kills the ranks 30 s after its Ctrl-C)")


class StopOnCtrlC:
    """For the training loop, between install() and restore(): `requested` turns True at the
    first Ctrl-C.

    Only a run in the main thread is changed, and only the signals whose handling is
    Python's own: a program that embeds difflab with its own SIGINT or SIGTERM handler keeps
    it. With `distributed` (a rank of a torchrun) a repeated signal does not stop at once,
    and only `announce` (rank 0) says so. `signal` is the number of the first signal."""

    def __init__(self, enabled: bool = True, distributed: bool = False, announce: bool = True):
        self.enabled = enabled
        self.distributed = distributed
        self.announce = announce
        self.requested = False
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def _ask(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            # torchrun's own copy of the signal, or a scheduler's repeated notice: their
            # SIGKILL to come is what stops at once; only a user's second Ctrl-C does here
            if self.distributed or signum != signal.SIGINT:
                return
            raise KeyboardInterrupt
        self.requested, self.signal = True, signum
        if self.announce:
            tqdm.write(ASKED_DISTRIBUTED if self.distributed
                       else ASKED if signum == signal.SIGINT else ASKED_TERM)

    def install(self) -> StopOnCtrlC:
        """Take over Ctrl-C (where `enabled` and Python's own handling is in place)."""
        if not self.enabled or threading.current_thread() is not threading.main_thread():
            return self
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._ask)
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._ask)
        return self

    def restore(self) -> None:
        """Give the signals back to what handled them before."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
