"""What a command says when something fails: CLIError, and the contexts that name the file.

A command raises CLIError for a mistake in what it was asked; main() prints it as one
`difflab: error: ...` line with exit status 2. The libraries below raise what they know, which
is not always where: a failed write() knows only its file descriptor, a hand-edited
config.json fails as a bare KeyError. `writing` and `reading_checkpoint` add the file's name,
and `removed_on_failure` keeps a half-written result from being taken for one.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path

from difflab import failures


class CLIError(Exception):
    """A mistake in what the user asked for: printed as one line, exit status 2."""


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Name `path` in an OSError that names no file: a failed write() knows only its file
    descriptor, and "No space left on device" should say where."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno not in (None, errno.EPIPE):
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


@contextlib.contextmanager
def removed_on_failure(*paths: Path) -> Iterator[None]:
    """Delete these (new) files when the block fails or is interrupted: a half-written
    sample file left behind would look like a result."""
    try:
        yield
    except BaseException:
        for path in paths:
            with contextlib.suppress(OSError):
                path.unlink()
        raise


@contextlib.contextmanager
def reading_checkpoint(path: str | Path) -> Iterator[None]:
    """difflab.failures.reading_checkpoint, failing as a CLIError (one line, exit status 2)."""
    with failures.reading_checkpoint(path, CLIError):
        yield
