"""A crash injected at every filesystem operation of a checkpoint write: the operation raises
instead of running (so the crash falls between it and the one before), nothing after it
runs, and the run folder must still hold a complete checkpoint that resume finds by itself;
resumed and finished, the run is bit-identical to one never interrupted.

The operations are those the write goes through: os.mkdir, os.fsync, os.replace, os.rename,
shutil.rmtree; counted over a whole `train()` call from a resumed checkpoint, so they cover
the metrics fsync, best/ and last/ writes, and the resume's clean-up."""

import os
import shutil
import time
import types
import warnings
from pathlib import Path

import pytest
from reliability_helpers import debris, differing, final_tensors, metric_rows, trainer

from difflab.checkpoints import store as ckpt_io
from difflab.data import load_dataset
from difflab.training import metrics_log

START, END = 2, 3  # resume at step 2, crash on the way to 3, then resume and finish at 3
OPS = ("mkdir", "fsync", "replace", "rename")


class SimulatedCrash(BaseException):
    """Not an Exception: no `except OSError` clean-up runs, as after a real crash."""


def patch_operations(monkeypatch, crash_at: int | None) -> list[str]:
    """Route the filesystem operations of checkpoint.py and trainer.py through a counter
    that raises SimulatedCrash at operation number `crash_at` (1-based); returns the log."""
    log: list[str] = []

    def counted(name, fn):
        def op(*args, **kwargs):
            log.append(name)
            if crash_at is not None and len(log) == crash_at:
                raise SimulatedCrash(f"crash at operation {crash_at} ({name})")
            return fn(*args, **kwargs)

        return op

    fake_os = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if k[:2] != "__"})
    for name in OPS:
        setattr(fake_os, name, counted(name, getattr(os, name)))
    fake_shutil = types.SimpleNamespace(rmtree=counted("rmtree", shutil.rmtree))
    monkeypatch.setattr(ckpt_io, "os", fake_os)
    monkeypatch.setattr(ckpt_io, "shutil", fake_shutil)
    monkeypatch.setattr(metrics_log, "os", fake_os)
    return log


@pytest.fixture(scope="module")
def digits():
    from reliability_helpers import tiny_config

    return load_dataset(tiny_config(1).data)


def test_a_crash_between_any_two_operations_leaves_a_resumable_run(tmp_path, monkeypatch,
                                                                   digits, tally):
    t0 = time.perf_counter()
    reference = tmp_path / "reference"
    trainer(reference, END, data=digits).train()
    expected_tensors, expected_rows = final_tensors(reference), metric_rows(reference)
    base = tmp_path / "base"
    trainer(base, START, data=digits).train()

    def resumed(run: Path, steps: int):
        tr = trainer(run, steps, data=digits)
        tr.resume()
        return tr

    with monkeypatch.context() as m:  # a dry run counts the operations
        shutil.copytree(base, tmp_path / "count")
        log = patch_operations(m, None)
        resumed(tmp_path / "count", END).train()
    total = len(log)
    assert total >= 20 and {"fsync", "replace", "rmtree"} <= set(log)
    for k in range(1, total + 1):
        run = tmp_path / f"crash{k}"
        shutil.copytree(base, run)
        with monkeypatch.context() as m:
            patch_operations(m, k)
            with pytest.raises(SimulatedCrash):
                resumed(run, END).train()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ckpt_io.CheckpointWarning)
            found = ckpt_io.load_checkpoint(run / "last", with_training_state=True)
            assert found.state["step"] in (START, END), k
            resumed(run, END).train()  # finds it by itself, clears the debris, finishes
        assert differing(expected_tensors, final_tensors(run)) == [], k
        assert metric_rows(run) == expected_rows, k
        assert debris(run) == [], k
        shutil.rmtree(run)
    tally(
        "crash_injection",
        injection_points=total,
        operations=sorted(set(log)),
        runs_resumed=total,
        tensors_differing=0,
        steps_lost=0,
        seconds=round(time.perf_counter() - t0, 1),
    )
