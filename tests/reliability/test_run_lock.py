"""One trainer per run folder (difflab.cli.run_lock): a second `difflab train` on an --out
that another is training, with --resume or --overwrite, is refused in one line before it
touches anything; the lock goes with its process, however that process ends, and leaves no
file behind."""

import signal
import subprocess
import sys
import textwrap

from tiny_run import TINY, as_flags

from difflab.checkpoints.store import load_checkpoint
from difflab.cli import main

HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from difflab.cli.run_lock import run_folder_lock
    with run_folder_lock(Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(120)
""")


def test_a_second_trainer_on_a_held_run_is_refused_and_the_run_is_untouched(tmp_path, capsys):
    out = tmp_path / "run"
    train = ["train", "digits8", "--out", str(out), "--steps", "2", "--no-report",
             "--no-check", *as_flags(TINY)]
    assert main(train) == 0
    log = (out / "metrics.jsonl").read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for extra in (["--resume", "--steps", "4"], ["--overwrite"]):
            capsys.readouterr()
            assert main([*train, *extra]) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1, err
            assert f"--out {out} is being trained by another difflab train right now" in err
        assert (out / "metrics.jsonl").read_bytes() == log  # neither cut nor cleared
        assert load_checkpoint(out / "last", with_training_state=True).state["step"] == 2
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding it: the kernel lets go
        holder.wait()
    assert main([*train, "--resume", "--steps", "3"]) == 0
    assert load_checkpoint(out / "last", with_training_state=True).state["step"] == 3


def test_a_refused_command_leaves_no_folder_behind(tmp_path, capsys):
    """--resume into a folder that does not exist: refused, and the lock's folder (and the
    parents made for it) go again."""
    out = tmp_path / "a" / "b"
    assert main(["train", "digits8", "--out", str(out), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    out.mkdir(parents=True)
    (out / "mine.txt").write_text("the user's")
    assert main(["train", "digits8", "--out", str(out), "--resume"]) == 2
    assert [p.name for p in out.iterdir()] == ["mine.txt"]  # nothing written beside it
    # an --out that cannot be a folder (a path through a file): one line, nothing made
    (tmp_path / "afile").write_text("mine")
    assert main(["train", "digits8", "--out", str(tmp_path / "afile" / "run")]) == 2
    assert "cannot use it as the run's folder (Not a directory)" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "mine"
