"""Failures and warnings as the page shows them.

A request that fails must say why in one line and leave the app serving the next one: the
line `difflab` prints for the same mistake, or, for a bug, that it is one (difflab.failures:
the same rules as the command line). Warnings the library raises while a
request runs (a prompt truncated, a checkpoint that fell back to its previous copy, ...) are
shown beside that request's images.

Python keeps one warnings configuration per process, and a server runs several requests on
threads at once, so `warnings.catch_warnings` (which swaps that global state) cannot tell
whose warning is whose. Instead one hook, installed once, hands each warning to the list of
the thread that raised it (`collecting_warnings`), and anything else to the usual output.
"""

from __future__ import annotations

import sys
import threading
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from difflab.failures import is_user_error, one_line

_local = threading.local()
_install_lock = threading.Lock()
_previous_showwarning = None


def describe_failure(e: BaseException) -> str:
    """One line for the page: the user's mistake, else an internal error (whose traceback
    goes to the server's stderr)."""
    if is_user_error(e):
        return one_line(e)
    traceback.print_exception(e)
    return (
        f"internal error, {type(e).__name__}: {one_line(e)} (a bug in difflab: the "
        "server's log has the traceback; please report it)"
    )


def page_error(gr: Any, e: Exception) -> Exception:
    """The gr.Error the page shows for `e`. gradio would print its traceback to the log for
    every refused request; describe_failure prints one for bugs only, and a user's mistake
    gets one line there."""
    line = describe_failure(e)
    if is_user_error(e):
        print(f"difflab serve: refused a request: {line}", file=sys.stderr, flush=True)
    return gr.Error(line, duration=None, print_exception=False)


def _route(message, category, filename, lineno, file=None, line=None) -> None:
    sink = getattr(_local, "sink", None)
    if sink is not None:
        text = str(message)
        if text not in sink:
            sink.append(text)
    elif _previous_showwarning is not None:
        _previous_showwarning(message, category, filename, lineno, file, line)


def install_warning_router() -> None:
    """Route warnings to the collecting thread (idempotent). Also shows difflab's warnings
    every time, not once per process: each request's reader needs to see its own."""
    global _previous_showwarning
    with _install_lock:
        if warnings.showwarning is _route:
            return
        _previous_showwarning = warnings.showwarning
        warnings.showwarning = _route
        warnings.filterwarnings("always", module=r"difflab(\.|$)")


@contextmanager
def collecting_warnings() -> Iterator[list[str]]:
    """The warnings this thread raises inside the block, as one-line texts (after
    `install_warning_router`; without it, they go to the usual output)."""
    sink: list[str] = []
    outer = getattr(_local, "sink", None)
    _local.sink = sink
    try:
        yield sink
    finally:
        _local.sink = outer
