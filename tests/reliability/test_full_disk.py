"""A full disk while a checkpoint is written, as `difflab train --resume` meets it: the file-size
limit (RLIMIT_FSIZE, with SIGXFSZ ignored so that the write fails with EFBIG instead of
killing the process) stops the write of model.safetensors. One clear line, exit status 2, no
traceback; the previous checkpoints are byte for byte what they were, no temporary folder is
left; and once there is room, the run resumes and ends as an uninterrupted one."""

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from reliability_helpers import ROOT, TINY, debris, differing, final_tensors, metric_rows, trainer

LIMIT = 200_000  # bytes: config.json and metrics.jsonl fit, the weights (~0.7 MB) do not


def cli_train(out: Path, steps: int, limit: int | None = None) -> subprocess.CompletedProcess:
    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))

    cmd = [sys.executable, "-m", "difflab.cli", "train", str(ROOT / "configs" / "digits8.toml"),
           "--out", str(out), "--resume", "--steps", str(steps), "--no-report", "--device", "cpu",
           *[a for s in TINY for a in ("--set", s)]]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env,
                          preexec_fn=small_files if limit else None)


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file of the run's checkpoint folders, by relative path."""
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.parent != run
    }


def test_a_full_disk_fails_cleanly_and_changes_nothing(tmp_path, tally):
    t0 = time.perf_counter()
    reference = tmp_path / "reference"
    trainer(reference, 4).train()
    run = tmp_path / "run"
    trainer(run, 2).train()
    before = snapshot(run)
    full = cli_train(run, 4, limit=LIMIT)
    assert full.returncode == 2, full.stderr[-3000:]
    assert "Traceback" not in full.stderr
    errors = [line for line in full.stderr.splitlines() if line.startswith("difflab: error:")]
    assert len(errors) == 1
    assert "File too large" in errors[0] and "the previous checkpoint is intact" in errors[0]
    assert snapshot(run) == before  # last/, last.prev/, best/: byte for byte
    assert debris(run) == []
    again = cli_train(run, 4)  # room again
    assert again.returncode == 0, again.stderr[-3000:]
    assert differing(final_tensors(reference), final_tensors(run)) == []
    assert metric_rows(run) == metric_rows(reference)  # the failed run's rows were rewound
    assert [row[0] for row in metric_rows(run, "health")] == [4]  # the CLI's final check
    tally(
        "full_disk",
        writes_failed=1,
        message=errors[0].split(": ", 2)[-1][:160] + "…",
        checkpoint_bytes_changed=0,
        temp_folders_left=0,
        tracebacks=0,
        steps_lost=0,
        seconds=round(time.perf_counter() - t0, 1),
    )
