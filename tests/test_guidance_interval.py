"""Guidance in a limited interval of noise levels (Kynkaanniemi et al. 2024): the guided
prediction inside (low, high], the plain conditional one outside, per sample, with exact
answers against plain guidance and the conditional model; then the same through a shipped
checkpoint, its [sample] settings, the command line and the config file."""

import copy
import json
from pathlib import Path

import pytest
import torch

from difflab.cli import main
from difflab.config import ConfigError, load_config
from difflab.diffusion.denoiser import GuidedDenoiser, Prediction
from difflab.diffusion.process import DiscreteProcess, as_time, expand_like
from difflab.pipeline import Generator

ROOT = Path(__file__).resolve().parents[1]


class Affine:
    """A denoiser whose prediction is a known function of (x, t), counting its calls."""

    def __init__(self, process, shift: float):
        self.process, self.shift, self.calls = process, shift, 0

    def __call__(self, x, t):
        self.calls += 1
        tt = expand_like(as_time(t, x.shape[0]).to(x.dtype), x)
        x0 = 0.5 * x + self.shift * (1 + tt / 1000)
        return Prediction(x0, self.process.eps_from_x0(x, t, x0))


@pytest.fixture(scope="module")
def process():
    return DiscreteProcess.from_schedule("cosine", 1000)


def pair(process):
    return Affine(process, 1.0), Affine(process, -1.0)


def test_an_interval_holding_every_noise_level_is_plain_guidance(process):
    x, t = torch.randn(3, 1, 4, 4), torch.full((3,), 700.0)
    plain = GuidedDenoiser(*pair(process), 4.0)(x, t)
    wide = GuidedDenoiser(*pair(process), 4.0, interval=(0.0, 1e9))(x, t)
    assert torch.equal(plain.x0, wide.x0) and torch.equal(plain.eps, wide.eps)
    # and guidance did something: w = 4 moves x0 by (w - 1) (c - u) = 3 * 2 * (1 + 0.7)
    cond = Affine(process, 1.0)(x, t)
    assert torch.allclose(plain.x0 - cond.x0, torch.full_like(x, 3 * 2 * 1.7))


def test_outside_the_interval_is_the_conditional_model_without_its_second_call(process):
    cond, uncond = pair(process)
    x, t = torch.randn(2, 1, 4, 4), torch.full((2,), 950.0)  # sigma ~ 12.7
    guided = GuidedDenoiser(cond, uncond, 7.5, interval=(0.3, 3.0))(x, t)
    expected = Affine(process, 1.0)(x, t)
    assert torch.equal(guided.x0, expected.x0) and torch.equal(guided.eps, expected.eps)
    assert (cond.calls, uncond.calls) == (1, 0)


def test_the_interval_is_open_below_and_closed_above(process):
    t = torch.tensor([200.0, 500.0, 800.0])
    sigma = process.sigma_ve(as_time(t))
    low, high = float(sigma[0]), float(sigma[2])
    x = torch.randn(3, 1, 2, 2)
    den = GuidedDenoiser(*pair(process), 3.0, interval=(low, high))
    w = den.scale_at(x, t)
    assert w.flatten().tolist() == [1.0, 3.0, 3.0]  # sigma == low: out; sigma == high: in


def test_a_mixed_batch_guides_each_sample_by_its_own_noise_level(process):
    x, t = torch.randn(4, 1, 4, 4), torch.tensor([100.0, 600.0, 750.0, 990.0])
    sigma = process.sigma_ve(as_time(t))
    inside = (sigma > 0.3) & (sigma <= 3.0)
    assert inside.tolist() == [False, True, True, False]  # the grid the test means
    guided = GuidedDenoiser(*pair(process), 5.0, interval=(0.3, 3.0))(x, t)
    plain = GuidedDenoiser(*pair(process), 5.0)(x, t)
    cond = Affine(process, 1.0)(x, t)
    for i, is_in in enumerate(inside.tolist()):
        want = plain if is_in else cond
        assert torch.allclose(guided.x0[i], want.x0[i], atol=1e-6)
        assert torch.allclose(guided.eps[i], want.eps[i], atol=1e-5)


@pytest.mark.parametrize("interval", [(3.0, 0.3), (1.0, 1.0), (-1.0, 3.0), (float("nan"), 3.0),
                                      (1.0,), "0.3 3"])
def test_a_bad_interval_is_refused_in_one_line(process, interval):
    with pytest.raises(ValueError, match="guidance interval"):
        GuidedDenoiser(*pair(process), 3.0, interval=interval)


@pytest.fixture(scope="module")
def cond_model():
    return Generator.from_checkpoint("fashion-mnist-cond", device="cpu")


def test_a_shipped_model_through_the_generator(cond_model):
    kw = dict(classes=["bag", "sneaker"], guidance=3.0, steps=4, seed=1)
    plain = cond_model.generate(2, guidance_interval=(0, 1e9), **kw)  # every step guided
    # an interval above every noise level of the grid: the plain conditional model
    unguided = cond_model.generate(2, **{**kw, "guidance": 1.0})
    assert torch.equal(cond_model.generate(2, guidance_interval=(1e8, 1e9), **kw), unguided)
    assert not torch.equal(plain, unguided)
    middle = cond_model.generate(2, guidance_interval=(0.3, 3.0), **kw)
    assert not torch.equal(middle, plain) and not torch.equal(middle, unguided)
    # (0.3, 3] is the shipped model's own [sample] interval
    assert torch.equal(cond_model.generate(2, **kw), middle)


def test_the_checkpoints_interval_is_the_default_and_an_argument_wins(cond_model):
    config = copy.deepcopy(cond_model.config)
    config["run"]["sample"]["guidance_interval"] = [0.5, 2.0]
    gen = Generator(cond_model.net, cond_model.process, cond_model.parameterization,
                    cond_model.model_shape, num_classes=cond_model.num_classes,
                    class_names=cond_model.class_names, config=config)
    settings = gen.sampling_settings(conditioned=True)
    assert settings.guidance_interval == (0.5, 2.0)
    assert settings.source["guidance_interval"] == "checkpoint"
    assert settings.summary() == "dpmpp_2m, 20 steps, guidance 3 at noise levels 0.5 to 2"
    kw = dict(classes=["trouser"], steps=4, seed=0)
    assert torch.equal(gen.generate(1, **kw),
                       cond_model.generate(1, guidance_interval=(0.5, 2.0), **kw))
    assert torch.equal(gen.generate(1, guidance_interval=(0.3, 3), **kw),
                       cond_model.generate(1, **kw))
    # without an interval in its config, guidance runs at every step
    del config["run"]["sample"]["guidance_interval"]
    assert gen.sampling_settings(conditioned=True).guidance_interval is None
    # no class asked: nothing is guided, so no interval either
    assert gen.sampling_settings().guidance_interval is None


def test_the_command_line_says_it_and_refuses_a_reversed_interval(tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["sample", "fashion-mnist-cond", "--class", "bag", "--steps", "3", "-n", "1",
                 "--guidance-interval", "0.3", "3", "--out", str(out)]) == 0
    assert out.is_file()
    assert "guidance 3 at noise levels 0.3 to 3" in capsys.readouterr().out
    assert main(["sample", "fashion-mnist-cond", "--class", "bag", "-n", "1",
                 "--guidance-interval", "3", "0.3", "--out", str(tmp_path / "t.png")]) == 2
    err = capsys.readouterr().err
    assert "--guidance-interval 3 0.3: the low noise level must be below the high one" in err
    assert "Traceback" not in err and not (tmp_path / "t.png").exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [("[3, 0.3]", "low < high"), ("[-1, 3]", "must each be >= 0"), ("[1]", "2 items")],
)
def test_the_config_key_is_checked_at_load(value, message):
    guided = ["sample.guidance=3"]
    assert load_config(
        None, [*guided, "sample.guidance_interval=[0.3, 3]"]
    ).sample.guidance_interval == (0.3, 3.0)
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*guided, f"sample.guidance_interval={value}"])


def test_a_config_with_an_interval_but_no_guidance_is_refused():
    # fashion_mnist_large samples unguided: an interval there would never apply
    unguided = ROOT / "configs" / "fashion_mnist_large.toml"
    with pytest.raises(ConfigError, match=r"needs sample.guidance \(e.g. 3\) or "
                                          r"sample.autoguidance \(e.g. 2\)"):
        load_config(unguided, ["sample.guidance_interval=[0.3, 3]"])
    # the default preset autoguides, and the interval applies to that
    default = ROOT / "configs" / "fashion_mnist.toml"
    interval = load_config(default, ["sample.guidance_interval=[0.3, 3]"]).sample.guidance_interval
    assert interval == (0.3, 3.0)


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["fashion-mnist", "--autoguidance", "1"],
         "this draw is unguided (autoguidance 1 is the model alone): give autoguidance above 1"),
        (["fashion-mnist-cond"], "guidance needs a class or a prompt, and none was given"),
        (["fashion-mnist-cond", "--class", "bag", "--guidance", "1"],
         "guidance 1 is the conditional model alone (one network call a step): give guidance "
         "above 1"),
    ],
)
def test_an_interval_on_a_draw_that_is_not_guided_is_refused(tmp_path, capsys, argv, why):
    # an interval that silently did nothing would look like a setting that works
    out = tmp_path / "s.png"
    assert main(["sample", *argv, "-n", "1", "--steps", "2", "--guidance-interval", "0.3", "3",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"a guidance interval needs guidance, and {why}" in err
    assert "Traceback" not in err and not out.exists()


def test_the_library_refuses_an_interval_where_the_checkpoint_has_no_guidance(cond_model):
    config = copy.deepcopy(cond_model.config)
    del config["run"]["sample"]["guidance"]  # this code's default: no guidance
    del config["run"]["sample"]["guidance_interval"]
    gen = Generator(cond_model.net, cond_model.process, cond_model.parameterization,
                    cond_model.model_shape, num_classes=cond_model.num_classes,
                    class_names=cond_model.class_names, config=config)
    assert gen.sampling_settings(conditioned=True).guidance is None
    with pytest.raises(ValueError, match=r"samples without guidance by default: give guidance"):
        gen.generate(1, classes=["bag"], steps=2, guidance_interval=(0.3, 3.0))
    # with guidance given, the same interval is used
    settings = gen.sampling_settings(guidance=2.0, conditioned=True, guidance_interval=(0.3, 3))
    assert settings.guidance_interval == (0.3, 3.0)


def test_eval_records_the_interval_it_sampled_with(tmp_path, capsys):
    report = tmp_path / "r.json"
    assert main(["eval", "fashion-mnist-cond", "--samples", "8", "--steps", "2", "--quiet",
                 "--guidance-interval", "0.3", "3", "--json", str(report)]) == 0
    sampling = json.loads(report.read_text())["sampling"]
    assert (sampling["guidance"], sampling["guidance_interval"]) == (3.0, [0.3, 3.0])
    # the printed report says it too: the interval changes the score
    assert "guidance 3.0 at noise levels 0.3 to 3;" in capsys.readouterr().out
