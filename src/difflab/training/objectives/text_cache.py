"""The disk cache of encoded caption sets: default_cache_dir()/text_states/KEY.pt.

The ~39,000 captions of 20,000 shapes images take 10-20 CPU-minutes through MiniLM on a busy
2-core machine, and a resumed or repeated run needs the same states, so large sets are kept.
They are large too: every word-piece state of every caption in fp32, 0.3-5 GB an entry. A
laptop's disk is not ours to fill, so the cache is bounded:

- at most $DIFFLAB_TEXT_CACHE_GB gigabytes (default 8) in all; writing an entry first removes
  the least recently used ones (a hit counts as a use), and only files the cache itself wrote;
- an entry is not kept when it would leave less than 2 GiB free on the disk, or when writing
  it fails (a full disk, a read-only cache): the run goes on with the states in memory, and
  says why they were not kept.

One process encodes a set at a time (a POSIX file lock per entry), so that a second run
started beside the first, or the other ranks of a torchrun, waits and reads its result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no POSIX file locks
    fcntl = None

import torch

from difflab.data import default_cache_dir

# Caption sets at least this large are kept on disk after encoding; smaller ones encode in
# seconds, cheaper than a file.
CACHE_MIN_TEXTS = 4096
LIMIT_ENV = "DIFFLAB_TEXT_CACHE_GB"
DEFAULT_LIMIT_GB = 8.0
KEEP_FREE_BYTES = 2 << 30  # a cache never takes a disk's last 2 GiB
GB = 1e9

_ENTRY = re.compile(r"[0-9a-f]{32}\.pt")
_TEMP = re.compile(r"\.[0-9a-f]{32}\.pt\.(\d+)\.tmp")


def cache_file(encoder: Any, texts: list[str]) -> Path:
    """The entry of `texts` through `encoder`: keyed by the encoder's spec and every text."""
    key = hashlib.sha256(json.dumps([encoder.spec(), texts]).encode()).hexdigest()[:32]
    return default_cache_dir() / "text_states" / f"{key}.pt"


def cache_limit_bytes() -> int:
    """$DIFFLAB_TEXT_CACHE_GB in bytes (default 8 GB; 0 keeps nothing; inf: no limit but the
    disk's)."""
    raw = os.environ.get(LIMIT_ENV, "").strip()
    if not raw:
        return int(DEFAULT_LIMIT_GB * GB)
    try:
        gigabytes = float(raw)
    except ValueError:
        gigabytes = -1.0
    if not gigabytes >= 0:  # also refuses nan
        raise ValueError(
            f"{LIMIT_ENV}={raw!r} is not a size: give the text-state cache's limit in "
            f"gigabytes, a number >= 0 (default {DEFAULT_LIMIT_GB:g}; 0 keeps nothing)"
        )
    return sys.maxsize if math.isinf(gigabytes) else int(gigabytes * GB)


def read_cache(cache: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The entry's (tokens, mask), or None when it is missing or unreadable (it is then
    encoded again and rewritten). A hit marks the entry as recently used."""
    if not cache.is_file():
        return None
    try:
        saved = torch.load(cache, weights_only=True)
        found = saved["tokens"], saved["mask"]
    except (OSError, RuntimeError, KeyError, pickle.UnpicklingError):
        return None
    with contextlib.suppress(OSError):  # a read-only cache still serves its entries
        os.utime(cache)
    return found


@contextlib.contextmanager
def encoding_alone(cache: Path, progress: bool) -> Iterator[None]:
    """Hold the entry's lock while encoding (module docstring). Without fcntl (Windows) each
    run encodes for itself."""
    if fcntl is None:
        yield
        return
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.with_name(f".{cache.stem}.lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                print("difflab: another difflab process is encoding the same captions; "
                      "waiting for its result", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_cache(cache: Path, tokens: torch.Tensor, mask: torch.Tensor,
                progress: bool) -> bool:
    """Keep one entry within the cache's bounds (module docstring); True when it was kept.
    Written to a temporary file and renamed: a run killed while writing leaves no half entry.
    Call it holding the entry's lock."""
    size = tokens.numel() * tokens.element_size() + mask.numel() * mask.element_size()
    limit = cache_limit_bytes()
    say = _teller(progress)
    if size > limit:
        say(f"the encoded captions ({size / GB:.1f} GB) are not kept on disk: the text-state "
            f"cache's limit is {limit / GB:.1f} GB (${LIMIT_ENV})")
        return False
    folder = cache.parent
    folder.mkdir(parents=True, exist_ok=True)
    for path in make_room(folder, size, limit, keep=cache):
        say(f"removed {path.name} from the text-state cache ({LIMIT_ENV} "
            f"{limit / GB:g} GB; least recently used first)")
    free = shutil.disk_usage(folder).free
    if free - size < KEEP_FREE_BYTES:
        say(f"the encoded captions ({size / GB:.1f} GB) are not kept on disk: {folder} has "
            f"{free / GB:.1f} GB free, and the cache leaves the disk at least "
            f"{KEEP_FREE_BYTES / GB:.1f} GB")
        return False
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    try:
        torch.save({"tokens": tokens, "mask": mask}, tmp)
        tmp.replace(cache)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        say(f"the encoded captions are not kept on disk: writing {tmp} failed "
            f"({getattr(e, 'strerror', None) or str(e).splitlines()[0]})")
        return False
    return True


def make_room(folder: Path, size: int, limit: int, keep: Path) -> list[Path]:
    """Remove the cache's own files, least recently used first, until `size` more bytes fit
    under `limit`; the removed paths. Files the cache did not name itself are never touched,
    nor `keep`; a temporary file only when it was abandoned (:func:`_abandoned`)."""
    entries, total = [], 0
    for path in folder.iterdir():
        temp = _TEMP.fullmatch(path.name)
        if temp and _abandoned(path, int(temp.group(1))):
            entries.append(path)  # left by a killed run: first to go
        elif _ENTRY.fullmatch(path.name) and path != keep:
            entries.append(path)
        else:
            continue
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    stale = [p for p in entries if _TEMP.fullmatch(p.name)]
    rest = sorted((p for p in entries if p not in stale), key=_last_used)
    removed = []
    for path in stale + rest:
        if total + size <= limit and path not in stale:
            break
        with contextlib.suppress(OSError):
            total -= path.stat().st_size
            path.unlink()
            removed.append(path)
    return removed


def _last_used(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


# A temporary file untouched this long, whose writer is not running here, was abandoned.
STALE_TEMP_SECONDS = 3600


def _abandoned(path: Path, pid: int) -> bool:
    """Whether a temporary file was left by a run that is gone: unchanged for
    STALE_TEMP_SECONDS (a process on another host sharing the folder, which no probe here
    can see, may be writing a fresh one) and its writer no process of this machine (not
    probed on Windows, where os.kill is no probe)."""
    if time.time() - _last_used(path) < STALE_TEMP_SECONDS:
        return False
    return os.name == "nt" or not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _teller(progress: bool):
    def say(line: str) -> None:
        if progress:
            print(f"difflab: {line}", flush=True)
    return say
