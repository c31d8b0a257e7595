"""The trainer: exact resume, NaN guard, torchrun/DDP on CPU, and a learning test with a bar."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_run import TINY, tiny_config

from difflab.checkpoints.names import resolve_checkpoint
from difflab.checkpoints.store import export_for_inference, load_checkpoint, write_manifest
from difflab.cli import main
from difflab.config import config_from_dict, load_config
from difflab.evaluation import evaluate_checkpoint
from difflab.models.conditioning import TextCondition
from difflab.pipeline import Generator
from difflab.runs import report, score_fid
from difflab.training.run_state import describe_init_from
from difflab.training.trainer import Trainer, TrainingDiverged

ROOT = Path(__file__).resolve().parents[1]


def train(out, steps, resume=False, extra=()):
    tr = Trainer(tiny_config(f"train.max_steps={steps}", *extra), out, device="cpu", quiet=True)
    if resume:
        tr.resume()
    tr.train(score=score_fid)  # FID as `difflab train` scores it, when train.fid_every is set
    return tr


def test_resume_continues_exactly(tmp_path):
    straight = train(tmp_path / "a", 6, extra=["model.overrides.dropout=0.1"])
    train(tmp_path / "b", 3, extra=["model.overrides.dropout=0.1"])
    resumed = train(tmp_path / "b", 6, resume=True, extra=["model.overrides.dropout=0.1"])
    assert resumed.step == 6
    for (k, a), b in zip(
        straight.net.state_dict().items(), resumed.net.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    for a, b in zip(straight.ema.model.parameters(), resumed.ema.model.parameters(), strict=True):
        assert torch.equal(a, b)
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "a" / "metrics.jsonl")]
    resumed_losses = [json.loads(line)["loss"] for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert resumed_losses == losses


def test_the_optimizer_step_is_adamws_closed_form_with_the_runs_settings(tmp_path):
    """The trainer's AdamW (the fused kernel on a CPU) makes the textbook first step
    (Loshchilov & Hutter 2019, Algorithm 2): p <- p (1 - lr wd) - lr g / (|g| + eps), since
    after one step m_hat = g and v_hat = g^2; betas, weight decay and eps must be the run's."""
    tr = Trainer(tiny_config("train.max_steps=1", "train.weight_decay=0.1"), tmp_path,
                 device="cpu", quiet=True)
    assert tr.optimizer.param_groups[0]["fused"] is True
    before = [p.detach().clone() for p in tr.net.parameters()]
    grads = []
    hook = tr.optimizer.register_step_pre_hook(
        lambda opt, *_: grads.extend(p.grad.clone() for p in tr.net.parameters()))
    tr.step = tr.cfg.train.warmup_steps  # the full learning rate
    tr.train_step(0.5)
    hook.remove()
    group = tr.optimizer.param_groups[0]
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    assert (lr, wd) == (tr.cfg.train.lr, 0.1)
    for p0, g, p1 in zip(before, grads, tr.net.parameters(), strict=True):
        expected = p0 * (1 - lr * wd) - lr * g / (g.abs() + eps)
        torch.testing.assert_close(p1.detach(), expected, rtol=1e-5, atol=1e-7)


def test_checkpoint_describes_the_run(tmp_path):
    tr = train(tmp_path / "run", 2)
    ck = load_checkpoint(tmp_path / "run" / "last", with_training_state=True)
    assert ck.config["kind"] == "pixel-diffusion"
    assert ck.config["image_shape"] == [1, 8, 8]
    assert ck.config["network"]["config"]["base_channels"] == 16
    assert ck.state["step"] == 2 and ck.ema is not None
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    assert ck.config["parameters"] == sum(p.numel() for p in tr.net.parameters())


def test_fid_during_training_is_logged_and_the_best_kept(tmp_path):
    extra = ["train.fid_every=2", "train.fid_samples=40", "sample.steps=4"]
    train(tmp_path / "run", 6, extra=extra)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    fids = [r for r in rows if "fid" in r]
    assert [r["step"] for r in fids] == [2, 4, 6]
    assert all(r["fid_samples"] == 40 and "difflab digits" in r["feature_space"] for r in fids)
    best = min(fids, key=lambda r: r["fid"])
    ck = load_checkpoint(tmp_path / "run" / "best_fid", with_training_state=True)
    assert ck.state["step"] == best["step"] and ck.state["best_fid"] == best["fid"]
    # The logged FID is that of the kept weights: scoring the checkpoint again gives it.
    again = evaluate_checkpoint(
        tmp_path / "run" / "best_fid", 40, sampler="ddim", steps=4, seed=0, device="cpu"
    )
    assert again["fid"] == pytest.approx(best["fid"], rel=1e-6)
    done = train(tmp_path / "run", 6, resume=True, extra=extra)  # at max_steps: no step
    report.write_report(done, tmp_path / "run", command=["difflab", "train"])
    assert (tmp_path / "run" / "fid.png").stat().st_size > 0
    # Resume carries the best FID on: a later, worse FID does not replace best_fid/.
    tr = train(tmp_path / "run", 8, resume=True, extra=extra)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in rows if "fid" in r] == [2, 4, 6, 8]
    assert tr.best_fid == min(r["fid"] for r in rows if "fid" in r)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["train.fid_every=-1"], "train.fid_every must be >= 0"),
        (["train.fid_every=2", "train.fid_samples=0"], "train.fid_samples must be >= 4"),
        (["train.fid_every=2", "train.fid_samples=3"], "train.fid_samples must be >= 4"),
        (["train.fid_every=2", "data.name=image_folder", "data.root=FOLDER"], "a feature net"),
    ],
)
def test_fid_every_bad_settings_are_named(tmp_path, extra, match):
    from PIL import Image

    folder = tmp_path / "own_images"  # your own images: no feature network to score them
    folder.mkdir()
    for i in range(20):
        Image.fromarray(torch.randint(0, 255, (8, 8), dtype=torch.uint8).numpy()).save(
            folder / f"{i}.png"
        )
    with pytest.raises(ValueError, match=match):
        extra = [e.replace("FOLDER", repr(folder.as_posix())) for e in extra]
        train(tmp_path / "run", 1, extra=extra)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    train(tmp_path / "run", 2)
    before = load_checkpoint(tmp_path / "run" / "last").model
    tr = Trainer(tiny_config("train.max_steps=50"), tmp_path / "run", device="cpu", quiet=True)
    tr.resume()
    with torch.no_grad():  # an overflowed weight: the next forward pass gives a NaN loss
        next(tr.net.parameters()).fill_(float("inf"))
    with pytest.raises(TrainingDiverged, match="loss became (nan|inf).*last good checkpoint"):
        tr.train()
    after = load_checkpoint(tmp_path / "run" / "last").model
    for k in before:
        assert torch.equal(before[k], after[k])


def test_resume_refuses_a_different_network(tmp_path):
    train(tmp_path / "run", 1)
    tr = Trainer(
        tiny_config("model.overrides.base_channels=8"), tmp_path / "run", device="cpu", quiet=True
    )
    with pytest.raises(ValueError, match="cannot resume.*network"):
        tr.resume()


def test_a_warm_start_begins_from_the_checkpoints_ema_weights_with_a_fresh_run(tmp_path, capsys):
    source = train(tmp_path / "a", 6)
    tr = Trainer(tiny_config("train.max_steps=2"), tmp_path / "b", device="cpu", quiet=True)
    tr.warm_start(tmp_path / "a" / "last")
    for net in (tr.net, tr.ema.model):  # both start from the source's EMA weights
        for (k, mine), theirs in zip(net.state_dict().items(),
                                     source.ema.model.state_dict().values(), strict=True):
            assert torch.equal(mine, theirs), k
    assert tr.step == 0 and tr.elapsed == 0.0 and not tr.optimizer.state  # a new run
    tr.train()
    ck = load_checkpoint(tmp_path / "b" / "last", with_training_state=True)
    assert ck.state["step"] == 2
    assert ck.state["init_from"] == {"path": str(tmp_path / "a" / "last"), "step": 6}
    resumed = train(tmp_path / "b", 3, resume=True)  # a resumed warm start keeps its source
    assert resumed.init_from == ck.state["init_from"]
    # and its export says so: 3 steps of its own, on top of the source's 6
    export_for_inference(tmp_path / "b" / "last", tmp_path / "export")
    trained = json.loads((tmp_path / "export" / "config.json").read_text())["trained"]
    assert trained["step"] == 3 and trained["init_from"] == ck.state["init_from"]
    assert main(["info", str(tmp_path / "export")]) == 0  # and difflab info says it
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("training"))
    assert line.startswith("training     step 3, ")
    assert line.endswith(f"min of optimizer steps, started from {tmp_path / 'a' / 'last'} (step 6)")
    export_for_inference(tmp_path / "a" / "last", tmp_path / "export_a")  # not warm-started
    assert "init_from" not in json.loads((tmp_path / "export_a" / "config.json").read_text())[
        "trained"]
    # a warm start from an export (no training state) takes the step from its record
    tr = Trainer(tiny_config("train.max_steps=1"), tmp_path / "c", device="cpu", quiet=True)
    tr.warm_start(tmp_path / "export_a")
    assert tr.init_from == {"path": str(tmp_path / "export_a"), "step": 6}
    # and from one that was itself warm-started, counts both runs' steps (3 on top of 6)
    tr.warm_start(tmp_path / "export")
    assert tr.init_from == {"path": str(tmp_path / "export"), "step": 3, "steps_in_all": 9}


def test_a_warm_start_refuses_another_network(tmp_path):
    train(tmp_path / "a", 1)
    tr = Trainer(tiny_config("model.overrides.base_channels=8"), tmp_path / "b", device="cpu",
                 quiet=True)
    with pytest.raises(ValueError, match="cannot start from .*different network"):
        tr.warm_start(tmp_path / "a" / "last")


def test_a_warm_start_from_a_shipped_model_records_its_name_not_this_machines_path(tmp_path):
    configs = Path(__file__).resolve().parents[1] / "configs"
    tr = Trainer(load_config(configs / "fashion_mnist_large.toml", ["train.max_steps=1"]),
                 tmp_path / "b", device="cpu", quiet=True)
    tr.warm_start(resolve_checkpoint("fashion-mnist"))
    # Its own run began from the model shipped before it (5,000 steps): both are counted.
    assert tr.init_from == {"path": "fashion-mnist", "step": 9777, "steps_in_all": 14777}
    assert describe_init_from(tr.init_from) == (
        "fashion-mnist (step 9,777 of its last run, 14,777 in all)"
    )


CLASS_TRANSFORMERS = ["model.overrides.num_classes=10", "model.overrides.class_context=true",
                      "model.overrides.transformer_resolutions=[4]"]


def test_a_warm_start_may_add_the_transformers_position_code_and_starts_where_it_left(
    tmp_path, capsys
):
    """transformer_position only adds zero-initialised layers: a run with it on may start from
    a checkpoint with it off, computes exactly the checkpoint's function at its first step,
    and says what it added; any other difference, or taking the code away, is refused."""
    source = train(tmp_path / "a", 2, extra=CLASS_TRANSFORMERS)
    grown = [*CLASS_TRANSFORMERS, "model.overrides.transformer_position=true"]
    tr = Trainer(tiny_config("train.max_steps=1", *grown), tmp_path / "b", device="cpu",
                 quiet=True)
    tr.warm_start(tmp_path / "a" / "last")
    assert tr.init_from["added"] == ["transformer_position"]
    assert describe_init_from(tr.init_from) == (
        f"{tmp_path / 'a' / 'last'} (step 2), adding transformer_position "
        "(zero-initialised layers)")
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([5.0, 300.0, 900.0])
    labels = torch.tensor([1, 4, 10])  # 10: the null label
    with torch.no_grad():
        for net in (tr.net, tr.ema.model):
            assert torch.equal(net(x, t, labels), source.ema.model(x, t, labels))
    tr.train()  # the new layers learn: the position code is no longer zero
    assert any(p.any() for n, p in tr.net.named_parameters() if ".position." in n)
    assert main(["info", str(tmp_path / "b" / "last")]) == 0
    assert "(step 2), adding transformer_position" in capsys.readouterr().out
    back = Trainer(tiny_config("train.max_steps=1", *CLASS_TRANSFORMERS), tmp_path / "c",
                   device="cpu", quiet=True)
    with pytest.raises(ValueError, match="different network .*transformer_position"):
        back.warm_start(tmp_path / "b" / "last")  # would drop what those layers learned
    other = Trainer(tiny_config("train.max_steps=1", *grown, "model.overrides.base_channels=8"),
                    tmp_path / "d", device="cpu", quiet=True)
    with pytest.raises(ValueError, match="different network .*base_channels"):
        other.warm_start(tmp_path / "a" / "last")
    with pytest.raises(ValueError, match="cannot resume.*network"):  # resume grows nothing
        Trainer(tiny_config("train.max_steps=3", *grown), tmp_path / "a", device="cpu",
                quiet=True).resume()


def _digits_config(**overrides):
    """A small pixel UNet on the 8x8 digits; with text settings, the real MiniLM reads its
    class captions."""
    model = {"base_channels": 16, "groups": 4, "channel_mults": [1, 2],
             "attention_resolutions": [4], **overrides}
    return config_from_dict({
        "data": {"name": "digits", "limit": 64},
        **({"text": {"encoder": "minilm", "tokens": "pooled"}} if "context_dim" in model else {}),
        "model": {"preset": "ddpm-small-28", "overrides": model},
        "train": {"batch_size": 16, "max_steps": 2, "precision": "fp32", "log_every": 1,
                  "sample_every": 1000, "checkpoint_every": 100, "warmup_steps": 1},
    })


TEXT_ON_TOP = {"transformer_resolutions": [4], "context_dim": 384, "transformer_head_dim": 8,
               "pooled_text": True}


def test_a_text_model_may_start_from_an_unconditional_one_and_starts_where_it_left(tmp_path):
    """Spatial transformers (zero-initialised output) and the pooled text's MLP (zero last
    layer) only add to a network without a context: a text run may start from a trained
    unconditional checkpoint, computes exactly its function at the first step whatever the
    prompt, names what it added, and learns the new layers. Another trunk is refused, and so
    is the way back (it would drop what the text layers learned)."""
    source = Trainer(_digits_config(), tmp_path / "a", device="cpu", quiet=True)
    source.train()
    tr = Trainer(_digits_config(**TEXT_ON_TOP), tmp_path / "b", device="cpu", quiet=True)
    tr.warm_start(tmp_path / "a" / "last")
    assert tr.init_from["added"] == ["context_dim", "transformer_resolutions",
                                     "transformer_head_dim", "pooled_text"]
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([5.0, 300.0, 900.0])
    text = TextCondition(tokens=torch.randn(3, 5, 384), mask=torch.ones(3, 5, dtype=torch.bool))
    with torch.no_grad():
        want = source.ema.model(x, t)
        for net in (tr.net, tr.ema.model):
            assert torch.equal(net(x, t, text), want)
    tr.train()
    assert any(p.any() for n, p in tr.net.named_parameters() if "proj_out" in n)
    with torch.no_grad():  # the text now changes what it draws
        assert not torch.equal(tr.net(x, t, text), tr.net(x, t, TextCondition(
            tokens=torch.zeros(3, 5, 384), mask=torch.zeros(3, 5, dtype=torch.bool))))
    other = Trainer(_digits_config(**TEXT_ON_TOP, base_channels=8), tmp_path / "c",
                    device="cpu", quiet=True)
    with pytest.raises(ValueError, match="different network .*base_channels"):
        other.warm_start(tmp_path / "a" / "last")
    back = Trainer(_digits_config(), tmp_path / "d", device="cpu", quiet=True)
    with pytest.raises(ValueError, match="different network .*context_dim"):
        back.warm_start(tmp_path / "b" / "last")


def _drop_network_settings(checkpoint, names):
    """Rewrite a checkpoint's config.json as a difflab from before `names` existed wrote it."""
    path = checkpoint / "config.json"
    config = json.loads(path.read_text())
    for name in names:
        del config["network"]["config"][name]
    path.write_text(json.dumps(config))
    write_manifest(checkpoint)


def test_a_checkpoint_from_before_a_network_setting_existed_still_resumes_and_warm_starts(
    tmp_path,
):
    # text_layers and text_width came in after fashion-mnist shipped: its config.json lacks
    # them, and `--init-from fashion-mnist` was refused as "a different network" (None vs 0).
    train(tmp_path / "a", 2)
    _drop_network_settings(tmp_path / "a" / "last", ["text_layers", "text_width"])
    tr = Trainer(tiny_config("train.max_steps=1"), tmp_path / "b", device="cpu", quiet=True)
    tr.warm_start(tmp_path / "a" / "last")
    assert tr.init_from["step"] == 2
    resumed = train(tmp_path / "a", 3, resume=True)
    assert resumed.step == 3
    # A setting the checkpoint does have, at another value, is still a different network.
    bad = tmp_path / "a" / "last" / "config.json"
    config = json.loads(bad.read_text())
    config["network"]["config"]["base_channels"] *= 2
    bad.write_text(json.dumps(config))
    write_manifest(bad.parent)
    tr = Trainer(tiny_config("train.max_steps=5"), tmp_path / "c", device="cpu", quiet=True)
    with pytest.raises(ValueError, match="different network .*base_channels"):
        tr.warm_start(tmp_path / "a" / "last")


def torchrun_train(out, *flags, sets=TINY):
    """`difflab train digits8` in two real CPU processes (DDP over Gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "difflab.cli", "train", str(ROOT / "configs" / "digits8.toml"),
        "--out", str(out), "--no-report", "--device", "cpu", *flags,
        *[a for s in sets for a in ("--set", s)],
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_torchrun_two_processes_gloo(tmp_path):
    """Real torch.distributed: two CPU processes, DDP over Gloo, rank 0 writes."""
    proc = torchrun_train(tmp_path / "ddp", "--steps", "4")
    ck = load_checkpoint(tmp_path / "ddp" / "last", with_training_state=True)
    assert ck.state["step"] == 4
    assert ck.state["data"]["world_size"] == 2
    rows = [json.loads(line) for line in open(tmp_path / "ddp" / "metrics.jsonl")]
    # only rank 0 logs: a loss row per step, and one health check of the final samples
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if "health" in r] == [4]
    assert proc.stdout.count("stopped at step 4") == 1  # only rank 0 prints


def test_conditional_sample_grid_has_a_row_per_class(tmp_path):
    from PIL import Image

    tr = train(tmp_path / "run", 1, extra=["model.overrides.num_classes=10", "sample.steps=2"])
    gen = Generator.from_trainer(tr)
    count, nrow, conditions = report.grid_layout(tr, gen, 64)
    assert (count, nrow) == (60, 6) and conditions["classes"][:7] == [0] * 6 + [1]
    path = report.save_sample_grid(tr, tmp_path / "grid.png")
    width, height = Image.open(path).size
    assert height >= (10 * (8 + 2) + 2) * 2  # 10 rows of 8x8 images (padding 2, scale 2)


def test_lr_schedules_follow_their_closed_forms():
    from types import SimpleNamespace

    from difflab.training.trainer import lr_at

    cfg = SimpleNamespace(lr=2e-3, warmup_steps=10, lr_schedule="linear")
    assert lr_at(0, cfg, 0.0) == pytest.approx(2e-4)  # warm-up: (step + 1) / warmup_steps
    assert lr_at(20, cfg, 0.25) == pytest.approx(1.5e-3)  # linear: lr (1 - progress)
    assert lr_at(4, cfg, 0.02) == pytest.approx(2e-3 * 0.5 * 0.98)  # warm-up times decay
    # ...the warm-up over by a tenth of the budget: a 16-step run is not warmed for 10 steps
    assert lr_at(1, cfg, 1 / 16) == pytest.approx(2e-3 * 0.625 * 15 / 16)
    assert lr_at(4, cfg, 0.25) == pytest.approx(2e-3 * 0.75)
    assert lr_at(20, cfg, 1.0) == 0.0 and lr_at(20, cfg, 1.7) == 0.0
    assert lr_at(20, cfg, None) == pytest.approx(2e-3)  # no budget: nothing to decay over
    cfg.lr_schedule = "cosine"
    assert lr_at(20, cfg, 0.5) == pytest.approx(1e-3)  # half cosine: lr (1 + cos(pi p)) / 2
    assert lr_at(20, cfg, 1 / 3) == pytest.approx(2e-3 * 0.75)
    cfg.lr_schedule = "constant"
    assert lr_at(20, cfg, 0.9) == pytest.approx(2e-3)


def test_time_budget_decays_the_lr_to_zero_and_counts_resumed_time(tmp_path):
    extra = ["train.lr_schedule=linear", "train.minutes=0.03", "train.max_steps=100000"]
    tr = Trainer(tiny_config(*extra), tmp_path / "run", device="cpu", quiet=True)
    assert tr.train().why == "time budget"
    lrs = [json.loads(line)["lr"] for line in open(tmp_path / "run" / "metrics.jsonl")]
    after_warmup = lrs[2:]
    assert len(after_warmup) > 5
    assert all(b < a for a, b in zip(after_warmup, after_warmup[1:], strict=False))
    assert lrs[-1] < 0.2 * 2e-3  # the last steps run at the tail of the schedule
    # Resumed, the budget counts the time already trained: a spent budget takes no step.
    again = Trainer(tiny_config(*extra), tmp_path / "run", device="cpu", quiet=True)
    again.resume()
    assert again.elapsed >= 0.03 * 60
    reason = again.train()
    assert (reason.why, reason.step) == ("time budget", tr.step)


def test_torchrun_time_budget_stops_every_rank_together(tmp_path):
    """Each rank has its own clock; they must agree on the lr and on the step they stop at."""
    torchrun_train(tmp_path / "ddp", "--minutes", "0.05", sets=[*TINY, "train.lr_schedule=linear"])
    ck = load_checkpoint(tmp_path / "ddp" / "last", with_training_state=True)
    rows = [json.loads(line) for line in open(tmp_path / "ddp" / "metrics.jsonl")]
    rows = [r for r in rows if "loss" in r]
    assert rows[-1]["step"] == ck.state["step"] > 3
    assert rows[-1]["lr"] < rows[2]["lr"]


def test_sample_grid_draws_train_num_sample_images(tmp_path):
    """train.num_sample_images sets how many samples a grid shows: 8 make one row of 8, 16
    two rows, as tall again (the title strip aside)."""
    from PIL import Image

    heights = {}
    for n in (8, 16):
        tr = train(
            tmp_path / f"run{n}", 1, extra=[f"train.num_sample_images={n}", "sample.steps=2"]
        )
        path = report.save_sample_grid(tr, tmp_path / f"grid{n}.png")
        width, heights[n] = Image.open(path).size
    assert heights[16] - heights[8] == (8 + 2) * 2  # one more row of 8x8 tiles (scale 2)
    count, nrow, _ = report.grid_layout(tr, Generator.from_trainer(tr), 16)
    assert (count, nrow) == (16, 8)  # of 8 columns
