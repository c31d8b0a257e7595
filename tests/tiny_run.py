"""The smallest real training run the tests share: the digits8 preset (scikit-learn's 8x8
digits) with a 16-wide, two-level UNet on 200 images, a metrics row every step."""

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
