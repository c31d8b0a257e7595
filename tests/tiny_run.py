"""The smallest real training runs the tests share: the digits8 preset (scikit-learn's 8x8
digits) with a 16-wide, two-level UNet on 200 images, a metrics row every step; and a pixel
text model on the shapes world trained one step (the wiring, not the learning)."""

from pathlib import Path

from difflab.config import RunConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model.overrides.base_channels=16",
    "model.overrides.channel_mults=[1, 2]",
    "model.overrides.attention_resolutions=[]",
    "model.overrides.groups=4",
    "train.batch_size=16",
    "train.log_every=1",
    "train.checkpoint_every=1000",
    "train.warmup_steps=2",
    "data.limit=200",
]


def tiny_config(*extra: str) -> RunConfig:
    """digits8 with TINY and then `extra` overrides (section.key=value)."""
    return load_config(ROOT / "configs" / "digits8.toml", [*TINY, *extra])


def as_flags(sets: list[str]) -> list[str]:
    """Overrides as `difflab train` flags: --set KEY=VALUE for each."""
    return [a for s in sets for a in ("--set", s)]


def one_step_shapes_text(folder: Path):
    """A Generator of configs/shapes_text.toml (a pixel-space UNet reading MiniLM's word
    pieces) trained one step on 8 scenes into `folder`."""
    from difflab.pipeline import Generator
    from difflab.training.trainer import Trainer

    cfg = load_config(ROOT / "configs" / "shapes_text.toml", [
        "train.max_steps=1", "train.batch_size=4", "train.precision='fp32'",
        "train.warmup_steps=1", "train.log_every=1", "train.sample_every=1000",
        "train.checkpoint_every=100", "data.num_samples=8", "model.overrides.base_channels=8"])
    Trainer(cfg, folder / "run", quiet=True).train()
    return Generator.from_checkpoint(folder / "run" / "last", device="cpu")
