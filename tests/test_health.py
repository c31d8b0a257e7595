"""The training health monitor: silent on healthy samples, specific on each way they go wrong."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from difflab.build import build_network, build_process
from difflab.checkpoints.names import WEIGHTS_DIR
from difflab.checkpoints.store import write_manifest
from difflab.cli import main
from difflab.config import load_config
from difflab.data import DataConfig, load_dataset
from difflab.pipeline import Generator
from difflab.training.health import (
    DataStats,
    Finding,
    check_samples,
    check_weights,
    data_stats,
    looks_like_data,
    stats_to_dict,
    summary,
    throughput_finding,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = {p.name for p in WEIGHTS_DIR.iterdir() if p.is_dir()}
FAST = dict(sampler="dpmpp_2m", steps=8, seed=0)  # the shipped models draw clothes at 8 steps


@pytest.fixture(scope="module")
def datasets():
    return {name: load_dataset(DataConfig(name=name)) for name in ("fashion_mnist", "mnist")}


@pytest.fixture(scope="module")
def stats(datasets) -> dict[str, DataStats]:
    return {name: data_stats(data.images) for name, data in datasets.items()}


@pytest.fixture(scope="module")
def clothes(datasets) -> torch.Tensor:
    """32 real training images, for building the broken batches below."""
    images = datasets["fashion_mnist"].images
    return images[torch.arange(32) * 1871 + 5]


def kinds(findings: list[Finding]) -> list[str]:
    return [f.kind for f in findings]


# --------------------------------------------------------------------------- no false alarms
@pytest.mark.parametrize(
    "name, dataset, classes",
    [
        ("fashion-mnist", "fashion_mnist", None),
        ("fashion-mnist-cond", "fashion_mnist", list(range(10))),
        ("mnist-digits-cond", "mnist", list(range(10))),
    ],
)
def test_shipped_models_samples_raise_no_alarm(stats, name, dataset, classes):
    if name not in SHIPPED:
        pytest.skip(f"{name} is not shipped")
    samples = Generator.from_checkpoint(name, device="cpu").generate(16, classes=classes, **FAST)
    findings = check_samples(samples, stats[dataset], step=4000)
    assert findings == []
    assert looks_like_data(findings)
    assert summary(findings) == "samples look like data"


@pytest.mark.parametrize("dataset", ["fashion_mnist", "mnist"])
def test_real_images_and_one_class_alone_raise_no_alarm(datasets, stats, dataset):
    """A class-conditional grid asked for one class is not collapse: the trainer passes varied
    classes, and one class alone keeps well over the collapse threshold of diversity."""
    data = datasets[dataset]
    held_out = data.images[torch.arange(32) * 97 + 13]  # between the stats' evenly spaced ones
    assert check_samples(held_out, stats[dataset], 1) == []
    one_class = data.images[data.labels == 1][:32]  # trousers / ones: the least varied class
    assert check_samples(one_class, stats[dataset], 1) == []


def test_sample_judges_a_healthy_checkpoint_silently(stats, tmp_path, capsys):
    """`difflab sample` judges its samples by the data statistics a checkpoint records: the
    shipped Fashion-MNIST weights, given their data's statistics as a run records them, draw
    no warning (the noisy few-step run's warning: test_training_health)."""
    copy = tmp_path / "fashion-mnist"
    shutil.copytree(WEIGHTS_DIR / "fashion-mnist", copy)
    config = json.loads((copy / "config.json").read_text())
    config["data_stats"] = stats_to_dict(stats["fashion_mnist"])
    (copy / "config.json").write_text(json.dumps(config))
    write_manifest(copy)
    assert main(["sample", str(copy), "-n", "16", "--out", str(tmp_path / "s.png")]) == 0
    err = capsys.readouterr().err
    for said in ("still noise", "near-black", "near-white", "flat shade", "pixels are pure",
                 "nearly alike"):
        assert said not in err, err


def _smooth_rgb(n: int, seed: int) -> torch.Tensor:
    """Smooth RGB 32x32 images: random 4x4 colour fields, upsampled bilinearly, as uint8."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    return (F.interpolate(coarse, size=32, mode="bilinear") * 255).round().to(torch.uint8)


def test_statistics_are_scale_free_rgb_and_8x8():
    rgb = data_stats(_smooth_rgb(512, seed=0))
    assert check_samples(_smooth_rgb(32, seed=1), rgb, 10) == []
    g = torch.Generator().manual_seed(0)
    assert kinds(check_samples(torch.randn(32, 3, 32, 32, generator=g).clamp(-1, 1), rgb, 10)) == [
        "noise"
    ]
    digits = load_dataset(DataConfig(name="digits")).images  # 8x8, 1,797 images
    d8 = data_stats(digits[::2])
    assert check_samples(digits[1::2][:32], d8, 10) == []
    assert kinds(check_samples(torch.randn(32, 1, 8, 8, generator=g), d8, 10)) == ["noise"]


def test_data_stats_read_uint8_and_float_alike(clothes):
    a, b = data_stats(clothes), data_stats(clothes.float() / 127.5 - 1)
    for field in ("hf_median", "std_median", "mean_low", "black", "white", "diversity"):
        assert getattr(a, field) == pytest.approx(getattr(b, field), abs=1e-5)


# --------------------------------------------------------------------------- alarms
def test_untrained_network_draws_noise(stats):
    """What a run that trained for 7 steps draws: its network still outputs ~0, so the
    sampler returns its starting noise."""
    cfg = load_config(CONFIGS / "fashion_mnist.toml")
    torch.manual_seed(0)
    net, _ = build_network(cfg.model, (1, 28, 28), None)
    gen = Generator(net, build_process(cfg.diffusion), "v", (1, 28, 28), device="cpu")
    samples = gen.generate(16, sampler="dpmpp_2m", steps=4)
    findings = check_samples(samples, stats["fashion_mnist"], 7)
    assert kinds(findings) == ["noise"]
    assert "step 7:" in findings[0].message and "train longer" in findings[0].message
    assert not looks_like_data(findings)
    assert summary(findings) == "samples are still noise"


def _broken(kind: str, clothes: torch.Tensor) -> torch.Tensor:
    x = clothes.float() / 127.5 - 1
    g = torch.Generator().manual_seed(0)
    if kind == "black":
        return torch.zeros_like(clothes)
    if kind == "white":
        return torch.full_like(x, 1.0)
    if kind == "grey":
        return torch.full_like(clothes, 128)
    if kind == "nan":
        x[5, 0, 3, 3] = torch.nan
        return x
    if kind == "inf":
        x[0] = torch.inf
        return x
    if kind == "blown out":  # contrast x 8: pixels pinned at both ends
        return (x * 8 + 4).clamp(-1, 1)
    if kind == "salt and pepper":  # every pixel pure black or pure white
        return torch.randint(0, 2, clothes.shape, generator=g).to(torch.uint8) * 255
    if kind == "copies":
        return clothes[:1].expand(32, -1, -1, -1)
    if kind == "jittered copies":
        return (x[:1] + 0.02 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    if kind == "half copies":
        return torch.cat([clothes[:16], clothes[16:17].expand(16, -1, -1, -1)])
    raise ValueError(kind)


@pytest.mark.parametrize(
    "case, kind, phrase",
    [
        ("black", "dark", "samples are black"),
        ("white", "bright", "samples are white"),
        ("grey", "constant", "samples are flat, one shade each"),
        ("nan", "nonfinite", "the model outputs NaN/Inf"),
        ("inf", "nonfinite", "the model outputs NaN/Inf"),
        ("blown out", "saturated", "samples are saturated (pure black or white)"),
        ("salt and pepper", "saturated", "samples are saturated (pure black or white)"),
        ("copies", "collapse", "samples are near-copies of each other"),
        ("jittered copies", "collapse", "samples are near-copies of each other"),
        ("half copies", "collapse", "samples are near-copies of each other"),
    ],
)
def test_each_failure_gives_exactly_its_finding(stats, clothes, case, kind, phrase):
    findings = check_samples(_broken(case, clothes), stats["fashion_mnist"], step=12_000)
    assert kinds(findings) == [kind]
    message = findings[0].message
    assert message.startswith("step 12,000: ") and message.count(";") >= 1
    assert any(remedy in message for remedy in ("train.lr", "guidance", "own noise"))
    assert not looks_like_data(findings)
    assert summary(findings) == phrase


def test_a_few_odd_samples_are_not_a_failing_run(stats, clothes):
    odd = clothes.clone()
    odd[:3] = 0  # 3 black of 32, under a quarter
    odd[3:5] = odd[5]  # a pair of copies
    assert check_samples(odd, stats["fashion_mnist"], 1) == []
    odd[:8] = 0  # a quarter
    assert kinds(check_samples(odd, stats["fashion_mnist"], 1)) == ["dark"]


def test_uint8_black_samples_mention_nan(stats):
    message = check_samples(torch.zeros(16, 1, 28, 28, dtype=torch.uint8), stats["mnist"], 3)[0]
    assert "NaN" in message.message


# --------------------------------------------------------------------------- weights, speed
def test_check_weights_names_the_nonfinite_parameters():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    assert check_weights(net, 10) == []
    with torch.no_grad():
        net[1].bias.fill_(torch.nan)
    (finding,) = check_weights(net, 10)
    assert finding.kind == "nonfinite" and "1.bias" in finding.message
    assert "1 of 4 parameter tensors" in finding.message and "train.lr" in finding.message
    assert summary([finding]) == "the model outputs NaN/Inf"


def test_throughput_finding_flags_a_run_at_under_half_its_startup_speed():
    assert throughput_finding(6.0, 10.0, 500) is None
    slow = throughput_finding(3.0, 10.0, 500)
    assert slow is not None and slow.kind == "slow"
    assert "step 500:" in slow.message and "busy or throttled" in slow.message
    assert "30%" in slow.message
    # Slowness is about the machine, not the samples.
    assert looks_like_data([slow]) and summary([slow]) == "samples look like data"


def test_summary_lists_each_kind_once():
    found = [Finding("noise", "a"), Finding("dark", "b"), Finding("noise", "c")]
    assert summary(found) == "samples are still noise; samples are black"


def test_alike_reconstructions_get_an_autoencoders_advice(stats, clothes):
    """An autoencoder's reconstructions that are nearly alike are a collapse too, but its
    advice is the autoencoder's: no sampler noise or guidance to blame."""
    copies = _broken("copies", clothes)
    (sampled,) = check_samples(copies, stats["fashion_mnist"], step=5)
    (rebuilt,) = check_samples(copies, stats["fashion_mnist"], step=5, reconstructions=True)
    assert sampled.kind == rebuilt.kind == "collapse"
    assert "guidance" in sampled.message and "own noise" in sampled.message
    assert rebuilt.message.startswith("step 5: the reconstructions are nearly alike (")
    assert "guidance" not in rebuilt.message and "noise" not in rebuilt.message
    assert "does not yet tell its inputs apart" in rebuilt.message
