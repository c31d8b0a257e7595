"""When something fails: whether it is the user's to fix, and the one line that says so.

The command line (`difflab: error: ...`, exit status 2) and the web app (the line beside the
request's images) follow the same rules: a bad value, file or device, a full disk or too little
memory is the user's to fix and is said in one line that names what and, for files, which one;
anything else is a bug in difflab and is reported as one. A checkpoint whose config.json lacks
a key or mistypes a value (edited by hand, written by another version) is named instead of
failing as a bare KeyError deep in the loader (`reading_checkpoint`).
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from difflab.config import ConfigError


def is_user_error(e: BaseException) -> bool:
    """Whether an exception is a failure the user can cause and fix (a bad value, file or
    device, a full disk, too little memory, a missing extra); anything else is a bug."""
    if isinstance(e, NotImplementedError | RecursionError):
        return False  # RuntimeErrors that mean difflab is at fault
    if isinstance(e, RuntimeError):
        return bool(str(e).strip())
    return isinstance(
        e,
        ValueError | OSError | MemoryError | EOFError | ImportError  # a missing extra
        | Image.DecompressionBombError,
    )


# The longest error line said: difflab's own messages are far shorter; a third party's (a C++
# compiler's report through torch.compile) can run to 100 kB.
MAX_LINE = 1000


def one_line(e: BaseException, fewer: str = "") -> str:
    """The exception as one line: what failed and, for files, which one. `fewer`: how to ask
    for fewer images where that is the fix for running out of memory (e.g. the flags)."""
    if isinstance(e, OSError) and e.strerror:  # "[Errno 28] ..." -> what and which file
        where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
        text = f"{e.strerror}: {where}" if where else e.strerror
        if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            text += (" (the disk is full or a file-size limit was reached: free some space, "
                     "or write somewhere else)")
        return text
    if isinstance(e, MemoryError):
        return ("out of memory" + (f" ({e})" if str(e) else "")
                + ": ask for fewer or smaller images" + (f" ({fewer})" if fewer else ""))
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = " ".join(lines) or type(e).__name__  # a multi-line message, on one line
    if len(text) > MAX_LINE:  # a compiler's whole command line and warnings (100 kB seen)
        text = (f"{text[:MAX_LINE]}... ({len(text) - MAX_LINE:,} more characters; --debug "
                "shows them all)")
    return text


@contextlib.contextmanager
def reading_checkpoint(path: str | Path, error: type[Exception] = ValueError) -> Iterator[None]:
    """Name the checkpoint when its config.json lacks a key or holds a value of the wrong
    type: the code reading it would otherwise fail with a bare KeyError or TypeError. The
    failure is raised as `error` (the command line's CLIError, or a ValueError)."""
    try:
        yield
    except ConfigError as e:  # its [run] settings, checked as a config file's are
        raise error(f"checkpoint {str(path)!r}: config.json: {e}") from e
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise error(
            f"cannot read checkpoint {str(path)!r}: its config.json lacks or mistypes what "
            f"difflab needs ({type(e).__name__}: {e}); was it written by this difflab?"
        ) from e
