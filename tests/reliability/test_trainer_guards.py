"""The trainer's guards: non-finite weights are never saved and the divergence error names a
checkpoint that exists (or says there is none); metrics.jsonl starts anew with a new run and
is rewound, never repeated, by a resume; resume refuses what would not continue exactly."""

import json
import math
import warnings

import pytest
import torch
from reliability_helpers import metric_rows, trainer

from difflab.checkpoints import store as ckpt_io
from difflab.training.trainer import TrainingDiverged


def poison_after(tr, step: int, which: str = "model") -> None:
    """From `step` on, a weight of the model (or only its EMA) is NaN right after the step:
    the loss of that step was finite, so only the check before saving can catch it."""
    original = tr.train_step

    def step_then_poison(progress=None):
        loss = original(progress)
        if tr.step >= step:
            module = tr.net if which == "model" else tr.ema.model
            with torch.no_grad():
                next(module.parameters()).view(-1)[0] = math.nan
        return loss

    tr.train_step = step_then_poison


def all_finite(path) -> bool:
    ck = ckpt_io.load_checkpoint(path, fallback=False)
    return all(bool(torch.isfinite(v).all()) for v in [*ck.model.values(), *ck.ema.values()])


@pytest.mark.parametrize("which", ["model", "EMA"])
def test_non_finite_weights_are_never_saved(tmp_path, which, tally):
    tr = trainer(tmp_path, 6)
    poison_after(tr, 3, "model" if which == "model" else "ema")
    with pytest.raises(TrainingDiverged) as e:
        tr.train()
    message = str(e.value)
    assert f"the {which} weight" in message and "nothing was saved" in message
    assert f"the last good checkpoint is {tmp_path / 'last'} (step 2)" in message
    for name in ("last", "last.prev", "best", "best.prev"):
        if (tmp_path / name).is_dir():
            assert all_finite(tmp_path / name), name
    tally("divergence_guard", non_finite_saves_refused=1, tracebacks=0)


def test_divergence_before_any_checkpoint_says_so(tmp_path):
    tr = trainer(tmp_path, 6, "train.checkpoint_every=1000")
    poison_after(tr, 2)
    with pytest.raises(TrainingDiverged, match="loss became nan at step 3.*no checkpoint was"):
        tr.train()
    assert not (tmp_path / "last").exists() and not (tmp_path / "best").exists()


def test_divergence_after_resume_names_the_resumed_checkpoint(tmp_path):
    trainer(tmp_path, 2, "train.checkpoint_every=1000").train()
    tr = trainer(tmp_path, 6, "train.checkpoint_every=1000")
    tr.resume()
    poison_after(tr, 3)
    with pytest.raises(TrainingDiverged, match=f"last good checkpoint is {tmp_path / 'last'} "
                                               r"\(step 2\)"):
        tr.train()


def test_a_new_run_in_an_old_folder_starts_its_log_anew(tmp_path):
    trainer(tmp_path, 3).train()
    trainer(tmp_path, 2).train()  # no resume: a new run
    assert [row[0] for row in metric_rows(tmp_path)] == [1, 2]


def test_resume_rewinds_rows_written_after_the_checkpoint(tmp_path):
    reference = tmp_path / "reference"
    trainer(reference, 4).train()
    run = tmp_path / "run"
    trainer(run, 2).train()
    with open(run / "metrics.jsonl", "a") as f:  # what a run killed after step 3 left behind
        f.write(json.dumps({"step": 3, "loss": 9.0, "lr": 1.0}) + "\n")
        f.write('{"step": 4, "lo')  # a row cut by the kill
    tr = trainer(run, 4)
    tr.resume()
    tr.train()
    assert metric_rows(run) == metric_rows(reference)


def test_resume_of_an_older_checkpoint_without_a_recorded_length_keeps_rows_to_its_step(tmp_path):
    reference = tmp_path / "reference"
    trainer(reference, 4).train()
    run = tmp_path / "run"
    trainer(run, 2).train()
    # an older difflab's checkpoint: state.json without metrics_bytes (and no manifest)
    state = json.loads((run / "last" / "state.json").read_text())
    del state["metrics_bytes"]
    (run / "last" / "state.json").write_text(json.dumps(state))
    (run / "last" / "manifest.json").unlink()
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "loss": 9.0, "lr": 1.0}) + "\n")
    tr = trainer(run, 4)
    tr.resume()
    tr.train()
    assert metric_rows(run) == metric_rows(reference)


def test_resume_without_last_finds_the_previous_checkpoint(tmp_path):
    reference = tmp_path / "reference"
    trainer(reference, 4).train()
    run = tmp_path / "run"
    trainer(run, 3).train()
    (run / "last").rename(run / ".last.tmp-gone")  # as a crash between the renames leaves it
    tr = trainer(run, 4)
    with pytest.warns(ckpt_io.CheckpointWarning, match="using .*last.prev instead"):
        tr.resume()
    # last.prev: the checkpoint before last's step 3. The run's end does not save step 3
    # a second time, which would have made last.prev a copy of last.
    assert tr.step == 2
    tr.train()
    torch.testing.assert_close(tr.net.state_dict(), trainer_state(reference), rtol=0, atol=0)


def trainer_state(run):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ckpt_io.load_checkpoint(run / "last").model


def test_sample_and_info_find_the_previous_checkpoint_when_last_is_gone(tmp_path, capsys):
    """A crash between the two renames of a write leaves last.prev/ and no last/: the
    commands that read a run's last/ take the previous complete one and say so."""
    from difflab.cli import main

    run = tmp_path / "run"
    trainer(run, 2).train()
    (run / "last").rename(tmp_path / "moved_away")
    assert main(["info", str(run / "last")]) == 0
    out = capsys.readouterr()
    assert "last.prev" in out.out and "step 1" in out.out  # the checkpoint before last's 2
    assert main(["sample", str(run / "last"), "-n", "2", "--steps", "2", "--quiet",
                 "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").is_file()


def test_a_checkpoints_state_is_strict_json(tmp_path):
    """No Infinity or NaN in state.json (a FID not yet scored is null there), so any JSON
    reader opens it; a resume reads null back as no FID yet."""
    run = tmp_path / "run"
    trainer(run, 2).train()

    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    state = json.loads((run / "last" / "state.json").read_text(), parse_constant=refuse)
    assert state["best_fid"] is None
    tr = trainer(run, 3)
    tr.resume()
    assert tr.best_fid == float("inf")
