"""The health monitor inside a run: a few-step run is told its samples are still noise, a
diverged one that its weights are NaN, and a trained model gets no warning at all."""

import json
from pathlib import Path

import torch
from tiny_run import TINY, as_flags, tiny_config

from difflab.checkpoints.names import resolve_checkpoint
from difflab.checkpoints.store import load_checkpoint, load_weights_into, write_manifest
from difflab.cli import main
from difflab.config import load_config
from difflab.pipeline import Generator
from difflab.runs import report
from difflab.training import health
from difflab.training.step_settings import StepSettings
from difflab.training.trainer import Trainer
from difflab.web import training_data

ROOT = Path(__file__).resolve().parents[1]


def tiny_trainer(out, *extra):
    return Trainer(tiny_config("sample.steps=8", *extra), out, device="cpu", quiet=True)


def test_a_run_of_a_few_steps_is_told_its_samples_are_still_noise(tmp_path):
    tr = tiny_trainer(tmp_path, "train.max_steps=3")
    tr.train()
    tr.seconds_per_step = None  # the speed check reads the clock: left out of this test
    line = report.final_check(tr)
    assert line.startswith("3 steps in ") and "samples are still noise" in line
    assert "train longer" in line and "steps/s with this network" in line
    assert [f.kind for f in tr.findings] == ["noise"]
    rows = [json.loads(r) for r in open(tmp_path / "metrics.jsonl")]
    assert rows[-1] == {"step": 3, "health": ["noise"]}


def test_nan_weights_are_named_before_anything_else(tmp_path):
    tr = tiny_trainer(tmp_path, "train.max_steps=1")
    tr.train()
    with torch.no_grad():
        next(tr.ema.model.parameters()).fill_(float("nan"))
    tr.seconds_per_step = None  # the speed check reads the clock: left out of this test
    line = report.final_check(tr)
    assert [f.kind for f in tr.findings] == ["nonfinite"]
    assert "NaN/Inf" in line and "NaN" in tr.findings[0].message


def test_a_trained_model_draws_no_false_alarm(tmp_path):
    """The shipped Fashion-MNIST weights in a trainer of the preset they were trained with:
    its fixed-seed samples look like data, and a run as fast as its start-up timing is not
    called slow."""
    cfg = load_config(ROOT / "configs" / "fashion_mnist_large.toml", ["train.max_steps=1"])
    tr = Trainer(cfg, tmp_path, device="cpu", quiet=True)
    ck = load_checkpoint(resolve_checkpoint("fashion-mnist"))
    load_weights_into(tr.ema.model, {k: v.float() for k, v in ck.weights().items()}, "shipped")
    tr.step, tr.elapsed, tr.seconds_per_step = 3126, 4146.0, 1.2
    tr.step_settings = StepSettings("fp32", 1, "test", {"fp32 x1 thread": 1.0}, 1.0)
    line = report.final_check(tr)
    assert tr.findings == [] and line.endswith("samples look like data"), line
    tr.seconds_per_step = 2.5  # now 40 % of the start-up speed: the machine is busy
    report.final_check(tr)
    assert [f.kind for f in tr.findings] == ["slow"]


def test_train_command_ends_with_how_far_it_got(tmp_path, capsys, steps=2):
    out = tmp_path / "run"
    code = main(["train", "digits8", "--steps", str(steps), "--out", str(out), "--no-report",
                 *as_flags([*TINY, "sample.steps=8", "train.precision=auto"])])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("difflab: precision fp32:") for line in lines)
    assert lines[-1].startswith(f"difflab: {steps} steps in ")
    assert "samples are still noise" in lines[-1]
    trained_on = json.loads((out / "last" / "config.json").read_text())["trained_on"]
    assert trained_on["precision"] == "fp32" and "no native bf16" in trained_on["why"]


def test_no_check_skips_the_health_checks_samples(tmp_path, capsys):
    code = main(["train", "digits8", "--steps", "1", "--out", str(tmp_path / "run"),
                 "--no-report", "--no-check", *as_flags([*TINY, "sample.steps=8"])])
    assert code == 0
    out = capsys.readouterr().out
    assert "stopped at step 1" in out and "drawing" not in out and "samples are" not in out


def test_the_final_check_says_it_is_drawing_before_it_draws(tmp_path, capsys):
    """A score model's sampler takes 500 steps: the check's wait is announced, not silent."""
    tr = Trainer(tiny_config("sample.steps=8", "train.max_steps=1"), tmp_path, device="cpu")
    tr.train()
    capsys.readouterr()
    line = report.final_check(tr, n=4)
    said = capsys.readouterr().out
    assert f"drawing 4 samples ({tr.cfg.sample.sampler}, 8 steps) to check" in said
    assert line.startswith("1 step in ")  # the verdict itself is the caller's to print


def test_an_autoencoder_run_is_judged_by_its_reconstructions_alone(tmp_path):
    """An autoencoder's grid puts each real image beside its reconstruction; judged whole, a
    good autoencoder (reconstructions equal to their inputs) read as a collapse ("near-copies,
    train longer"). The monitor sees the reconstructions alone."""
    from difflab.config import config_from_dict
    from difflab.data.transforms import to_uint8
    from difflab.training import health

    cfg = config_from_dict({
        "data": {"name": "digits", "limit": 300},
        "model": {"preset": "kl-f4-28", "overrides": {"channels": [8, 16], "groups": 4}},
        "train": {"batch_size": 32, "max_steps": 2, "precision": "fp32",
                  "sample_every": 1000, "checkpoint_every": 100, "warmup_steps": 1},
    })
    tr = Trainer(cfg, tmp_path / "ae", device="cpu", quiet=True)
    tr.train()
    grid, nrow = report.fixed_seed_samples(tr, 32)
    assert nrow == 8 and len(grid) == 64
    shown = report.health_view(tr, grid)
    real = torch.cat(grid.split(8)[0::2])
    with torch.no_grad():  # what the grid's odd rows are: the EMA weights' reconstructions
        x = real.float() / 127.5 - 1
        again = tr.ema.model.decode(tr.ema.model.encode(x).mode())
    assert torch.equal(shown, to_uint8(again))
    # A perfect autoencoder: its grid would be each image twice.
    perfect = torch.cat([t for i in range(0, 32, 8) for t in (real[i:i + 8], real[i:i + 8])])
    stats = health.data_stats(tr.data.images)
    assert [f.kind for f in health.check_samples(perfect, stats, 2)] == ["collapse"]
    assert health.check_samples(report.health_view(tr, perfect), stats, 2) == []


def test_sampling_a_checkpoint_later_says_what_its_run_would(tmp_path, capsys):
    """A run records its data's statistics in the checkpoint, so `difflab sample` can judge the
    samples it just drew as the run's own checks do: a few-step run's are still noise. A
    checkpoint whose record is damaged (untrusted input) is sampled without judging, and a
    trained model's samples draw no warning."""
    run = tmp_path / "run"
    assert main(["train", "digits8", "--steps", "2", "--out", str(run), "--no-report",
                 "--no-check", *as_flags([*TINY, "sample.steps=8"])]) == 0
    config = json.loads((run / "last" / "config.json").read_text())
    assert health.stats_from_dict(config["data_stats"]) is not None
    capsys.readouterr()
    assert main(["sample", str(run / "last"), "-n", "16", "--out", str(tmp_path / "a.png")]) == 0
    err = capsys.readouterr().err
    assert "difflab: warning: step 2: samples are still noise (high-frequency energy" in err
    # the web page judges by the record too (here a changed one, to tell it from the
    # statistics of the dataset it would load otherwise)
    config["data_stats"]["count"] = 3
    (run / "last" / "config.json").write_text(json.dumps(config))
    write_manifest(run / "last")
    assert training_data.data_stats(Generator.from_checkpoint(run / "last")).count == 3
    # a damaged record, in a checkpoint whose manifest matches it (as one from elsewhere
    # can): judged by nothing, and no failure
    config["data_stats"]["hf_median"] = float("nan")
    (run / "last" / "config.json").write_text(json.dumps(config))
    write_manifest(run / "last")
    assert main(["sample", str(run / "last"), "-n", "16", "--out", str(tmp_path / "b.png")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_recorded_data_statistics_are_trusted_only_when_whole():
    images = (torch.arange(4 * 64, dtype=torch.float32).reshape(4, 1, 8, 8) % 7 / 3.5 - 1)
    stats = health.data_stats(images)
    assert health.stats_from_dict(health.stats_to_dict(stats)) == stats
    record = health.stats_to_dict(stats)
    for name, bad in (("count", 1), ("count", 2.5), ("black", 1.5), ("diversity", -0.1),
                      ("hf_median", float("inf")), ("white", "0.1"), ("flat", True)):
        assert health.stats_from_dict({**record, name: bad}) is None, (name, bad)
    assert health.stats_from_dict({**record, "extra": 0.0}) is None
    assert health.stats_from_dict({k: v for k, v in record.items() if k != "count"}) is None
    assert health.stats_from_dict(["not", "a", "record"]) is None
