"""What a finished run writes for people to look at: forward process, samples, GIF, loss curve.

Samples are shown as they are, through the fixed [-1, 1] -> [0, 255] map of `viz.to_uint8`,
never rescaled per image, so a model whose samples drift to white or black is visible.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import torch

from difflab import viz
from difflab.data.transforms import to_float
from difflab.pipeline import Generator


def generator_from_trainer(trainer) -> Generator:
    """A Generator over the trainer's EMA weights (no copy; the EMA net is frozen)."""
    return Generator(
        trainer.ema.model,
        trainer.process,
        trainer.cfg.diffusion.parameterization,
        trainer.data.image_shape,
        class_names=trainer.data.class_names,
        num_classes=trainer.net_config.get("num_classes"),
        device=trainer.device,
    )


def sample_kwargs(trainer) -> dict:
    sc = trainer.cfg.sample
    kw = {"sampler": sc.sampler, "steps": sc.steps, "clip": sc.clip}
    if sc.sampler == "ddim":
        kw["eta"] = sc.eta
    return kw


def save_sample_grid(trainer, path: Path, n: int = 64, seed: int = 0) -> Path:
    """A fixed-seed grid from the EMA weights, same noise every time: progress is comparable."""
    gen = generator_from_trainer(trainer)
    classes = None
    if gen.num_classes is not None:
        classes = list(range(gen.num_classes))
    images = gen.generate(n, seed=seed, classes=classes, **sample_kwargs(trainer))
    return viz.save_grid(images, path, nrow=8, scale=2)


def plot_progress(trainer, path: Path) -> Path | None:
    """Redraw the loss curve from the run's metrics.jsonl (None before the first log line)."""
    metrics = trainer.out / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        return viz.plot_loss(metrics, path)
    return None


def write_report(
    trainer, out: Path, *, command: list[str], n: int = 64, seed: int = 0
) -> dict[str, Path]:
    """Write forward-process grid, 8x8 samples, reverse-process GIF, loss curve and command."""
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(trainer.data), generator=g)[:6]
    real = to_float(trainer.data.images[idx])
    paths["forward"] = viz.forward_process_grid(
        trainer.process,
        real,
        out / "forward_process.png",
        generator=torch.Generator().manual_seed(seed),
    )
    gen = generator_from_trainer(trainer)
    recorder = viz.FrameRecorder(every=1, key="x")
    classes = list(range(gen.num_classes)) if gen.num_classes is not None else None
    images = gen.generate(
        n, seed=seed, batch_size=n, callback=recorder, classes=classes, **sample_kwargs(trainer)
    )
    paths["samples"] = viz.save_grid(images, out / "samples.png", nrow=8, scale=2)
    frames = recorder.finish() + [images]
    paths["gif"] = viz.save_gif(
        frames, out / "reverse_process.gif", nrow=8, scale=2, max_frames=60, hold_last_ms=2000
    )
    loss = plot_progress(trainer, out / "loss.png")
    if loss is not None:
        paths["loss"] = loss
    cmd = out / "command.sh"
    cmd.write_text(
        "#!/bin/sh\n# Reproduces this run.\n" + " ".join(shlex.quote(a) for a in command) + "\n"
    )
    paths["command"] = cmd
    return paths
