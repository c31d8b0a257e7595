"""kill -9 at random moments and between the filesystem operations of checkpoint writes, then
resume: the final weights, EMA and optimizer state are bit-identical to an uninterrupted run's,
and metrics.jsonl has the same rows, none repeated, none missing.

Each kill is SIGKILL to a real training process (train_driver.py), on CPU; the delays and the
operations are drawn from a seeded generator, so a failure reproduces."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from reliability_helpers import debris, differing, final_tensors, metric_rows, trainer

from difflab.checkpoints.store import load_checkpoint

DRIVER = Path(__file__).with_name("train_driver.py")
STEPS = 24
RANDOM_KILLS, MID_WRITE_KILLS, BETWEEN_RENAMES_KILLS = 6, 3, 3
# Filesystem operations in one checkpoint write: mkdir, 7 file fsyncs, the folder's fsync,
# up to 3 renames, the parent's fsync, rmtree, and the metrics fsync before it.
OPS_PER_WRITE = 14


def start(out: Path, env_extra: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, str(DRIVER), str(out), str(STEPS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def wait_for(proc: subprocess.Popen, prefix: str) -> str | None:
    """The first stdout line starting with `prefix`, or None when the process ended first."""
    for line in proc.stdout:
        if line.startswith(prefix):
            return line
    return None


def kill(proc: subprocess.Popen, log: list[str]) -> bool:
    """SIGKILL it; True when it was still running (a real kill, not a finished run)."""
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    assert "Traceback" not in err and (alive or proc.returncode == 0), err[-3000:]
    log.append(out.replace("\n", " ").strip())
    log.extend(line for line in err.splitlines() if "instead:" in line or "removed" in line)
    return alive and proc.returncode == -signal.SIGKILL


def test_kill_9_anywhere_then_resume_is_bit_identical(tmp_path, tally):
    t0 = time.perf_counter()
    reference = tmp_path / "uninterrupted"
    trainer(reference, STEPS).train()
    run = tmp_path / "killed"
    rng = random.Random(20261202)
    kills, mid_write, log = 0, 0, []
    plan = (["random"] * RANDOM_KILLS + ["mid-write"] * MID_WRITE_KILLS
            + ["between-renames"] * BETWEEN_RENAMES_KILLS)
    rng.shuffle(plan)
    for how in plan:
        if how == "random":
            proc = start(run)
            ready = wait_for(proc, "ready")
            if ready is None:
                break  # the run had already finished: nothing left to kill
            log.append(ready.strip())
            time.sleep(rng.uniform(0.0, 0.5))
        else:
            if how == "mid-write":  # any operation of the first three writes
                op = str(rng.randint(1, 3 * OPS_PER_WRITE))
            else:  # just before last/ is renamed in, after the old one became last.prev/
                op = f"replace:{3 * rng.randint(1, 2)}"
            proc = start(run, {"DIFFLAB_PAUSE_AT_OP": op})
            log.append(f"op {op}")
            if wait_for(proc, "paused") is None:
                kill(proc, log)
                continue
        if kill(proc, log):
            kills += 1
            mid_write += how != "random"
    final = start(run)
    out, err = final.communicate(timeout=120)
    assert final.returncode == 0, err[-3000:]
    assert "Traceback" not in err and f"done {STEPS}" in out
    log.extend(line for line in err.splitlines() if "instead:" in line or "removed" in line)
    assert kills >= 10, f"only {kills} kills landed: {log}"
    print("\n".join(log))
    fallbacks = sum("instead:" in line for line in log)
    cleaned = sum("interrupted checkpoint write" in line for line in log)
    assert differing(final_tensors(reference), final_tensors(run)) == []
    assert metric_rows(run) == metric_rows(reference)  # no row repeated or missing
    assert debris(run) == []
    tally(
        "kill_9",
        kills_survived=kills,
        of_which_between_checkpoint_operations=mid_write,
        resumes_from_a_fallback_checkpoint=fallbacks,
        temp_folders_cleaned_up=cleaned,
        tensors_differing=0,
        metrics_rows_repeated_or_missing=0,
        steps_lost=STEPS - final_tensors_step(run),
        tracebacks=0,
        seconds=round(time.perf_counter() - t0, 1),
    )


def final_tensors_step(run: Path) -> int:
    return load_checkpoint(run / "last", with_training_state=True).state["step"]
