"""What a finished run writes for people to look at: forward process, samples, GIF, loss curve.

Samples are shown as they are, through the fixed [-1, 1] -> [0, 255] map of `to_uint8`,
never rescaled per image, so a model whose samples drift to white or black is visible.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import torch

from difflab import viz
from difflab.data.transforms import to_float, to_uint8
from difflab.pipeline import Generator
from difflab.pipeline.settings import is_guided
from difflab.training import health
from difflab.training.step_settings import label

# The first lines of every command.sh: how `--overwrite` tells difflab's from a user's.
COMMAND_HEADER = "#!/bin/sh\n# Reproduces this run"


def grid_layout(trainer, gen: Generator, n: int) -> tuple[int, int, dict]:
    """How a grid of about ``n`` samples is laid out: ``(count, nrow, conditions)``. A
    conditional model gets a row per class (for a text model, the first caption of each
    class), as many columns as fit in ``n``; an unconditional one 8 columns."""
    if trainer.captions is not None:
        table = trainer.captions
        # A caption of each label's first image, at most n rows: a per-image caption table
        # (shapes) has a label per image, not per class.
        per_class = [table.texts[ids[0]] for ids in table.by_class[:n]]
    elif gen.num_classes is not None:
        per_class = list(range(gen.num_classes))
    else:
        return n, 8, {}
    cols = max(1, n // len(per_class))
    rows = [c for c in per_class for _ in range(cols)]
    key = "prompt" if trainer.captions is not None else "classes"
    return len(rows), cols, {key: rows}


def grid_labels(trainer, n: int = 64, seed: int = 0) -> tuple[list[str] | None, str]:
    """What the fixed-seed grid of `fixed_seed_samples` says about itself: a label per row
    (the class or caption of a conditional model's rows; real / reconstructed for an
    autoencoder) or None, and a title with the run, its step and how it was sampled."""
    run = f"{trainer.out.name} · step {trainer.step:,}"
    if trainer.kind == "autoencoder":
        real = min(n, len(trainer.data))  # rows of 8 real images, then their reconstructions
        labels = ["real", "reconstructed"] * (real // 8) if real % 8 == 0 else None
        return labels, f"{run} · reconstructions by the EMA weights"
    gen = Generator.from_trainer(trainer)
    _, nrow, conditions = grid_layout(trainer, gen, n)
    labels = None
    if "classes" in conditions:
        names = trainer.data.class_names or [str(i) for i in range(gen.num_classes)]
        labels = [names[c] for c in conditions["classes"][::nrow]]
    elif "prompt" in conditions:
        labels = list(conditions["prompt"][::nrow])
    kw = sample_kwargs(trainer)
    title = viz.sampling_title(
        trainer.out.name, kw["sampler"], kw["steps"], seed, kw.get("guidance"),
        step=trainer.step, autoguidance=kw.get("autoguidance"),
        interval=kw.get("guidance_interval"), sigma_max=kw.get("sigma_max"), rho=kw.get("rho"),
    )
    return labels, title


RECONSTRUCTION_ROW = 8  # an autoencoder's grid: rows of this many real images, then rebuilt


def reconstructions(trainer, n: int = 32, seed: int = 0) -> torch.Tensor:
    """Real images and the autoencoder's reconstructions, interleaved row by row (uint8)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(trainer.data), generator=g)[:n]
    real = to_float(trainer.data.images[idx]).to(trainer.device)
    with torch.no_grad():
        rec = trainer.ema.model.decode(trainer.ema.model.encode(real).mode())
    k = RECONSTRUCTION_ROW
    rows = [t for i in range(0, n, k) for t in (real[i : i + k], rec[i : i + k])]
    return to_uint8(torch.cat(rows).float().cpu())


def sample_kwargs(trainer) -> dict:
    sc = trainer.cfg.sample
    kw = {"sampler": sc.sampler, "steps": sc.steps, "clip": sc.clip}
    if sc.sampler == "ddim":
        kw["eta"] = sc.eta
    if sc.guidance is not None and (trainer.conditional or trainer.captions is not None):
        kw["guidance"] = sc.guidance  # grids and FID as `difflab sample` will draw them
    if sc.autoguidance is not None and trainer.guide is not None:  # once the run has kept it
        kw["autoguidance"] = sc.autoguidance
    # only for a guided draw: the Generator refuses an interval on one that is not (weight 1)
    if sc.guidance_interval is not None and is_guided(kw.get("guidance"), kw.get("autoguidance")):
        kw["guidance_interval"] = sc.guidance_interval
    kw.update({k: getattr(sc, k) for k in ("sigma_max", "rho") if getattr(sc, k) is not None})
    return kw


def health_view(trainer, images: torch.Tensor) -> torch.Tensor:
    """What the health monitor judges of `fixed_seed_samples`: for an autoencoder run the
    reconstructions alone, since each stands beside its own input in the grid and a good
    autoencoder's would read as near-copies of them (a collapse that is not one)."""
    if trainer.kind != "autoencoder":
        return images
    return torch.cat(images.split(RECONSTRUCTION_ROW)[1::2])  # the odd rows of reconstructions()


def fixed_seed_samples(trainer, n: int = 64, seed: int = 0) -> tuple[torch.Tensor, int]:
    """About `n` uint8 samples from the EMA weights, the same noise every time (an autoencoder
    run: real images and their reconstructions), and the grid's row length."""
    if trainer.kind == "autoencoder":
        return reconstructions(trainer, n, seed), RECONSTRUCTION_ROW
    gen = Generator.from_trainer(trainer)
    count, nrow, conditions = grid_layout(trainer, gen, n)
    return gen.generate(count, seed=seed, **conditions, **sample_kwargs(trainer)), nrow


def save_sample_grid(trainer, path: Path, n: int | None = None, seed: int = 0) -> Path | None:
    """A fixed-seed grid of about `n` (default: train.num_sample_images) samples from the EMA
    weights, same noise every time: progress is comparable. The health monitor checks it
    (Trainer.check_health); non-finite weights draw no grid."""
    n = n or trainer.cfg.train.num_sample_images
    drawn: list = []

    def draw() -> torch.Tensor:
        drawn.extend(fixed_seed_samples(trainer, n, seed))
        return health_view(trainer, drawn[0])

    trainer.check_health(draw)
    if not drawn:
        return None
    images, nrow = drawn
    labels, title = grid_labels(trainer, n, seed)
    return viz.save_grid(images, path, nrow=nrow, scale=2, row_labels=labels, title=title)


def final_check(trainer, n: int = 32, seed: int = 0) -> str:
    """The run's last line: how far it got, at what speed, and whether its samples look like
    data (the health monitor on `n` fixed-seed samples), with what to try when not. Drawing
    them takes a while with a many-step sampler (a score model's 500 predictor-corrector
    steps), so it is announced first."""
    if trainer.kind != "autoencoder" and not trainer.quiet:
        sc = trainer.cfg.sample
        steps = f", {sc.steps} steps" if sc.steps else ""
        print(f"difflab: drawing {n} samples ({sc.sampler}{steps}) to check that they look "
              "like data", flush=True)
    findings = trainer.check_health(
        lambda: health_view(trainer, fixed_seed_samples(trainer, n, seed)[0]))
    minutes = trainer.elapsed / 60
    rate = trainer.step / trainer.elapsed if trainer.elapsed > 0 else 0.0
    s = trainer.step_settings
    how = f", {label(s.precision, s.threads)}" if s is not None else ""
    steps = f"{trainer.step} step{'' if trainer.step == 1 else 's'}"
    line = (f"{steps} in {minutes:.1f} min ({rate:.2f} steps/s{how}): "
            f"{health.summary(findings)}")
    if not health.looks_like_data(findings) and s is not None and s.seconds_per_step:
        line += (f"; this machine does about {1 / s.seconds_per_step:.2f} steps/s with this "
                 "network, so train longer (--resume with a larger --minutes)")
    return line


def plot_progress(trainer, path: Path) -> Path | None:
    """Redraw the loss curve from the run's metrics.jsonl (None before the first log line)."""
    metrics = trainer.out / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        return viz.plot_loss(metrics, path)
    return None


def write_report(
    trainer, out: Path, *, command: list[str], n: int | None = None, seed: int = 0
) -> dict[str, Path]:
    """Write forward-process grid, samples (about `n`, default train.num_sample_images),
    reverse-process GIF, loss curve and command."""
    n = n or trainer.cfg.train.num_sample_images
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if trainer.kind == "autoencoder":
        grid = save_sample_grid(trainer, out / "reconstructions.png", n, seed)
        if grid is not None:
            paths["reconstructions"] = grid
        _finish(trainer, out, command, paths)
        return paths
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(trainer.data), generator=g)[:6]
    gen = Generator.from_trainer(trainer)
    # A latent model's process runs on latents: noise those, and show them decoded.
    with torch.no_grad():
        real = gen.to_model_space(trainer.data.images[idx]).cpu()
    decode = None
    if gen.autoencoder is not None:
        def decode(z: torch.Tensor) -> torch.Tensor:
            return gen.autoencoder.from_latent(z.to(gen.device))
    paths["forward"] = viz.forward_process_grid(
        trainer.process,
        real,
        out / "forward_process.png",
        generator=torch.Generator().manual_seed(seed),
        decode=decode,
    )
    # Latent trajectories are not pictures: record the decoded x0 predictions instead.
    key = "x" if trainer.autoencoder is None else "denoised"
    recorder = viz.FrameRecorder(every=1, key=key, decode=gen.to_pixels)
    count, nrow, conditions = grid_layout(trainer, gen, n)
    images = gen.generate(
        count, seed=seed, batch_size=count, callback=recorder, **conditions,
        **sample_kwargs(trainer),
    )
    labels, title = grid_labels(trainer, n, seed)
    paths["samples"] = viz.save_grid(
        images, out / "samples.png", nrow=nrow, scale=2, row_labels=labels, title=title
    )
    frames = recorder.finish() + [images]
    paths["gif"] = viz.save_gif(
        frames, out / "reverse_process.gif", nrow=nrow, scale=2, max_frames=60,
        hold_last_ms=2000, frame_labels=recorder.labels + ["final sample"], row_labels=labels,
        title=title,
    )
    _finish(trainer, out, command, paths)
    return paths


def _finish(trainer, out: Path, command: list[str], paths: dict[str, Path]) -> None:
    """The loss curve, and command.sh: the command that reproduces the run. It runs as
    `sh command.sh` or pasted into a shell, from any directory and without difflab on PATH: it
    changes to the directory the run was started in (its paths may be relative to it) and
    calls the difflab that ran by its absolute path (the script this process was started as,
    else the one beside this interpreter, else `python -m difflab.cli`; under torchrun, the
    same number of processes through `python -m torch.distributed.run`)."""
    loss = plot_progress(trainer, out / "loss.png")
    if loss is not None:
        paths["loss"] = loss
    if trainer.cfg.train.fid_every and trainer.best_fid < float("inf"):  # FID rows exist
        paths["fid"] = viz.plot_loss(trainer.out / "metrics.jsonl", out / "fid.png", key="fid")

    def executable(path: str) -> bool:
        name_ok = os.path.basename(path) == "difflab"
        return name_ok and os.path.isfile(path) and os.access(path, os.X_OK)

    dist = trainer.dist
    notes = []
    timed = trainer.cfg.train.minutes is not None
    # --overwrite said what to do with the folder then, not how to train: kept, it would make
    # this file replace the run it reproduces (the note below says it refuses instead)
    command = [a for a in command if a != "--overwrite"]
    if "--resume" in command:  # resume is exact: the one command of the whole run
        command = [a for a in command if a != "--resume"]
        notes.append("# The run was resumed; this one command trains all of it"
                     + (" in one go." if timed else ", exactly."))
    if timed:  # a time budget ends where the machine's speed puts it
        notes.append(f"# Its budget is time (train.minutes): a rerun stops near step "
                     f"{trainer.step:,} on this machine, not exactly there.")
    notes.append("# It writes to this run's folder, and refuses while this run is there: move "
                 "the run away, or append --overwrite (to replace it) or another --out.")
    if command and command[0] == "difflab":
        if dist.world_size > 1:
            prefix = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                      str(dist.local_world_size), "-m", "difflab.cli"]  # fmt: skip
            if dist.world_size != dist.local_world_size:
                notes.append(
                    f"# It ran as {dist.world_size} processes on "
                    f"{dist.world_size // dist.local_world_size} machines: add torchrun's "
                    "--nnodes and rendezvous flags."
                )
        else:
            started = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
            beside = os.path.join(os.path.dirname(sys.executable), "difflab")
            if executable(started):
                prefix = [started]
            elif executable(beside):
                prefix = [beside]
            else:
                prefix = [sys.executable, "-m", "difflab.cli"]
        command = prefix + list(command[1:])
    cmd = out / "command.sh"
    cmd.write_text(
        COMMAND_HEADER + ": `sh command.sh`, or paste these lines into a shell, "
        "from any directory.\n" + "".join(n + "\n" for n in notes)
        + f"cd {shlex.quote(os.getcwd())} &&\n  "
        + " ".join(shlex.quote(a) for a in command) + "\n"
    )
    cmd.chmod(0o755)
    paths["command"] = cmd
