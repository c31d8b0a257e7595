"""The app's bounds, its root confinement, and the streaming of a job's steps."""

from __future__ import annotations

import os
import threading
import time

import pytest

from difflab.checkpoints.names import shipped_models
from difflab.web import command
from difflab.web.errors import collecting_warnings, describe_failure, install_warning_router
from difflab.web.limits import Limits, Roots, guidance_value, seed_value, whole_number
from difflab.web.streaming import Cancelled, run_streaming


def test_serve_binds_loopback_by_default():
    import argparse

    parser = argparse.ArgumentParser()
    command.add_serve_arguments(parser)
    args = parser.parse_args([])
    assert args.host == "127.0.0.1" and args.port == 7860 and args.func is command.serve_main


@pytest.mark.parametrize(
    "value, message",
    [
        (
            500,
            "steps 500 is over this app's limit of 200 (allowed 1..200); ask for fewer, or start "
            "difflab serve with a larger --max-steps",
        ),
        (0, "steps 0 is out of range (allowed 1..200)"),
        (2.5, "steps must be a whole number (allowed 1..200), got 2.5"),
        (float("nan"), "steps must be a whole number (allowed 1..200), got nan"),
        (None, "steps is empty; allowed 1..200"),
        ("7", "steps must be a whole number (allowed 1..200), got '7'"),
        (True, "steps must be a whole number (allowed 1..200), got True"),
    ],
)
def test_whole_number_refuses_with_one_line(value, message):
    with pytest.raises(ValueError) as e:
        whole_number(value, "steps", 1, 200, "--max-steps")
    assert str(e.value) == message


def test_whole_number_accepts_integral_floats():
    """A browser sends 20 as 20.0."""
    assert whole_number(20.0, "steps", 1, 200) == 20
    assert isinstance(whole_number(20.0, "steps", 1, 200), int)


def test_guidance_and_seed_bounds():
    assert guidance_value(3) == 3.0
    for bad in (-1, float("inf"), 51, "3"):
        with pytest.raises(ValueError, match="guidance"):
            guidance_value(bad)
    assert seed_value(2**32 - 1) == 2**32 - 1
    with pytest.raises(ValueError, match="seed"):
        seed_value(2**32)


def test_limits_refuse_nonsense():
    with pytest.raises(ValueError, match="concurrency must be a whole number >= 1"):
        Limits(concurrency=0)
    with pytest.raises(ValueError, match="max_upload_mb"):
        Limits(max_upload_mb=float("nan"))


def test_roots_confine_checkpoints(tmp_path):
    served, outside = tmp_path / "served", tmp_path / "outside"
    (served / "runs" / "a" / "last").mkdir(parents=True)
    (outside / "ck").mkdir(parents=True)
    (served / "escape").symlink_to(outside / "ck")  # a link out of the root
    roots = Roots([served])
    assert roots.checkpoint(str(served / "runs" / "a" / "last")) == served / "runs" / "a" / "last"
    for name in (
        str(outside / "ck"),
        str(served / "escape"),
        str(served / ".." / "outside" / "ck"),
        "/etc",
        "/",
    ):
        with pytest.raises(ValueError, match="is outside the folders this app serves"):
            roots.checkpoint(name)
    # The shipped models are always there, by name.
    name = shipped_models()[0]
    assert roots.checkpoint(name).name == name
    with pytest.raises(ValueError, match="no checkpoint given"):
        roots.checkpoint("  ")


def test_relative_paths_are_read_from_the_working_folder(tmp_path, monkeypatch):
    (tmp_path / "runs" / "x").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    roots = Roots(["runs"])
    assert roots.contains("runs/x") and not roots.contains(".")
    assert roots.display(tmp_path / "runs" / "x") == os.path.join("runs", "x")


def test_roots_must_exist(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        Roots([tmp_path / "nope"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        Roots([tmp_path / "file"])


def _drain(stream):
    seen = []
    while True:
        try:
            seen.append(next(stream))
        except StopIteration as stop:
            return seen, stop.value


def test_streaming_yields_updates_and_returns_the_result():
    def work(report):
        for k in range(5):
            report(k)
            time.sleep(0.01)
        return "done"

    seen, result = _drain(run_streaming(work, interval_s=0))
    assert result == "done"
    assert seen == sorted(seen) and set(seen) <= set(range(5)) and seen  # newest-first skips


def test_streaming_raises_the_jobs_error():
    def work(report):
        report(1)
        raise ValueError("bad request")

    with pytest.raises(ValueError, match="bad request"):
        _drain(run_streaming(work, interval_s=0))


def test_a_closed_stream_stops_its_job_within_a_step():
    """The page goes away: the job's next report raises Cancelled, and closing waits for it."""
    steps, stopped = [], threading.Event()

    def work(report):
        try:
            for k in range(1000):
                report(k)
                steps.append(k)
                time.sleep(0.005)
        except Cancelled:
            stopped.set()
            raise
        return "finished"

    stream = run_streaming(work, interval_s=0)
    next(stream)
    stream.close()  # what gradio does to a generator whose request was cancelled
    assert stopped.is_set() and len(steps) < 1000


def test_failures_are_one_line():
    assert describe_failure(OSError(28, "No space left on device", "/x")) == (
        "No space left on device: /x (the disk is full or a file-size limit was reached: free "
        "some space, or write somewhere else)")
    assert describe_failure(ValueError("first\n  second")) == "first second"
    assert describe_failure(MemoryError()) == "out of memory: ask for fewer or smaller images"
    bug = describe_failure(KeyError("network"))  # not the user's to fix: said to be a bug
    assert bug.startswith("internal error, KeyError: 'network' (a bug in difflab")


def test_each_thread_sees_its_own_warnings():
    """Requests run on threads at once: a warning goes to the request that raised it."""
    import warnings

    install_warning_router()
    seen: dict[int, list[str]] = {}
    start = threading.Barrier(2)

    def request(k: int) -> None:
        with collecting_warnings() as caught:
            start.wait()
            for _ in range(3):
                warnings.warn(f"request {k}", UserWarning, stacklevel=1)
                time.sleep(0.01)
        seen[k] = caught

    threads = [threading.Thread(target=request, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {0: ["request 0"], 1: ["request 1"]}


def test_a_relative_name_is_also_read_from_each_root(tmp_path, monkeypatch):
    """`--root /srv/runs` and the API asks for run "a": /srv/runs/a, wherever the app runs;
    a relative name cannot climb out of the roots that way."""
    served = tmp_path / "served"
    (served / "a" / "last").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "outside").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    roots = Roots([served])
    assert roots.checkpoint("a/last") == served / "a" / "last"
    assert roots.confine("a", "run") == served / "a"
    with pytest.raises(ValueError, match="outside the folders this app serves"):
        roots.confine("../outside", "run")
    with pytest.raises(ValueError, match="run 'b' not found in the folders this app serves"):
        roots.confine("b", "run")
    # A mistyped model name is told as such, with the shipped models to choose from.
    with pytest.raises(ValueError, match="'fashion-mnst' not found .*; or a shipped model: "):
        roots.checkpoint("fashion-mnst")


def test_kill_stops_the_server_as_ctrl_c_does_and_its_request_files_go(tmp_path, port):
    """`kill` (SIGTERM) is how a service manager or a shell's job control stops a server: it
    exits with the signal's status, and its folder of request files goes as on Ctrl-C."""
    import signal
    import subprocess
    import sys

    pytest.importorskip("gradio")
    (tmp_path / "temp").mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path / "temp"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "difflab.cli", "serve", "--root", str(tmp_path), "--port",
         str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            if "the app is at" in line:
                break
        assert proc.poll() is None, "the server did not start"
        made = list((tmp_path / "temp").glob("difflab-web-*"))
        assert len(made) == 1 and made[0].is_dir()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        assert not made[0].exists()
    finally:
        proc.kill()
        proc.wait()
