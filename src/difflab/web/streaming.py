"""Run a sampling job on a worker thread and stream its progress to the page.

A sampler reports each step through its callback, on the thread that samples; the page wants
a picture of the latest step every fraction of a second, from the request's own thread (a
gradio generator function that yields). So the job runs on a worker, its callback puts
updates on a queue, and the request thread yields the newest of them at most every
`interval_s` (a browser cannot show 200 pictures a second, and each costs a PNG).

When the page goes away (the browser closes, gradio cancels the request) the request thread
stops iterating: the worker's next callback then raises `Cancelled`, so the job stops within
one step, and the request waits for it, so that its place in the queue (app.py's
concurrency limit) is held exactly as long as the work runs.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar

T = TypeVar("T")
_END = object()


class Cancelled(Exception):
    """The request that started a job went away; the job stops at its next step."""


def run_streaming(
    work: Callable[[Callable[[Any], None]], T], interval_s: float = 0.2
) -> Generator[Any, None, T]:
    """Run `work(report)` on a worker thread; yield what it passes to `report` (the newest
    only, at most every `interval_s`); return its result or raise its exception.

        result = yield from run_streaming(lambda report: job(callback=report))
    """
    updates: queue.Queue = queue.Queue()
    cancel = threading.Event()
    outcome: dict[str, Any] = {}

    def report(update: Any) -> None:
        if cancel.is_set():
            raise Cancelled("the request was cancelled")
        updates.put(update)

    def target() -> None:
        try:
            outcome["value"] = work(report)
        except BaseException as e:  # handed to the request thread, which raises it
            outcome["error"] = e
        finally:
            updates.put(_END)

    worker = threading.Thread(target=target, name="difflab-web-job", daemon=True)
    worker.start()
    try:
        shown = 0.0
        done = False
        while not done:
            update = updates.get()
            while update is not _END:  # skip to the newest update waiting
                try:
                    newer = updates.get_nowait()
                except queue.Empty:
                    break
                if newer is _END:
                    done = True
                    break
                update = newer
            if update is _END:
                break
            if time.monotonic() - shown >= interval_s:
                shown = time.monotonic()
                yield update
    finally:
        cancel.set()
        worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
