"""Autoguidance (Karras et al. 2024): a run keeps its EMA weights at train.guide_at of its budget
as the guide, checkpoints carry them and resume keeps them exactly; sampling steers by
D_guide + w (D - D_guide), with exact answers where the guide is the model itself, and
refuses what it cannot do in one line."""

import copy
import json
import shutil

import pytest
import torch
from tiny_run import tiny_config

from difflab.checkpoints.store import (
    GUIDE_EMA,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from difflab.cli import main
from difflab.config import ConfigError, load_config
from difflab.diffusion.denoiser import network_denoiser
from difflab.diffusion.process import as_time
from difflab.pipeline import Generator
from difflab.runs.report import grid_labels, sample_kwargs
from difflab.training.posthoc_snapshots import SNAPSHOT_DIR, snapshot_name
from difflab.training.trainer import Trainer

GUIDED = ["train.guide_at=0.75", "sample.autoguidance=2"]


def train(out, extra=(), resume_from=None):
    tr = Trainer(tiny_config("train.max_steps=8", *GUIDED, *extra), out, device="cpu",
                 quiet=True)
    if resume_from is not None:
        tr.resume(resume_from)
    tr.train()
    return tr


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """8 steps, the guide kept at 6 (0.75 of the budget), a checkpoint at 6 and at 8."""
    out = tmp_path_factory.mktemp("guided")
    train(out, ["train.checkpoint_every=6"])
    return out


def test_the_guide_is_the_ema_weights_at_its_fraction_of_the_budget(run):
    final = load_checkpoint(run / "last", with_training_state=True)
    at_six = load_checkpoint(run / "last.prev", with_training_state=True)
    assert final.config["guide"] == {"step": 6} and final.state["guide_step"] == 6
    assert at_six.state["step"] == 6
    guide = final.components["guide"]
    assert guide.keys() == at_six.ema.keys()
    for key, value in at_six.ema.items():
        assert torch.equal(guide[key], value), key
    # and it is not the final model: two more steps moved the EMA
    assert any(not torch.equal(guide[k], v) for k, v in final.ema.items())


def test_a_runs_grids_and_scores_draw_as_its_checkpoint_does(tmp_path):
    tr = train(tmp_path, ["train.checkpoint_every=100"])
    kw = sample_kwargs(tr)  # what the sample grid and FID during training draw with
    assert kw["autoguidance"] == 2.0
    live = Generator.from_trainer(tr).generate(2, seed=3, **kw)
    saved = Generator.from_checkpoint(tmp_path / "last", device="cpu")
    assert torch.equal(live, saved.generate(2, seed=3, sampler=kw["sampler"], steps=kw["steps"]))
    # before the guide is kept there is nothing to guide with, and the grid draws plainly
    early = Trainer(tiny_config("train.max_steps=8", *GUIDED), tmp_path / "e", device="cpu",
                    quiet=True)
    assert "autoguidance" not in sample_kwargs(early)


def test_info_names_the_guide_and_the_sampling_settings(run, capsys):
    assert main(["info", str(run / "last")]) == 0
    out = capsys.readouterr().out
    assert "guide        the EMA weights at step 6, for autoguidance" in out
    assert "autoguidance 2 (its [sample] settings)" in out


def test_info_describes_a_checkpoint_whose_sample_settings_are_not_usable(run, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(run / "last", bad)
    (bad / "manifest.json").unlink()  # as a checkpoint saved before manifests
    config = json.loads((bad / "config.json").read_text())
    config["run"]["sample"]["steps"] = -3
    (bad / "config.json").write_text(json.dumps(config))
    assert main(["info", str(bad)]) == 0
    out = capsys.readouterr().out
    assert "sampling     its [sample] settings are not usable: sample.steps must be > 0" in out
    assert "guide        the EMA weights at step 6" in out  # the rest is still described


def test_a_run_without_guide_at_keeps_none(tmp_path):
    tr = Trainer(tiny_config("train.max_steps=2"), tmp_path, device="cpu", quiet=True)
    tr.train()
    ck = load_checkpoint(tmp_path / "last")
    assert "guide" not in ck.components and "guide" not in ck.config


@pytest.mark.parametrize("every", [5, 7])  # resumed before the guide is kept, and after
def test_resume_keeps_or_takes_the_guide_exactly(tmp_path, every):
    straight = train(tmp_path / "a", [f"train.checkpoint_every={every}"])
    interrupted = tmp_path / "a" / "last.prev"  # the checkpoint at step `every`
    assert load_checkpoint(interrupted, with_training_state=True).state["step"] == every
    resumed = train(tmp_path / "b", [f"train.checkpoint_every={every}"], resume_from=interrupted)
    assert (resumed.step, resumed.guide_step) == (8, straight.guide_step) == (8, 6)
    for key, value in straight.guide.items():
        assert torch.equal(resumed.guide[key], value), key


# the guide kept from a power EMA of its own length, tracked beside as a post-hoc EMA to compare
GUIDE_AVERAGE = ["train.guide_ema_length=0.15", "train.posthoc_ema=[0.15]",
                 "train.posthoc_every=100"]


@pytest.mark.parametrize("every", [5, 7])  # resumed before the guide is kept, and after
def test_a_guide_from_its_own_average_is_that_power_ema_and_resumes_exactly(tmp_path, every,
                                                                         capsys):
    straight = train(tmp_path / "a", [f"train.checkpoint_every={every}", *GUIDE_AVERAGE])
    assert straight.guide_step == 6 and straight.guide_ema is not None  # it goes on
    tracked = load_checkpoint(tmp_path / "a" / SNAPSHOT_DIR / snapshot_name(6, 0.15)).model
    for key, value in tracked.items():
        assert torch.equal(straight.guide[key], value), key
    assert main(["info", str(tmp_path / "a" / "last")]) == 0
    assert "guide        a power EMA of length 0.15 at step 6" in capsys.readouterr().out
    interrupted = tmp_path / "a" / "last.prev"  # the checkpoint at step `every`
    kept = load_checkpoint(interrupted, with_training_state=True)
    assert GUIDE_EMA in kept.components  # carried before the guide is kept and after
    resumed = train(tmp_path / "b", [f"train.checkpoint_every={every}", *GUIDE_AVERAGE],
                    resume_from=interrupted)
    for key, value in straight.guide.items():
        assert torch.equal(resumed.guide[key], value), key
    # an export carries the guide, never the average it is taken from
    assert main(["export", str(interrupted), str(tmp_path / "x")]) == 0
    assert GUIDE_EMA not in load_checkpoint(tmp_path / "x").components
    # a run that would take its guide from another average is refused
    with pytest.raises(CheckpointError, match="guide's average at length 0.15"):
        train(tmp_path / "c", ["train.posthoc_ema=[0.15]", "train.posthoc_every=100"],
              resume_from=interrupted)


@pytest.mark.parametrize("average", [[], ["train.guide_ema_length=0.15"]])
def test_a_resume_that_grows_the_budget_takes_the_guide_again_where_it_now_belongs(
    tmp_path, average, capsys
):
    """8 steps keep the guide at 6; resumed to 16, the guide belongs at 12. The run lets go of
    the old one and takes it again at 12 from the average that went on, so it is exactly the
    guide of a run given 16 steps from the start (a constant learning rate: nothing else
    depends on the budget)."""
    def run(out, steps, resume_from=None):
        tr = Trainer(tiny_config(f"train.max_steps={steps}", *GUIDED, *average), out,
                     device="cpu", quiet=False)
        if resume_from is not None:
            tr.resume(resume_from)
        tr.train()
        return tr

    straight = run(tmp_path / "a", 16)
    short = run(tmp_path / "b", 8)
    assert (straight.guide_step, short.guide_step) == (12, 6)
    capsys.readouterr()
    grown = run(tmp_path / "b", 16, resume_from=tmp_path / "b" / "last")
    assert "guide (kept at step 6) is taken again at 0.75 of it" in capsys.readouterr().out
    assert grown.guide_step == 12
    for key, value in straight.guide.items():
        assert torch.equal(grown.guide[key], value), key
    # a budget that grows less, so that the guide's point is behind: the guide stays
    run(tmp_path / "c", 8)
    kept = run(tmp_path / "c", 9, resume_from=tmp_path / "c" / "last")  # at 8 of 9: past 0.75
    assert kept.guide_step == 6
    if average:  # a checkpoint from before the average went on past its guide keeps its guide
        ck = load_checkpoint(tmp_path / "b" / "last.prev", with_training_state=True)
        assert ck.state["step"] == 8
        old = {k: v for k, v in ck.components.items() if k != GUIDE_EMA}
        state = {**ck.state, "guide_ema_length": None}
        save_checkpoint(tmp_path / "d" / "last", config=ck.config, model=ck.model, ema=ck.ema,
                        optimizer=ck.optimizer, state=state, components=old)
        assert run(tmp_path / "d", 16, resume_from=tmp_path / "d" / "last").guide_step == 6


def test_a_checkpoint_that_names_a_guide_it_does_not_hold_is_refused(run, tmp_path):
    ck = load_checkpoint(run / "last", with_training_state=True)
    save_checkpoint(tmp_path / "bad", config=ck.model_config(), model=ck.model, ema=ck.ema,
                    optimizer=ck.optimizer, state=ck.state, components={})
    tr = Trainer(tiny_config("train.max_steps=8", *GUIDED), tmp_path / "c", device="cpu",
                 quiet=True)
    with pytest.raises(CheckpointError, match="names a guide at step 6 but the checkpoint holds"):
        tr.resume(tmp_path / "bad")


def test_a_guide_of_another_shape_is_refused_on_load(run, tmp_path):
    ck = load_checkpoint(run / "last", with_training_state=True)
    guide = dict(ck.components["guide"])
    key = next(iter(guide))
    guide[key] = torch.zeros(3, 3)
    save_checkpoint(tmp_path / "bad", config=ck.model_config(), model=ck.model, ema=ck.ema,
                    optimizer=ck.optimizer, state=ck.state, components={"guide": guide})
    with pytest.raises(CheckpointError, match="guide"):
        Generator.from_checkpoint(tmp_path / "bad", device="cpu")


@pytest.fixture(scope="module")
def gen(run):
    return Generator.from_checkpoint(run / "last", device="cpu")


def test_autoguidance_extrapolates_from_the_guide_to_the_model(gen):
    x, t = torch.randn(3, *gen.model_shape), torch.tensor([900.0, 500.0, 50.0])
    model = network_denoiser(gen.net, gen.process, gen.parameterization)(x, t)
    guide = network_denoiser(gen.guide, gen.process, gen.parameterization)(x, t)
    out = gen.denoiser(clip=None, autoguidance=2.5)(x, t)
    # Karras et al. 2024, eq. 3: D_guide + w (D - D_guide)
    assert torch.allclose(out.x0, guide.x0 + 2.5 * (model.x0 - guide.x0), atol=1e-5)
    assert not torch.allclose(model.x0, guide.x0, atol=1e-3)  # the guide differs


def test_a_guide_equal_to_the_model_changes_nothing_at_any_weight(gen):
    args = (gen.net, gen.process, gen.parameterization, gen.model_shape)
    same = Generator(*args, config=gen.config, guide=copy.deepcopy(gen.net))
    unguided = Generator(*args, config=gen.config)  # no guide: the default cannot apply
    assert unguided.sampling_settings().autoguidance is None
    kw = dict(steps=3, seed=4)
    plain = unguided.generate(2, **kw)
    # the checkpoint's default is autoguidance 2: with D_guide = D it is D exactly
    assert same.sampling_settings().autoguidance == 2.0
    assert torch.equal(same.generate(2, **kw), plain)
    assert torch.equal(same.generate(2, autoguidance=7.0, **kw), plain)
    assert not torch.equal(gen.generate(2, **kw), plain)  # the real guide does change it
    # weight 1 is the model alone, without calling the guide
    assert torch.equal(gen.generate(2, autoguidance=1.0, **kw), plain)


def test_the_checkpoint_default_applies_and_is_said(gen, run, tmp_path, capsys):
    settings = gen.sampling_settings()
    assert (settings.autoguidance, settings.source["autoguidance"]) == (2.0, "checkpoint")
    assert "autoguidance 2" in settings.summary()
    kw = dict(steps=3, seed=1)
    assert torch.equal(gen.generate(2, **kw), gen.generate(2, autoguidance=2.0, **kw))
    assert not torch.equal(gen.generate(2, **kw), gen.generate(2, autoguidance=1.5, **kw))
    out = tmp_path / "s.png"
    assert main(["sample", str(run / "last"), "-n", "2", "--steps", "2", "--quiet",
                 "--autoguidance", "3", "--out", str(out)]) == 0
    assert "autoguidance 3" in capsys.readouterr().out and out.is_file()


def test_the_progress_bar_counts_the_guides_calls(run, tmp_path, capsys):
    # ddim at 3 steps: three calls of the model and three of its guide; weight 1 calls only
    # the model
    for weight, calls in (("2", 6), ("1", 3)):
        assert main(["sample", str(run / "last"), "-n", "1", "--steps", "3", "--sampler",
                     "ddim", "--autoguidance", weight, "--out", str(tmp_path / "s.png")]) == 0
        last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
        assert f"{calls} network evaluations" in last


def test_eval_samples_with_the_checkpoints_autoguidance_and_says_so(run, tmp_path, capsys):
    report = tmp_path / "r.json"
    assert main(["eval", str(run / "last"), "--samples", "8", "--steps", "2", "--quiet",
                 "--json", str(report)]) == 0
    assert "autoguidance 2" in capsys.readouterr().out
    assert json.loads(report.read_text())["sampling"]["autoguidance"] == 2.0


def test_autoguidance_without_a_guide_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["sample", "mnist-digits-cond", "-n", "1", "--steps", "2", "--autoguidance",
                 "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "autoguidance needs a guide" in err and "train.guide_at" in err
    assert "Traceback" not in err and not out.exists()
    # weight 1, the model alone, needs no guide
    assert main(["sample", "mnist-digits-cond", "-n", "1", "--steps", "2", "--autoguidance",
                 "1", "--quiet", "--out", str(out)]) == 0


def _sigmas_of_calls(gen, net, **kw):
    """The noise level sigma/alpha of every call of `net` (the model or its guide) while
    drawing with `kw`."""
    sigmas = []

    def hook(module, args, output):
        x, t = args[0], args[1]
        sigmas.append(float(gen.process.sigma_ve(as_time(t, x.shape[0], x.device))[0]))

    handle = net.register_forward_hook(hook)
    try:
        images = gen.generate(2, seed=5, **kw)
    finally:
        handle.remove()
    return images, sigmas


def test_autoguidance_in_an_interval_calls_the_guide_only_at_those_noise_levels(gen):
    kw = dict(steps=6, sampler="ddim")
    _, model_sigmas = _sigmas_of_calls(gen, gen.net, **kw)
    low, high = sorted(model_sigmas)[1], sorted(model_sigmas)[-2]  # leaves out the 2 ends
    inside = [s for s in model_sigmas if low < s <= high]
    assert 0 < len(inside) < len(model_sigmas)
    images, guide_sigmas = _sigmas_of_calls(gen, gen.guide, guidance_interval=(low, high), **kw)
    assert guide_sigmas == inside  # the second call only where it guides
    # Every noise level inside: the same images as autoguidance at every step; none inside:
    # the model alone, exactly.
    every = gen.generate(2, seed=5, **kw)
    assert torch.equal(gen.generate(2, seed=5, guidance_interval=(0, 1e9), **kw), every)
    alone = gen.generate(2, seed=5, autoguidance=1.0, **kw)
    assert torch.equal(gen.generate(2, seed=5, guidance_interval=(1e8, 1e9), **kw), alone)
    assert not torch.equal(images, every) and not torch.equal(images, alone)


def test_an_autoguided_draw_takes_an_interval_from_the_command_line_and_says_so(
    run, tmp_path, capsys
):
    out = tmp_path / "s.png"
    argv = ["sample", str(run / "last"), "-n", "1", "--steps", "2", "--guidance-interval", "0.3",
            "3", "--out", str(out)]
    assert main(argv) == 0
    assert "autoguidance 2 at noise levels 0.3 to 3" in capsys.readouterr().out
    assert out.is_file()
    # weight 1 is the model alone, unguided: the interval has nothing to apply to, and says so
    assert main([*argv, "--autoguidance", "1"]) == 2
    err = capsys.readouterr().err
    assert "this draw is unguided (autoguidance 1 is the model alone)" in err
    assert "Traceback" not in err


def test_a_runs_sample_interval_applies_to_its_autoguidance(tmp_path):
    tr = train(tmp_path, ["train.checkpoint_every=100", "sample.guidance_interval=[0.5, 5]"])
    gen = Generator.from_checkpoint(tmp_path / "last", device="cpu")
    settings = gen.sampling_settings()
    assert (settings.autoguidance, settings.guidance_interval) == (2.0, (0.5, 5.0))
    assert settings.source["guidance_interval"] == "checkpoint"
    kw = dict(steps=4, seed=2)
    assert torch.equal(gen.generate(2, **kw), gen.generate(2, guidance_interval=(0.5, 5), **kw))
    assert sample_kwargs(tr)["autoguidance"] == 2.0
    assert sample_kwargs(tr)["guidance_interval"] == (0.5, 5.0)
    # the training grid's title says the interval, so the picture can be drawn again
    _, title = grid_labels(tr, n=2)
    assert "autoguidance 2 at noise levels 0.5 to 5" in title


def test_a_run_at_autoguidance_1_with_an_interval_still_draws_its_grids(tmp_path):
    # weight 1 is the model alone: its interval has nothing to apply to, and the run's grids
    # must not hand it to the Generator, which refuses an interval on an unguided draw
    tr = train(tmp_path, ["sample.autoguidance=1", "sample.guidance_interval=[0.5, 5]"])
    assert "guidance_interval" not in sample_kwargs(tr)
    _, title = grid_labels(tr, n=2)
    assert "autoguidance 1, seed 0" in title


def test_geneval_passes_autoguidance_on_rather_than_dropping_it(capsys):
    # shapes-text keeps no guide, so the GenEval path refuses the weight as sampling does
    assert main(["eval", "shapes-text", "--geneval", "--autoguidance", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "autoguidance needs a guide" in err and "Traceback" not in err


def test_autoguidance_and_guidance_together_are_refused():
    cond = Generator.from_checkpoint("fashion-mnist-cond", device="cpu")
    cond.guide = copy.deepcopy(cond.net)
    with pytest.raises(ValueError, match="two ways to guide the same steps"):
        cond.sampling_settings(guidance=3.0, conditioned=True, autoguidance=2.0)
    # the class is still drawn by the model and its guide alike
    settings = cond.sampling_settings(conditioned=True, autoguidance=2.0)
    assert settings.autoguidance == 2.0


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["sample.autoguidance=2"], "needs train.guide_at"),
        (["train.guide_at=0.25", "sample.autoguidance=2", "sample.guidance=3"],
         "set one of them"),
        (["train.guide_at=1"], "train.guide_at"),
        (["train.guide_at=0"], "train.guide_at"),
        (["train.guide_ema_length=0.1"], "needs train.guide_at"),
        (["train.guide_at=0.25", "train.guide_ema_length=0.5"], "train.guide_ema_length"),
        (["train.guide_at=0.25", "sample.autoguidance=-1"], "sample.autoguidance"),
    ],
)
def test_the_config_keys_are_checked_at_load(sets, message):
    assert load_config(None, GUIDED).train.guide_at == 0.75
    with pytest.raises(ConfigError, match=message):
        load_config(None, sets)


def test_an_fp16_export_keeps_the_guide_and_guides_as_the_run_did(run, tmp_path):
    """`difflab export --fp16` is how a model ships: its guide must travel with it, cast like
    the model, or the shipped model could not sample with its own autoguidance."""
    assert main(["export", str(run / "last"), str(tmp_path / "ship"), "--fp16", "--quiet"]) == 0
    shipped = load_checkpoint(tmp_path / "ship")
    source = load_checkpoint(run / "last")
    assert shipped.config["guide"] == {"step": 6}
    assert shipped.components["guide"].keys() == source.components["guide"].keys()
    for key, value in shipped.components["guide"].items():
        assert value.dtype == torch.float16, key
        assert torch.equal(value, source.components["guide"][key].half()), key
    exported = Generator.from_checkpoint(tmp_path / "ship", device="cpu")
    original = Generator.from_checkpoint(run / "last", device="cpu")
    a = exported.generate(2, seed=1, steps=4, autoguidance=2)
    b = original.generate(2, seed=1, steps=4, autoguidance=2)
    assert (a - b).abs().max() < 0.05  # fp16 weights, fp32 arithmetic: rounding only
    assert not torch.equal(a, exported.generate(2, seed=1, steps=4, autoguidance=1))
