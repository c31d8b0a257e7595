"""A `Generator` bundles a trained network with its noise process and draws images from it.

    gen = Generator.from_checkpoint("runs/fashion/last")
    images = gen.generate(16, sampler="dpmpp_2m", steps=20, seed=0)   # uint8 (16, 1, 28, 28)

Sample i of a run with seed s always starts from the same noise and draws the same step
noise, whatever the batch size: every sample has its own torch.Generator (DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difflab.build import build_process, network_from_spec
from difflab.config import config_from_dict
from difflab.data import class_aliases
from difflab.data.base import resolve_class
from difflab.diffusion.denoiser import Denoiser, ModelDenoiser, ThresholdedDenoiser
from difflab.guidance import GuidedDenoiser
from difflab.samplers import get_sampler, sample
from difflab.samplers.common import per_sample_generators
from difflab.training.checkpoint import load_checkpoint, load_weights_into
from difflab.viz import to_uint8

Tensor = torch.Tensor

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def resolve_checkpoint(name: str | Path) -> Path:
    """A checkpoint folder, or the name of one shipped with difflab (e.g. 'fashion-mnist')."""
    p = Path(name)
    if p.is_dir():
        return p
    if (WEIGHTS_DIR / str(name)).is_dir():
        return WEIGHTS_DIR / str(name)
    shipped = sorted(d.name for d in WEIGHTS_DIR.glob("*") if d.is_dir())
    raise FileNotFoundError(
        f"checkpoint {str(name)!r} not found; give a checkpoint folder or "
        f"one of the shipped models: {', '.join(shipped) or 'none'}"
    )


class Generator:
    """A trained pixel-space diffusion model, ready to sample."""

    def __init__(
        self,
        net: torch.nn.Module,
        process,
        parameterization: str,
        image_shape: tuple[int, int, int],
        *,
        class_names: list[str] | None = None,
        num_classes: int | None = None,
        config: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ):
        self.net = net.to(device).eval()
        self.process, self.parameterization = process, parameterization
        self.image_shape = tuple(image_shape)
        self.class_names, self.num_classes = class_names, num_classes
        self.config = config or {}
        self.device = torch.device(device)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, device: str | None = None, use_ema: bool = True
    ) -> Generator:
        path = resolve_checkpoint(path)
        ck = load_checkpoint(path)
        if ck.config.get("kind") != "pixel-diffusion":
            raise ValueError(
                f"{path} holds a {ck.config.get('kind')!r} model; Generator "
                "loads pixel-diffusion checkpoints"
            )
        run = config_from_dict(ck.config["run"])
        net = network_from_spec(ck.config["network"])
        load_weights_into(net, ck.weights(use_ema), str(path))
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(
            net.float(),
            build_process(run.diffusion),
            run.diffusion.parameterization,
            tuple(ck.config["image_shape"]),
            class_names=ck.config.get("class_names"),
            num_classes=ck.config["network"].get("num_classes"),
            config=ck.config,
            device=device,
        )

    # ------------------------------------------------------------------ conditioning
    def resolve_labels(self, classes: list[str | int] | None, n: int) -> Tensor | None:
        """Class names / indices -> label tensor of length n (cycled), or None."""
        if classes is None:
            return None
        if self.num_classes is None:
            raise ValueError(
                "this checkpoint is unconditional: it takes no class; drop --class / classes"
            )
        names = self.class_names or [str(i) for i in range(self.num_classes)]
        dataset = self.config.get("run", {}).get("data", {}).get("name", "")
        aliases = class_aliases(dataset, self.class_names)
        idx = [resolve_class(c, names, aliases) for c in classes]
        return torch.tensor([idx[i % len(idx)] for i in range(n)], device=self.device)

    def denoiser(
        self,
        labels: Tensor | None = None,
        guidance: float | None = None,
        clip: str | None = "static",
    ) -> Denoiser:
        den: Denoiser = ModelDenoiser(self.net, self.process, self.parameterization, cond=labels)
        if guidance is not None:
            if labels is None:
                raise ValueError("guidance needs a class-conditional checkpoint and a class")
            null = torch.full_like(labels, self.num_classes)
            uncond = ModelDenoiser(self.net, self.process, self.parameterization, cond=null)
            den = GuidedDenoiser(den, uncond, guidance)
        if clip is not None:
            den = ThresholdedDenoiser(den, clip)
        return den

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate_batches(
        self,
        n: int,
        *,
        sampler: str = "ddim",
        steps: int | None = None,
        seed: int = 0,
        batch_size: int = 256,
        clip: str | None = "static",
        classes: list | None = None,
        guidance: float | None = None,
        spacing: str | None = None,
        callback: Callable[[dict], None] | None = None,
        precision: str = "fp32",
        **options: Any,
    ) -> Iterator[tuple[Tensor, Tensor | None]]:
        """Yield (uint8 images, labels) batch by batch, so 10,000 images never sit in memory.

        steps / spacing default per sampler (difflab.samplers.DEFAULTS); `options` go to the
        sampler (eta=, variance=, ...).
        """
        if n < 1:
            raise ValueError(f"number of images must be >= 1, got {n}")
        get_sampler(sampler)  # fail on a bad name before any work
        labels_all = self.resolve_labels(classes, n)
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if precision == "bf16"
            else nullcontext()
        )
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            gens = per_sample_generators(seed, b, offset=start)
            labels = labels_all[start : start + b] if labels_all is not None else None
            den = self.denoiser(labels, guidance, clip)
            with autocast:
                out = sample(
                    den,
                    (b, *self.image_shape),
                    sampler,
                    steps,
                    spacing,
                    generator=gens,
                    callback=callback,
                    device=self.device,
                    **options,
                )
            yield to_uint8(out.float().cpu()), (labels.cpu() if labels is not None else None)

    def generate(self, n: int, **kwargs: Any) -> Tensor:
        """n images as a uint8 tensor (n, C, H, W); keyword arguments as generate_batches."""
        return torch.cat([b for b, _ in self.generate_batches(n, **kwargs)])

    def generate_to_npz(self, path: str | Path, n: int, **kwargs: Any) -> Path:
        """Stream n samples into an .npz with `images` uint8 (N, C, H, W) (+ `labels`)."""
        path = Path(path)
        images = np.lib.format.open_memmap(
            path.with_suffix(".images.npy"), mode="w+", dtype=np.uint8, shape=(n, *self.image_shape)
        )
        labels = np.zeros(n, dtype=np.int64)
        has_labels, i = False, 0
        for batch, lab in self.generate_batches(n, **kwargs):
            images[i : i + len(batch)] = batch.numpy()
            if lab is not None:
                labels[i : i + len(batch)], has_labels = lab.numpy(), True
            i += len(batch)
        images.flush()
        arrays = {"images": images}
        if has_labels:
            arrays["labels"] = labels
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
        del images
        path.with_suffix(".images.npy").unlink()
        return path
