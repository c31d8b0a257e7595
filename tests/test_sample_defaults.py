"""Sampling defaults come from the checkpoint's [sample] settings (sampler, steps, guidance,
DDIM's eta); arguments and command-line flags override them. Real shipped checkpoints, a few
samples each."""

import copy
import json
import re
import shutil

import pytest
import torch

from difflab.checkpoints.names import WEIGHTS_DIR
from difflab.cli import main
from difflab.config import ConfigError, config_from_dict
from difflab.pipeline import FALLBACK_SAMPLER, Generator
from difflab.samplers import DEFAULTS, make_timesteps


class StepCounter:
    """A sampler callback: how many steps ran."""

    def __init__(self):
        self.calls = 0

    def __call__(self, info: dict) -> None:
        self.calls += 1


@pytest.fixture(scope="module")
def fashion():
    return Generator.from_checkpoint("fashion-mnist", device="cpu")


@pytest.fixture(scope="module")
def fashion_cond():
    return Generator.from_checkpoint("fashion-mnist-cond", device="cpu")


def with_sample_settings(gen: Generator, **sample) -> Generator:
    """The same network with other [sample] settings in its config."""
    config = copy.deepcopy(gen.config)
    config["run"]["sample"] = sample
    return Generator(gen.net, gen.process, gen.parameterization, gen.model_shape,
                     num_classes=gen.num_classes, class_names=gen.class_names, config=config,
                     guide=gen.guide)


@pytest.mark.parametrize(
    ("name", "sampler", "steps", "guidance", "autoguidance", "interval"),
    [("fashion-mnist", "dpmpp_2m_sde", 13, None, 2.0, (0.09, 12.0)),
     ("fashion-mnist-cond", "dpmpp_2m", 20, 3.0, None, (0.3, 3.0)),
     ("mnist-digits-cond", "dpmpp_2m", 20, 2.0, None, None),
     ("fashion-text", "dpmpp_2m", 20, 3.0, None, None),
     ("fashion-text-attributes", "dpmpp_2m", 20, 3.0, None, None),
     ("shapes-text", "dpmpp_2m", 20, 3.0, None, None)],
)
def test_shipped_models_carry_their_benchmarked_settings(
    name, sampler, steps, guidance, autoguidance, interval
):
    run = json.loads((WEIGHTS_DIR / name / "config.json").read_text())["run"]
    sample = config_from_dict(run).sample
    assert (sample.sampler, sample.steps, sample.guidance) == (sampler, steps, guidance)
    # the unconditional model steers away from an earlier version of itself, calling it only
    # at the 7 of its 13 noise levels in (0.09, 12]: 20 network calls (BENCHMARKS.md, "Twenty
    # network calls"); the class-conditional one guides only in (0.3, 3]: the class agreement
    # of guidance 2 at every step, at a lower FID (BENCHMARKS.md, "Class-conditional
    # Fashion-MNIST")
    assert sample.autoguidance == autoguidance
    assert sample.guidance_interval == interval
    # fashion-mnist's 13 steps on a Karras grid from sigma 40 with rho 12: lower FID at two
    # of three seeds and 8 % on the mean (BENCHMARKS.md, "The time grid at 20 calls")
    grid = (40.0, 12.0) if name == "fashion-mnist" else (None, None)
    assert (sample.sigma_max, sample.rho) == grid


def test_generate_uses_the_checkpoints_sampler_and_steps(fashion):
    assert fashion.sample_defaults() == {"sampler": "dpmpp_2m_sde", "steps": 13,
                                         "autoguidance": 2.0, "guidance_interval": (0.09, 12.0),
                                         "sigma_max": 40.0, "rho": 12.0}
    counter = StepCounter()
    default = fashion.generate(2, seed=0, callback=counter)
    assert counter.calls == 13
    assert torch.equal(default, fashion.generate(2, seed=0, sampler="dpmpp_2m_sde", steps=13,
                                                 autoguidance=2.0, guidance_interval=(0.09, 12)))
    assert not torch.equal(default, fashion.generate(2, seed=0, autoguidance=1.0))
    assert not torch.equal(default, fashion.generate(2, seed=0, sampler="ddim", steps=50))


def test_steps_alone_keep_the_checkpoints_sampler(fashion):
    counter = StepCounter()
    five = fashion.generate(2, seed=0, steps=5, callback=counter)
    assert counter.calls == 5
    assert torch.equal(five, fashion.generate(2, seed=0, sampler="dpmpp_2m_sde", steps=5))


def test_another_sampler_alone_gets_its_own_default_steps(fashion):
    """The checkpoint's 20 steps were chosen for DPM-Solver++(2M), not for DDIM."""
    settings = fashion.sampling_settings(sampler="ddim")
    assert (settings.steps, settings.source["steps"]) == (DEFAULTS["ddim"][0], "default")
    counter = StepCounter()
    fashion.generate(1, sampler="ddim", callback=counter)
    assert counter.calls == DEFAULTS["ddim"][0] == 50
    # The checkpoint's own sampler named explicitly keeps the checkpoint's steps.
    ddim7 = with_sample_settings(fashion, sampler="ddim", steps=7)
    assert ddim7.sampling_settings(sampler="ddim").steps == 7
    assert ddim7.sampling_settings(sampler="dpmpp_2m").steps == DEFAULTS["dpmpp_2m"][0]


def test_ddim_eta_comes_from_the_checkpoint_only_for_ddim(fashion):
    noisy = with_sample_settings(fashion, sampler="ddim", steps=6, eta=1.0)  # no autoguidance
    assert noisy.sample_defaults() == {"sampler": "ddim", "steps": 6, "eta": 1.0}
    alone = dict(sampler="ddim", steps=6, autoguidance=1.0)  # the model alone, as `noisy` draws
    assert torch.equal(noisy.generate(1, seed=0), fashion.generate(1, seed=0, eta=1.0, **alone))
    assert torch.equal(noisy.generate(1, seed=0, eta=0.0), fashion.generate(1, seed=0, **alone))
    # dpmpp_2m takes no eta: the checkpoint's DDIM setting must not reach it.
    assert noisy.sampling_settings(sampler="dpmpp_2m").eta is None
    assert noisy.generate(1, sampler="dpmpp_2m", steps=2).shape == (1, 1, 28, 28)


def test_guidance_default_for_a_conditional_model(fashion_cond):
    kw = dict(classes=["sneaker"], seed=0, steps=10)  # steps at noise levels in (0.3, 3]
    default = fashion_cond.generate(2, **kw)
    assert torch.equal(default, fashion_cond.generate(2, guidance=3.0, guidance_interval=(0.3, 3),
                                                      **kw))
    plain = fashion_cond.generate(2, guidance=1.0, **kw)  # overridden: the plain conditional
    assert not torch.equal(default, plain)
    # No class asked for: nothing to guide toward, so no guidance (and no error).
    settings = fashion_cond.sampling_settings()
    assert settings.guidance is None and "guidance" not in settings.source
    assert fashion_cond.generate(1, steps=2).shape == (1, 1, 28, 28)


def test_unconditional_model_ignores_guidance_settings(fashion):
    guided = with_sample_settings(fashion, sampler="dpmpp_2m_sde", steps=20, guidance=3.0,
                                  sigma_max=40.0, rho=12.0)  # fashion-mnist's own grid
    assert "guidance" not in guided.sample_defaults()
    assert guided.sampling_settings(conditioned=True).guidance is None
    assert torch.equal(guided.generate(1, steps=2), fashion.generate(1, steps=2, autoguidance=1))


def test_text_model_guidance_needs_a_prompt():
    gen = Generator.from_checkpoint("fashion-text", device="cpu")
    kw = dict(prompt="a leather handbag", seed=0, steps=2)
    assert torch.equal(gen.generate(1, **kw), gen.generate(1, guidance=3.0, **kw))
    # A negative prompt works without --guidance: the checkpoint's guidance is there.
    assert gen.generate(1, negative_prompt="a sandal", **kw).shape == (1, 1, 28, 28)
    assert gen.sampling_settings().guidance is None  # no prompt: an unguided draw
    assert gen.generate(1, steps=2).shape == (1, 1, 28, 28)


def test_checkpoint_without_sample_guidance_still_loads(fashion_cond, tmp_path):
    """Checkpoints saved before [sample].guidance existed: no guidance by default."""
    old = tmp_path / "old"
    shutil.copytree(WEIGHTS_DIR / "fashion-mnist-cond", old)
    (old / "manifest.json").unlink()  # those were saved before manifests, too
    config = json.loads((old / "config.json").read_text())
    del config["run"]["sample"]["guidance"]
    del config["run"]["sample"]["guidance_interval"]  # which came later still
    (old / "config.json").write_text(json.dumps(config, indent=2))
    gen = Generator.from_checkpoint(old, device="cpu")
    assert gen.sample_defaults()["guidance"] is None
    kw = dict(classes=["bag"], seed=0, steps=2)
    # guidance 1 is the plain conditional model, exactly
    assert torch.equal(gen.generate(1, **kw), fashion_cond.generate(1, guidance=1.0, **kw))


def test_sample_guidance_is_validated():
    assert config_from_dict({}).sample.guidance is None
    assert config_from_dict({"sample": {"guidance": 2}}).sample.guidance == 2.0
    with pytest.raises(ConfigError, match="sample.guidance must be >= 0"):
        config_from_dict({"sample": {"guidance": -1}})


def test_generator_without_a_config_falls_back(fashion):
    """A Generator over a live trainer's weights has no [sample] settings."""
    bare = Generator(fashion.net, fashion.process, fashion.parameterization, fashion.model_shape)
    settings = bare.sampling_settings()
    assert (settings.sampler, settings.steps) == (FALLBACK_SAMPLER, DEFAULTS[FALLBACK_SAMPLER][0])
    assert settings.source == {"sampler": "default", "steps": "default"}
    # The explicit keywords training's report passes still decide everything.
    kw = dict(sampler="ddim", steps=4, clip="static", eta=0.0, seed=0)
    # (a bare Generator has no guide: the checkpoint's drawn with the model alone is the same)
    assert torch.equal(bare.generate(2, **kw), fashion.generate(2, autoguidance=1.0, **kw))


def test_cli_says_what_it_samples_with(tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["sample", "fashion-mnist", "--steps", "3", "-n", "2", "--out", str(out)]) == 0
    assert out.is_file()
    assert (
        "difflab: sampling with dpmpp_2m_sde, 3 steps (Karras grid from sigma 40, rho 12), "
        "autoguidance 2 at noise levels 0.09 to 12 (sampler, sigma max, rho, autoguidance and "
        "guidance interval: the checkpoint's [sample] settings; steps: --steps)"
    ) in capsys.readouterr().out
    assert main(["sample", "fashion-mnist-cond", "--class", "bag", "-n", "1", "--out",
                 str(out)]) == 0
    assert (
        "difflab: sampling with dpmpp_2m, 20 steps, guidance 3 at noise levels 0.3 to 3 (the "
        "checkpoint's [sample] settings; --sampler/--steps/--guidance/--guidance-interval "
        "override)"
    ) in capsys.readouterr().out
    assert main(["sample", "fashion-mnist", "--sampler", "ddim", "--eta", "0.5", "-n", "1",
                 "--out", str(out)]) == 0
    assert (
        "difflab: sampling with ddim, 50 steps, autoguidance 2 at noise levels 0.09 to 12, eta "
        "0.5 (sampler: --sampler; steps: ddim's default; autoguidance and guidance interval: "
        "the checkpoint's [sample] settings)"
    ) in capsys.readouterr().out


def test_cli_eta_with_a_sampler_that_has_none(tmp_path, capsys):
    assert main(["sample", "fashion-mnist-cond", "--eta", "0.5", "-n", "1", "--out",
                 str(tmp_path / "s.png")]) == 2
    assert re.search("--eta is a setting of ddim.*samples with dpmpp_2m", capsys.readouterr().err)


def test_the_checkpoints_karras_grid_goes_with_its_own_sampler(fashion):
    """[sample] sigma_max and rho shape the time grid of the checkpoint's own sampler (the
    grid its steps were chosen on); another sampler takes its own grid; given values win; a
    sampler that does not step on a Karras grid refuses them in one line."""
    gen = with_sample_settings(fashion, sampler="dpmpp_2m", steps=5, sigma_max=40.0, rho=9.0)
    assert gen.sample_defaults() == {"sampler": "dpmpp_2m", "steps": 5, "sigma_max": 40.0,
                                     "rho": 9.0}

    def grid(**kw) -> list[float]:
        ts: list[float] = []
        gen.generate(1, seed=0, callback=lambda info: ts.append(float(info["t"])), **kw)
        return ts

    def karras(sigma_max: float, rho: float, steps: int) -> list[float]:
        return make_timesteps(gen.process, steps, "karras", sigma_max=sigma_max, rho=rho).tolist()

    assert grid() == pytest.approx(karras(40.0, 9.0, 5), rel=1e-6)
    assert grid(sigma_max=20.0) == pytest.approx(karras(20.0, 9.0, 5), rel=1e-6)
    assert grid(rho=3.0) == pytest.approx(karras(40.0, 3.0, 5), rel=1e-6)
    # another sampler on a Karras grid: its own (sigma 80, rho 7), with its own 20 steps
    assert grid(sampler="dpmpp_3m") == pytest.approx(karras(80.0, 7.0, 20), rel=1e-6)
    assert "(Karras grid from sigma 40, rho 9)" in gen.sampling_settings().summary()
    with pytest.raises(ValueError, match="ddim steps on a 'uniform' grid"):
        gen.sampling_settings("ddim", rho=9.0)
    assert gen.sampling_settings("ddim").sigma_max is None  # the checkpoint's grid is not ddim's
    run = copy.deepcopy(fashion.config["run"])
    run["sample"].update(sampler="ddim", sigma_max=40.0)
    with pytest.raises(ConfigError, match="sample.sigma_max shapes the Karras time grid"):
        config_from_dict(run)
    run["sample"].update(sampler="dpmpp_2m", sigma_max=0.0)
    with pytest.raises(ConfigError, match="sample.sigma_max"):
        config_from_dict(run)


def test_more_steps_than_the_process_has_are_refused_before_anything_runs(fashion, capsys,
                                                                          tmp_path):
    """--steps over a discrete process's T is refused when the settings are resolved: before
    the command says how it samples or offers to compile a network for the job."""
    T = fashion.process.T
    with pytest.raises(ValueError, match=f"steps {T + 1} is more than this model's T = {T} "
                                         f"discrete time steps: give 1..{T}"):
        fashion.sampling_settings("ddim", T + 1)
    assert fashion.sampling_settings("ddim", T).steps == T
    out = tmp_path / "s.png"
    assert main(["sample", "fashion-mnist", "--steps", "100000", "-n", "1", "--out",
                 str(out)]) == 2
    said = capsys.readouterr()
    assert "compiled" not in said.out and "sampled with" not in said.out and not out.exists()
    assert said.err.strip() == (f"difflab: error: steps 100000 is more than this model's "
                                f"T = {T} discrete time steps: give 1..{T}")


def test_the_adaptive_sampler_is_not_said_to_take_a_step_count(fashion):
    """The ode sampler's solver picks its own steps (only the grid's two ends reach it): the
    line that says how a draw runs must not promise --steps 5 of them."""
    summary = fashion.sampling_settings("ode", 5).summary()
    assert summary.startswith("ode, adaptive steps (its solver takes as many as its tolerance")
    assert "5 steps" not in summary and "the steps given are not used" in summary
    assert "not used" not in fashion.sampling_settings("ode").summary()
    assert fashion.sampling_settings("ddim", 5).summary().startswith("ddim, 5 steps")


def test_generate_names_a_misspelt_keyword_a_single_class_and_a_bad_seed():
    """What generate() passes on to the sampler is checked as generate()'s: a misspelt or
    diffusers-style keyword is named with what it takes; one class (or "all") need not be a
    list; the seed has the command line's range."""
    from difflab.pipeline import Generator

    gen = Generator.from_checkpoint("mnist-digits-cond")
    with pytest.raises(ValueError, match=r"^generate\(\) takes no guidnace \(did you mean "
                                         r"guidance\?\); the dpmpp_2m sampler's options"):
        gen.generate(1, classes=[7], guidnace=3)
    with pytest.raises(ValueError, match=r"num_inference_steps \(diffusers' name\): give steps="):
        gen.generate(1, num_inference_steps=7)
    for seed in (-1, 2**70, 1.5, True):
        with pytest.raises(ValueError, match="seed must be a whole number from 0 to 4294967295"):
            gen.generate(1, seed=seed)
    assert gen.resolve_labels("seven", 2).tolist() == [7, 7]
    assert gen.resolve_labels(3, 1).tolist() == [3]
    assert gen.resolve_labels("all", 12).tolist() == [*range(10), 0, 1]
    # more classes than samples: the last ones would not be drawn, so it is refused, as
    # prompts are
    with pytest.raises(ValueError, match=r"^3 classes for 2 samples: the samples take them "
                                         r"in turn; draw at least 3$"):
        gen.generate(2, classes=[1, 2, 3])
    with pytest.raises(ValueError, match=r"^every class \(10\) for 1 sample: .* at least 10$"):
        gen.resolve_labels("all", 1)
    with pytest.raises(ValueError, match="classes must be a class name or index, or a list"):
        gen.resolve_labels(7.5, 1)
