"""metrics.jsonl: the run's log, one JSON row per log window, FID evaluation and health check.

Rows are flushed as they are written, so a crash loses at most the row being written. A
checkpoint records the log's length in bytes (made durable first); a resumed run cuts the log
back to it, so that it neither repeats nor misses a row of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm


class MetricsLog:
    """The append-only metrics.jsonl of a run folder (written by the main rank only)."""

    def __init__(self, path: Path):
        self.path = path
        self._file: IO[str] | None = None

    def open(self, append: bool) -> None:
        """Start writing: a run that starts at step 0 starts its log anew; a resumed one
        appends to the log that `rewind` cut back to its checkpoint."""
        self._file = open(self.path, "a" if append else "w")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def write(self, row: dict[str, Any]) -> None:
        """One row, flushed; appended to the file whether or not `open` was called."""
        if self._file is not None:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        else:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def durable_size(self) -> int | None:
        """The log's length in bytes, made durable first: the state a resume rewinds it to
        (rows written after a checkpoint are dropped then). None without a log."""
        if not self.path.is_file():
            return None
        if self._file is not None:
            self._file.flush()
        with open(self.path, "rb") as f:
            os.fsync(f.fileno())
            return os.fstat(f.fileno()).st_size

    def rewind(self, checkpoint: Path, size: int | None, step: int) -> None:
        """Drop the rows an interrupted run wrote after `checkpoint`, which the resumed run
        writes again: to the byte length recorded with the checkpoint, or (older checkpoints,
        or one from another run folder) to the rows up to its `step`."""
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if checkpoint.resolve().parent != self.path.parent.resolve():
            size = None  # a byte length recorded for another run's log means nothing here
        if size is not None and size <= len(data) and (size == 0 or data[size - 1] == 10):
            os.truncate(self.path, size)  # ends a whole row ("\n"): a cut row is past it
            return
        if size is not None and size > len(data):
            tqdm.write(f"difflab: warning: {self.path} is shorter than when {checkpoint} was "
                       "saved; rows before the checkpoint are missing from it")
        kept = [row for row in data.splitlines(keepends=True) if _row_step(row, step)]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(b"".join(kept))
        os.replace(tmp, self.path)


def _row_step(row: bytes, last: int) -> bool:
    """Whether a metrics.jsonl row is a whole row of a step up to `last`."""
    try:
        step = json.loads(row).get("step")
    except (ValueError, AttributeError):
        return False
    return isinstance(step, int) and step <= last
