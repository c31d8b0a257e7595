"""Progress bars for sampling and likelihood runs that count the network's forward calls."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from tqdm import tqdm


class NetworkProgress:
    """A tqdm bar on stderr that also counts a network's forward calls, the cost of sampling
    or of a likelihood bound: "network evaluations" in the bar's postfix.

    The count comes from a forward pre-hook on `net` and on each of `others` (autoguidance's
    guide network; removed by `close`), so a guided step counts two and an adaptive ODE
    solver's rejected steps count too. The count is redrawn at most every `REDRAW_S` seconds
    between the bar's own updates, so that one long unit of work (a batch of a 1,000-term
    bound) is not a silent minute.
    """

    REDRAW_S = 0.5

    def __init__(self, net: torch.nn.Module, desc: str, total: int | None, unit: str,
                 others: tuple[torch.nn.Module, ...] = ()):
        self.nfe = 0
        self.bar = tqdm(desc=desc, total=total, unit=unit, file=sys.stderr, dynamic_ncols=True)
        self._drawn = time.monotonic()
        self._hooks = [m.register_forward_pre_hook(self._count) for m in (net, *others)]

    def _count(self, module: torch.nn.Module, args: Any) -> None:
        self.nfe += 1
        self.bar.set_postfix_str(f"{self.nfe:,} network evaluations", refresh=False)
        if time.monotonic() - self._drawn > self.REDRAW_S:
            self.bar.refresh()
            self._drawn = time.monotonic()

    def update(self, k: int = 1) -> None:
        self.bar.update(k)

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self.bar.close()


class SamplingProgress(NetworkProgress):
    """The progress of a sampling run: one bar over the sampler's steps of every batch, which
    names the batch and counts the network evaluations (:class:`NetworkProgress`)."""

    def __init__(self, net: torch.nn.Module, n: int, batch_size: int, steps: int | None = None,
                 others: tuple[torch.nn.Module, ...] = ()):
        """steps: the sampler's steps per batch, if known (the first callback's `total`
        corrects it: an adaptive ODE solver knows none); others: more networks whose calls
        count (autoguidance's guide)."""
        self.n, self.batches, self.batch, self._sized = n, -(-n // batch_size), 0, False
        total = steps * self.batches if steps else None
        super().__init__(net, self._desc(1, min(n, batch_size)), total, "step", others)

    def _desc(self, k: int, b: int) -> str:
        images = f"{b} image" + ("s" if b != 1 else "")
        if self.batches == 1:
            return f"sampling {images}"
        return f"sampling batch {k}/{self.batches} ({images})"

    def next_batch(self, b: int) -> None:
        self.batch += 1
        self.bar.set_description(self._desc(self.batch, b), refresh=False)

    def step(self, info: dict) -> None:
        """A sampler callback: one step done (its `total` sizes the bar on the first call)."""
        if not self._sized:
            total = info.get("total")
            self.bar.total = int(total) * self.batches if total else None
            self._sized = True
        self.update(1)

    def wrap(self, callback: Callable[[dict], None] | None) -> Callable[[dict], None]:
        """A callback that calls `callback` (if any), then counts the step."""
        def both(info: dict) -> None:
            if callback is not None:
                callback(info)
            self.step(info)

        return both
