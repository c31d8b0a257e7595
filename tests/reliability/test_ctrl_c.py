"""Ctrl-C during training (difflab.training.interrupt): the first one finishes the step, saves
a checkpoint and stops with status 130, saying how to continue; the continued run is
bit-identical to one never interrupted. A run used to keep nothing when stopped before its
first periodic checkpoint (1,000 steps into the default preset)."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_run import ROOT, TINY, as_flags, tiny_config

from difflab.checkpoints.store import load_checkpoint
from difflab.cli import main
from difflab.training.trainer import INTERRUPTED, Trainer


@pytest.fixture(autouse=True)
def python_handles_ctrl_c():
    """Ctrl-C handled as Python does by default, here and in the runs these tests start: a
    non-interactive shell starts a background job (`pytest ... &`) with SIGINT ignored, and a
    process then never sees a Ctrl-C, nor do its children (an ignored signal survives exec)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def run(out: Path, steps: int, resume: bool = False, on_sample=None) -> Trainer:
    tr = Trainer(tiny_config(f"train.max_steps={steps}", "train.sample_every=3"), out,
                 device="cpu", quiet=True)
    if resume:
        tr.resume()
    tr.stop = tr.train(on_sample=on_sample)
    return tr


def test_ctrl_c_saves_the_step_and_the_continued_run_is_bit_identical(tmp_path):
    straight = run(tmp_path / "straight", 6)
    ctrl_c = lambda tr: os.kill(os.getpid(), signal.SIGINT)  # noqa: E731 - at step 3
    stopped = run(tmp_path / "stopped", 6, on_sample=ctrl_c)
    assert (stopped.stop.step, stopped.stop.why) == (3, INTERRUPTED)
    assert load_checkpoint(tmp_path / "stopped" / "last", with_training_state=True
                           ).state["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back
    resumed = run(tmp_path / "stopped", 6, resume=True)
    assert resumed.step == 6
    for a, b in zip(straight.net.parameters(), resumed.net.parameters(), strict=True):
        assert torch.equal(a, b)
    rows = [json.loads(line)["loss"] for line in open(tmp_path / "straight" / "metrics.jsonl")]
    assert rows == [json.loads(line)["loss"]
                    for line in open(tmp_path / "stopped" / "metrics.jsonl")]


# A small real run of `difflab train` that would go on for hours: stopped by the tests.
ENDLESS = ["--steps", "100000", *as_flags([
    "model.overrides.base_channels=16", "model.overrides.channel_mults=[1, 2]",
    "model.overrides.attention_resolutions=[]", "model.overrides.groups=4",
    "train.batch_size=16", "train.log_every=1", "data.limit=200"])]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def start_training(launch: list[str], out: Path, **popen) -> subprocess.Popen:
    """`launch` (python -m difflab.cli, or a torchrun of it) training into `out`, returned
    once it has logged three steps: a run in its loop, with something to lose."""
    proc = subprocess.Popen([*launch, "train", "digits8", "--out", str(out), *ENDLESS],
                            cwd=ROOT, env=ENV, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **popen)
    metrics, t0 = out / "metrics.jsonl", time.monotonic()
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.monotonic() - t0 < 300, proc.communicate()
        time.sleep(0.2)
    return proc


def stopped_by(signum: int, out: Path, times: int = 1) -> tuple[int, str, str]:
    """A real single-process `difflab train` sent `signum` `times` times: the step it saved
    (checked to be in its loop and told), its stdout and stderr; it must exit 128 + signum."""
    proc = start_training([sys.executable, "-m", "difflab.cli"], out)
    for _ in range(times):
        proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum and "Traceback" not in stderr, stderr[-2000:]
    step = load_checkpoint(out / "last", with_training_state=True).state["step"]
    assert step >= 3 and f" at step {step}; saved {out / 'last'}" in stderr
    return step, stdout, stderr


def test_ctrl_c_of_a_real_difflab_train_says_how_to_continue(tmp_path):
    out = tmp_path / "run"
    step, stdout, stderr = stopped_by(signal.SIGINT, out)
    assert f"difflab: interrupted at step {step}" in stderr
    assert "stopping after this step" in stderr + stdout
    assert not (out / "samples.png").exists()  # no report after a Ctrl-C
    # the command it prints continues the run (to a smaller budget here, to end at once)
    said = shlex.split(stderr.split("continues from there: ")[1].splitlines()[0])
    assert said[0] == "difflab" and said[-1] == "--resume" and "--overwrite" not in said
    again = said[1:]
    again[again.index("--steps") + 1] = str(step + 1)
    assert main([*again, "--no-report"]) == 0
    assert load_checkpoint(out / "last", with_training_state=True).state["step"] == step + 1


def test_sigterm_saves_the_step_like_a_first_ctrl_c(tmp_path):
    """`kill`, `timeout`, `docker stop` and batch schedulers send SIGTERM (then SIGKILL): the
    run saves the step it is at and exits 143; a second SIGTERM does not stop it unsaved."""
    step, stdout, stderr = stopped_by(signal.SIGTERM, tmp_path / "run", times=2)
    assert f"difflab: stopped by SIGTERM at step {step}" in stderr
    assert "SIGTERM: stopping after this step" in stderr + stdout


def test_a_run_killed_before_its_first_checkpoint_is_not_a_dead_end(tmp_path, capsys):
    """kill -9 before the first checkpoint leaves config.json and metrics.jsonl: neither a
    plain rerun nor --resume can go on, and both say that --overwrite starts it again."""
    import shutil

    out = tmp_path / "run"
    argv = ["train", "digits8", "--out", str(out), "--steps", "2", "--no-report",
            *as_flags(["model.overrides.base_channels=16", "model.overrides.groups=4",
                       "model.overrides.attention_resolutions=[]", "data.limit=200"])]
    assert main(argv) == 0
    for name in os.listdir(out):  # what a kill -9 before the first checkpoint leaves
        if name not in ("config.json", "metrics.jsonl"):
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    capsys.readouterr()
    assert main(argv) == 2
    assert "stopped before its first checkpoint" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "--overwrite, not --resume, starts it again" in err
    assert main(["sample", str(out), "--out", str(tmp_path / "s.png")]) == 2
    assert "a training run with no checkpoint yet" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


def test_ctrl_c_of_a_torchrun_stops_every_rank_at_one_step_and_saves(tmp_path):
    """Ctrl-C in a terminal reaches every process of the torchrun (its agent forwards it once
    more): the ranks agree on a step, rank 0 saves it, and the printed torchrun command
    continues the run. It used to kill the ranks and keep nothing before the first periodic
    checkpoint."""
    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    proc = start_training([*torchrun, "--standalone", "--nproc_per_node=2", "-m", "difflab.cli"],
                          out, start_new_session=True)  # its own group, as a terminal's job
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    stdout, stderr = proc.communicate(timeout=300)
    step = load_checkpoint(out / "last", with_training_state=True).state["step"]
    assert step >= 3 and f"difflab: interrupted at step {step}; saved" in stderr, stderr[-3000:]
    assert stdout.count("stopping every rank after this step") == 1  # rank 0 says it
    said = shlex.split(stderr.split("continues from there: ")[1].splitlines()[0])
    assert said[:4] == ["torchrun", "--standalone", "--nproc_per_node=2", "-m"]
    assert said[-1] == "--resume"
    again = said[1:]
    again[again.index("--steps") + 1] = str(step + 1)
    done = subprocess.run([*torchrun, *again], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert load_checkpoint(out / "last", with_training_state=True).state["step"] == step + 1


def test_a_plain_resume_goes_on_to_the_runs_own_budget(tmp_path, capsys):
    """`--resume` without --minutes or --steps continues to the budget the run was started
    with (its checkpoint's record), not to the preset's; it says so, and command.sh and the
    next resume command name that budget."""
    ctrl_c = lambda tr: os.kill(os.getpid(), signal.SIGINT)  # noqa: E731 - at step 3
    out = tmp_path / "run"
    assert run(out, 6, on_sample=ctrl_c).stop.step == 3  # started as --steps 6, stopped at 3
    capsys.readouterr()
    assert main(["train", "digits8", "--out", str(out), "--resume", *as_flags(TINY)]) == 0
    said = capsys.readouterr().out
    assert "at step 3" in said and "to the run's own budget of 6 steps" in said
    assert load_checkpoint(out / "last", with_training_state=True).state["step"] == 6
    command = (out / "command.sh").read_text()
    assert "--steps 6" in command and "--resume" not in command


@pytest.mark.parametrize("delay", [0.5, 1.5])
def test_ctrl_c_while_difflab_is_still_loading_ends_in_one_line(tmp_path, delay):
    """A Ctrl-C at any moment after Python has started: while the command line is still
    being imported (torch takes a second or more) as well as later, one line and status 130,
    never the import's traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "difflab", "sample", "fashion-mnist", "-n", "5000", "--out",
         str(tmp_path / "many.npz")], cwd=ROOT, env=ENV, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a shell's job
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == "difflab: interrupted"


def test_a_step_that_fails_after_a_ctrl_c_is_the_interruption(tmp_path):
    """The terminal's Ctrl-C reaches the step's children too (torch.compile's C++ compiler,
    which then fails): that failure stops the run as an interruption (KeyboardInterrupt:
    `difflab: interrupted`, 130), not as an error of its own."""
    tr = Trainer(tiny_config("train.max_steps=5"), tmp_path / "run", device="cpu", quiet=True)

    def compiler_killed(progress=None):
        os.kill(os.getpid(), signal.SIGINT)
        raise RuntimeError("C++ compile error: g++ ... (100 kB of it)")

    tr.train_step = compiler_killed
    with pytest.raises(KeyboardInterrupt):
        tr.train()
    tr.train_step = lambda progress=None: (_ for _ in ()).throw(RuntimeError("a real bug"))
    with pytest.raises(RuntimeError, match="a real bug"):  # without a Ctrl-C: the error
        tr.train()


def test_a_very_long_error_is_cut_to_one_readable_line():
    from difflab.failures import MAX_LINE, one_line

    said = one_line(RuntimeError("g++ -O3 " * 20_000))
    assert len(said) < MAX_LINE + 100 and said.endswith("more characters; --debug shows them all)")
    assert one_line(ValueError("short\nand two lines")) == "short and two lines"
