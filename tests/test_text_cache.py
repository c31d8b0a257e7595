"""The disk cache of encoded caption sets stays within its bounds and never touches what it
did not write (difflab.training.objectives.text_cache)."""

import os
import subprocess
import sys

import pytest
import torch

from difflab.training.objectives import text_cache

KEY = "0123456789abcdef" * 2


def entry(folder, index, size, used):
    """A cache entry of `size` bytes, last used at time `used`."""
    path = folder / f"{index:032x}.pt"
    path.write_bytes(b"\0" * size)
    os.utime(path, (used, used))
    return path


def states(n_bytes):
    """Tokens and mask whose raw size is `n_bytes` plus 4 bytes of mask."""
    return torch.zeros(n_bytes // 4), torch.zeros(4, dtype=torch.bool)


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(text_cache, "KEEP_FREE_BYTES", 0)
    path = tmp_path / "text_states"
    path.mkdir()
    return path


def test_writing_an_entry_removes_the_least_recently_used_until_it_fits(folder, monkeypatch,
                                                                        capsys):
    monkeypatch.setenv(text_cache.LIMIT_ENV, "0.000010")  # 10,000 bytes
    oldest, middle, newest = (entry(folder, i, 2900, 1000 + i) for i in range(3))
    theirs = folder / "notes.txt"  # not the cache's: never removed, though it is old
    theirs.write_bytes(b"\0" * 3000)
    os.utime(theirs, (1, 1))
    killed = folder / f".{KEY}.pt.{dead_pid()}.tmp"  # a killed run's half-written entry
    killed.write_bytes(b"\0" * 10)
    os.utime(killed, (1, 1))
    writing = folder / f".{'e' * 32}.pt.{os.getppid()}.tmp"  # a live writer's, another entry
    writing.write_bytes(b"\0" * 10)
    os.utime(writing, (1, 1))
    # a fresh one of no process here: another host sharing the folder may be writing it
    elsewhere = folder / f".{'f' * 32}.pt.{dead_pid()}.tmp"
    elsewhere.write_bytes(b"\0" * 10)
    model = folder / "model.pt"  # a .pt the cache did not name: never removed
    model.write_bytes(b"\0" * 10)
    os.utime(model, (1, 1))

    new = folder / f"{KEY}.pt"
    assert text_cache.write_cache(new, *states(4000), progress=True)
    # 8,700 + 4,004 bytes are over 10,000: the oldest entry goes, and that is enough.
    assert not oldest.exists() and middle.exists() and newest.exists() and new.exists()
    assert theirs.exists() and writing.exists() and not killed.exists()
    assert elsewhere.exists() and model.exists()
    said = capsys.readouterr().out
    assert f"removed {oldest.name} from the text-state cache" in said
    assert text_cache.read_cache(new)[0].shape == (1000,)


def test_a_hit_counts_as_a_use(folder, monkeypatch):
    first = folder / f"{'a' * 32}.pt"
    second = folder / f"{'b' * 32}.pt"
    assert text_cache.write_cache(first, *states(400), progress=False)
    assert text_cache.write_cache(second, *states(400), progress=False)
    both = first.stat().st_size + second.stat().st_size
    monkeypatch.setenv(text_cache.LIMIT_ENV, str((both + 404 - 1) / 1e9))  # one must go
    os.utime(first, (1000, 1000))
    os.utime(second, (2000, 2000))
    assert text_cache.read_cache(first) is not None  # now the more recently used
    third = folder / f"{'c' * 32}.pt"
    assert text_cache.write_cache(third, *states(400), progress=False)
    assert first.exists() and not second.exists() and third.exists()


def test_an_entry_over_the_limit_is_not_kept_and_the_run_is_told(folder, monkeypatch, capsys):
    monkeypatch.setenv(text_cache.LIMIT_ENV, "0")
    kept = entry(folder, 1, 100, 1000)
    assert not text_cache.write_cache(folder / f"{KEY}.pt", *states(4000), progress=True)
    assert kept.exists() and not (folder / f"{KEY}.pt").exists()
    assert "not kept on disk: the text-state cache's limit is 0.0 GB" in capsys.readouterr().out


def test_an_entry_that_would_fill_the_disk_is_not_kept(folder, monkeypatch, capsys):
    monkeypatch.setattr(text_cache, "KEEP_FREE_BYTES", 1 << 62)
    assert not text_cache.write_cache(folder / f"{KEY}.pt", *states(4000), progress=True)
    assert "the cache leaves the disk at least" in capsys.readouterr().out
    assert list(folder.iterdir()) == []


def test_a_failed_write_leaves_no_entry_and_the_run_goes_on(folder, capsys):
    blocker = folder / f".{KEY}.pt.{os.getpid()}.tmp"
    blocker.mkdir()  # where the temporary file would go: torch.save cannot write there
    assert not text_cache.write_cache(folder / f"{KEY}.pt", *states(4000), progress=True)
    assert not (folder / f"{KEY}.pt").exists()
    assert "not kept on disk: writing" in capsys.readouterr().out


def test_an_infinite_limit_is_no_limit_but_the_disks(monkeypatch):
    monkeypatch.setenv(text_cache.LIMIT_ENV, "inf")
    assert text_cache.cache_limit_bytes() == sys.maxsize


@pytest.mark.parametrize("value", ["abc", "-1", "nan"])
def test_a_malformed_limit_is_one_clear_line(value, monkeypatch):
    monkeypatch.setenv(text_cache.LIMIT_ENV, value)
    with pytest.raises(ValueError, match=r"is not a size: .* a number >= 0 \(default 8"):
        text_cache.cache_limit_bytes()
