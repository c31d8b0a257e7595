"""Config loading: a bad key or value is refused with a message naming it and the allowed ones."""

import json
from pathlib import Path

import pytest

from difflab.build import build_network
from difflab.checkpoints.names import WEIGHTS_DIR
from difflab.config import ConfigError, load_config
from difflab.models.unet import UNetConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Each shipped model and the config that trained it (its config.json's trained.command).
SHIPPED_CONFIGS = {
    "fashion-mnist": "fashion_mnist_large",
    "fashion-mnist-cond": "fashion_mnist_cond",
    "mnist-digits-cond": "mnist_cond",
    "fashion-text": "fashion_text",
    "fashion-text-attributes": "fashion_text_attributes",
    "shapes-text": "shapes_text_latent",
}


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.train.batch_size > 0


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(
        write(tmp_path, "[train]\nlr = 1e-3\n"),
        ["train.batch_size=32", "diffusion.schedule=linear", "model.overrides.dropout=0.1"],
    )
    assert cfg.train.lr == 1e-3 and cfg.train.batch_size == 32
    assert cfg.diffusion.schedule == "linear"
    assert cfg.model.overrides == {"dropout": 0.1}
    assert cfg.train.betas == (0.9, 0.99)


def test_unknown_key_names_allowed_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"train.learning_rate.*allowed keys in \[train\]:.*lr"):
        load_config(write(tmp_path, "[train]\nlearning_rate = 1e-3\n"))
    with pytest.raises(ConfigError, match="unknown key 'trian'.*train"):
        load_config(write(tmp_path, "[trian]\nlr = 1e-3\n"))


def test_bad_choice_lists_choices(tmp_path):
    with pytest.raises(ConfigError, match="diffusion.schedule.*linear, cosine"):
        load_config(write(tmp_path, '[diffusion]\nschedule = "cosin"\n'))
    with pytest.raises(ConfigError, match="train.precision.*fp32, bf16, fp16"):
        load_config(None, ["train.precision=fp8"])


def test_bad_types_and_ranges(tmp_path):
    with pytest.raises(ConfigError, match="train.batch_size must be an integer"):
        load_config(None, ["train.batch_size=12.5"])
    with pytest.raises(ConfigError, match="train.batch_size must be > 0"):
        load_config(None, ["train.batch_size=0"])
    with pytest.raises(ConfigError, match="train.ema_warmup must be true or false"):
        load_config(None, ['train.ema_warmup="yes"'])
    with pytest.raises(ConfigError, match="data"):
        load_config(None, ["data.name=cifar"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[train\n"))
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["lr"])


@pytest.mark.parametrize("name", sorted(SHIPPED_CONFIGS))
def test_shipped_configs_build_the_shipped_networks(name):
    """The configs name their networks (model.preset) instead of rewriting a pixel preset's
    fields; what they build is still exactly what each shipped model was trained as: the same
    network spec, field by field, and the same number of parameters."""
    shipped = json.loads((WEIGHTS_DIR / name / "config.json").read_text())
    assert f"difflab train {SHIPPED_CONFIGS[name]} " in shipped["trained"]["command"] + " "
    cfg = load_config(CONFIGS / f"{SHIPPED_CONFIGS[name]}.toml")
    shape = tuple(shipped.get("model_shape", shipped["image_shape"]))  # latents, or pixels
    net, spec = build_network(cfg.model, shape, shipped["network"]["num_classes"])
    assert spec["type"] == shipped["network"]["type"] == "unet"
    assert spec["num_classes"] == shipped["network"]["num_classes"]
    # A checkpoint older than a UNetConfig field lacks it, and loads with its default.
    assert UNetConfig(**spec["config"]) == UNetConfig(**shipped["network"]["config"])
    assert sum(p.numel() for p in net.parameters()) == shipped["parameters"]
