"""The `difflab` command line: train | sample | img2img | inpaint | eval | viz | info | export.

    difflab train configs/fashion_mnist.toml --minutes 10 --out runs/fashion
    difflab sample runs/fashion/last -n 64 --out samples.png   # the run's [sample] sampler, steps
    difflab sample runs/fashion/last -n 64 --sampler ddim --steps 50 --out samples.png
    difflab viz forward | schedules | toy1d --out FILE.png
    difflab info runs/fashion/last

Nothing below this file reads the command line; every flag is checked here and a bad value
is reported with the allowed ones. Every failure a user can cause -- a bad flag or config value,
a missing or hostile file, a full disk, Ctrl-C -- ends in one line on stderr,
`difflab: error: ...` with exit status 2 (130 for Ctrl-C), never a traceback unless `--debug`
(or DIFFLAB_DEBUG=1) asks for one. Nothing is replaced without being asked: `train` refuses an
existing run without --resume or --overwrite, `export` a destination that is not a checkpoint
it may replace (--force).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import inspect
import json
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from difflab.argtypes import (
    MAX_BATCH,
    MAX_GRID,
    MAX_GUIDANCE,
    MAX_SAMPLES,
    MAX_SCALE,
    MAX_SEED,
    MAX_STEPS,
    device_name,
    float_in,
    int_in,
    sampler_name,
)

if TYPE_CHECKING:
    from difflab.pipeline import Generator, SamplingSettings

DEFAULT_CONFIG = "fashion_mnist"
# difflab.pipeline.DEFAULT_IMG2IMG_STRENGTH, repeated for --help without importing torch
# (tests/test_image_inputs.py checks that they agree).
IMG2IMG_STRENGTH_DEFAULT = 0.9

# What `difflab train` writes into a run folder (trainer.py, training/report.py): what makes a
# folder a run that a new one must not silently replace, and all that --overwrite removes.
# NAME.prev/ is the checkpoint before NAME/, kept by save_checkpoint(keep_previous=True).
RUN_CHECKPOINTS = ("last", "best", "best_fid", "last.prev", "best.prev", "best_fid.prev")
RUN_FILES = (
    "metrics.jsonl",
    "config.json",
    "command.sh",
    "loss.png",
    "fid.png",
    "samples.png",
    "forward_process.png",
    "reverse_process.gif",
    "reconstructions.png",
)
RUN_SAMPLES = "samples"  # samples/step_0001000.png, ...
_SAMPLE_GRID = re.compile(r"step_\d+\.png")
# The files a checkpoint folder holds besides its NAME.safetensors (training/checkpoint.py):
# `export --force` replaces a folder of these only, so that nothing else in it is lost.
CHECKPOINT_FILES = ("config.json", "manifest.json", "state.json", "optimizer.pt")
TRAINING_STATE = ("state.json", "optimizer.pt")


class CLIError(Exception):
    """A mistake in what the user asked for: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one `difflab: error:` line (no usage block), raised so
    that main() reports them as it reports every other error."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message} (see {self.prog} --help)")

    def _get_values(self, action: argparse.Action, arg_strings: list[str]):
        # Python 3.11's argparse drops a value of "--" (`--guidance=--`) and stores [] in its
        # place, which fails much later as a TypeError; a lone "--" is never a value here.
        if action.nargs is None and action.option_strings and arg_strings == ["--"]:
            raise argparse.ArgumentError(action, "expected one argument, got '--'")
        return super()._get_values(action, arg_strings)


def _configs_dir() -> Path:
    """configs/ of a source checkout, else the copy installed inside the package."""
    here = Path(__file__).resolve()
    for cand in (here.parents[2] / "configs", here.parent / "configs"):
        if cand.is_dir():
            return cand
    return here.parents[2] / "configs"


def resolve_config(name: str) -> Path:
    """A config path, or the name of a preset in configs/ (with or without .toml)."""
    p = Path(name)
    if p.is_file():
        return p
    cand = _configs_dir() / (name if name.endswith(".toml") else f"{name}.toml")
    if cand.is_file():
        return cand
    presets = sorted(f.stem for f in _configs_dir().glob("*.toml"))
    what = "is a folder, not a TOML file" if p.is_dir() else "not found"
    raise CLIError(
        f"config {name!r} {what}; give a TOML file or one of the presets: {', '.join(presets)}"
    )


def check_output_file(path: str | Path, flag: str) -> Path:
    """Refuse, before any work, an output path that cannot be written as a file: an existing
    folder, or a path through a file."""
    path = Path(path)
    if path.is_dir():
        raise CLIError(f"{flag} {path} is a folder; give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CLIError(f"{flag} {path}: {parent} is a file, not a folder")
            break
    return path


# ---------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from difflab.config import load_config
    from difflab.training import report
    from difflab.training.trainer import Trainer, describe

    config_path = resolve_config(args.config)
    sets = list(args.set or [])
    if args.minutes is not None:
        sets.append(f"train.minutes={args.minutes}")
    if args.steps is not None:
        sets.append(f"train.max_steps={args.steps}")
    cfg = load_config(config_path, sets)
    out = Path(args.out or f"runs/{config_path.stem}")
    check_run_folder(out, resume=args.resume, overwrite=args.overwrite)
    trainer = Trainer(cfg, out, device=args.device)
    main = trainer.dist.is_main
    if args.resume:
        trainer.resume()
    if main:
        print(
            f"difflab: {trainer.data.name}: {len(trainer.data)} images "
            f"{tuple(trainer.data.image_shape)}; {describe(trainer)}; "
            f"device {trainer.device}, world size {trainer.dist.world_size}"
        )
        (out / "config.json").parent.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=list))

    def on_sample(tr) -> None:
        if tr.dist.is_main:
            report.save_sample_grid(tr, out / "samples" / f"step_{tr.step:07d}.png")
            report.plot_progress(tr, out / "loss.png")

    t0 = time.time()
    try:
        with writing(out):
            why = trainer.train(on_sample=on_sample)
    finally:
        trainer.close()
    if not main:
        return 0
    print(
        f"difflab: stopped at step {why.step} ({why.why}) after {(time.time() - t0) / 60:.1f} "
        f"min; checkpoints in {out / 'last'} and {out / 'best'}"
    )
    if not args.no_report:
        with writing(out):
            paths = report.write_report(trainer, out, command=["difflab", *args.argv])
        print("difflab: wrote")
        for what, p in paths.items():
            print(f"  {what:>8}: {p}")
    print(f"difflab: {report.final_check(trainer)}")
    return 0


# ---------------------------------------------------------------------------- sample
def cmd_sample(args: argparse.Namespace) -> int:
    from difflab import viz

    out = check_output_file(args.out, "--out")
    if out.suffix not in (".png", ".npz"):
        raise CLIError(f"--out must end in .png or .npz, got {out.name!r}")
    if args.gif:
        check_output_file(args.gif, "--gif")
    for scratch in npz_scratch_files(out) if out.suffix == ".npz" else []:
        if os.path.lexists(scratch):
            raise CLIError(f"--out {out}: {scratch} exists, and the samples stream through a "
                           "file of that name; move it away or choose another --out")
    gen = load_generator(args)
    classes, row_labels = sample_rows(args, gen)
    if out.suffix == ".png":
        check_grid(args, gen.image_shape, frames=60 if args.gif else 1)
    kw = sampling_kwargs(args, gen, classes)
    if args.gif and out.suffix == ".png" and args.n > args.batch_size:
        # Every frame is one grid of the whole run; batches after the first would not fit it.
        raise CLIError(
            f"--gif draws all {args.n} samples in one batch: raise --batch-size to "
            f"{args.n} or draw fewer"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npz":
        with removed_on_failure(*npz_scratch_files(out)), writing(out):
            gen.generate_to_npz(out, args.n, **kw)
    else:
        recorder = None
        if args.gif:  # latent trajectories are not pictures: show the decoded x0 then
            key = "x" if gen.autoencoder is None else "denoised"
            recorder = viz.FrameRecorder(key=key, decode=gen._to_pixels)
        images = gen.generate(args.n, callback=recorder, **kw)
        nrow = args.nrow or args.per_row or 8
        labels = row_labels if nrow == args.per_row else None  # rows of one condition only
        title = grid_title(args, kw, gen)
        with writing(out):
            viz.save_grid(images, out, nrow=nrow, scale=args.scale, row_labels=labels,
                          title=title)
        if recorder is not None:
            with writing(Path(args.gif)):
                viz.save_gif(
                    recorder.finish() + [images],
                    args.gif,
                    nrow=nrow,
                    scale=args.scale,
                    max_frames=60,
                    hold_last_ms=2000,
                    frame_labels=recorder.labels + ["final sample"],
                    row_labels=labels,
                    title=title,
                )
            print(f"difflab: wrote {args.gif}")
    print(f"difflab: wrote {args.n} samples to {out}")
    return 0


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Name `path` in an OSError that names no file: a failed write() knows only its file
    descriptor, and "No space left on device" should say where."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno not in (None, errno.EPIPE):
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def npz_scratch_files(out: Path) -> list[Path]:
    """The files Generator.generate_to_npz writes beside OUT.npz while it works."""
    return [out.with_suffix(".images.npy"), out.with_name(out.name + ".tmp.npz")]


@contextlib.contextmanager
def removed_on_failure(*paths: Path) -> Iterator[None]:
    """Delete these (new) files when the block fails or is interrupted: a half-written
    sample file left behind would look like a result."""
    try:
        yield
    except BaseException:
        for path in paths:
            with contextlib.suppress(OSError):
                path.unlink()
        raise


def check_run_folder(out: Path, *, resume: bool, overwrite: bool) -> None:
    """A new run never silently replaces another: a folder that holds what `difflab train`
    writes needs --resume (continue it) or --overwrite (remove that, keep everything else)."""
    from difflab.training.checkpoint import (
        checkpoint_candidates,
        is_difflab_checkpoint,
        remove_debris,
    )

    if resume and overwrite:
        raise CLIError("--resume continues the run in --out, --overwrite replaces it: give one")
    if os.path.lexists(out) and not out.is_dir():
        raise CLIError(f"--out {out} is a file; give the folder to write the run into")
    if is_difflab_checkpoint(out):
        raise CLIError(
            f"--out {out} is a checkpoint folder; give the run folder that holds it "
            f"({out.parent}) to --resume, or a new folder"
        )
    if resume:
        # last/, or what resume falls back to after a crash (last.prev/, best/, ...)
        if not any(map(is_difflab_checkpoint, checkpoint_candidates(out / "last"))):
            raise CLIError(f"--resume: no checkpoint at {out / 'last'} to continue")
        return
    found = run_contents(out)
    if not found:
        return
    if not overwrite:
        shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
        raise CLIError(
            f"--out {out} already holds a run ({shown}); add --resume to continue it, "
            "--overwrite to replace it (difflab removes only what it wrote there), or give "
            "another --out"
        )
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 clears, the others train
        return
    clear_run(out, found)
    remove_debris(out)  # half-written checkpoints of a crashed run (gone writers' only)
    print(f"difflab: --overwrite: removed {', '.join(found)} from {out} (anything else there "
          "is left alone)")


def run_contents(out: Path) -> list[str]:
    """The names in `out` that `difflab train` writes (folders with a trailing /)."""
    if not out.is_dir():
        return []
    names = [f"{n}/" for n in (*RUN_CHECKPOINTS, RUN_SAMPLES) if os.path.lexists(out / n)]
    return names + [n for n in RUN_FILES if os.path.lexists(out / n)]


def clear_run(out: Path, found: list[str]) -> None:
    """Remove what an earlier run wrote in `out` (`found`, from run_contents), after checking
    that every piece is difflab's: nothing is removed when one is not."""
    from difflab.training.checkpoint import is_difflab_checkpoint

    for name in found:
        path = out / name.rstrip("/")
        if name.rstrip("/") in RUN_CHECKPOINTS and (
            path.is_symlink() or not is_difflab_checkpoint(path)
        ):
            raise CLIError(
                f"--overwrite: {path} is not a difflab checkpoint, so difflab leaves it alone; "
                "move it away or give another --out"
            )
        if name == f"{RUN_SAMPLES}/" and (path.is_symlink() or not path.is_dir()):
            raise CLIError(f"--overwrite: {path} is not the folder of sample grids difflab "
                           "writes; move it away or give another --out")
        if name in RUN_FILES and (path.is_symlink() or not path.is_file()):
            raise CLIError(f"--overwrite: {path} is not a file difflab wrote; move it away "
                           "or give another --out")
        if name == "config.json" and not _is_run_config(path):
            raise CLIError(f"--overwrite: {path} is not a run config difflab wrote; move it "
                           "away or give another --out")
    for name in found:
        path = out / name.rstrip("/")
        if name.rstrip("/") in RUN_CHECKPOINTS:
            shutil.rmtree(path)
        elif name == f"{RUN_SAMPLES}/":  # the grids only: a file of the user's stays
            for grid in path.iterdir():
                if _SAMPLE_GRID.fullmatch(grid.name) and grid.is_file():
                    grid.unlink()
            with contextlib.suppress(OSError):
                path.rmdir()  # only when nothing else was in it
        else:
            path.unlink()


def _is_run_config(path: Path) -> bool:
    """Whether `path` is the config.json `difflab train` writes beside a run's checkpoints."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and {"data", "model", "train"} <= set(config)


def sample_rows(args: argparse.Namespace, gen) -> tuple[list | None, list[str] | None]:
    """Lay out several classes (`--class all` or a list) or several prompts as one grid row
    each: every value is drawn ceil(n / values) times in a row, and when that changes n a
    line says so. Sets args.n, args.per_row (None: no rows) and, for prompts, args.prompt
    (and args.negative_prompt when there is one per prompt). Returns (classes for the
    Generator or None, one label per row or None)."""
    args.per_row = None
    if args.classes == ["all"]:
        if gen.num_classes is None:
            raise CLIError("--class all needs a class-conditional checkpoint")
        values, what = list(range(gen.num_classes)), ("--class all", "class", "classes")
    elif args.classes is not None:
        values, what = list(args.classes), ("--class", "class", "classes")
    elif args.prompt is not None:
        values, what = list(args.prompt), ("--prompt", "prompt", "prompts")
    else:
        return None, None
    if len(values) == 1:  # one class or prompt: the title names it, no rows to tell apart
        return (values if args.classes is not None else None), None
    per = -(-args.n // len(values))  # ceil: never fewer samples than asked for
    flag, one, many = what
    if per * len(values) != args.n:
        print(
            f"difflab: {flag}: {per} per {one} x {len(values)} {many} = {per * len(values)} "
            f"samples (asked for {args.n})"
        )
    args.n, args.per_row = per * len(values), per
    rows = [v for v in values for _ in range(per)]
    if args.classes is None:  # prompts
        if args.negative_prompt and len(args.negative_prompt) == len(values):
            args.negative_prompt = [v for v in args.negative_prompt for _ in range(per)]
        args.prompt = rows
        return None, values
    names = gen.class_names or [str(i) for i in range(gen.num_classes or 0)]
    indices = gen.resolve_labels(values, len(values)).tolist()  # fails on an unknown class
    return rows, [names[i] for i in indices]


def grid_title(args: argparse.Namespace, kw: dict, gen) -> str:
    """The title of a `difflab sample` grid: the model, the class or prompt when all samples
    share one, sampler, steps, guidance and seed: what it takes to draw the picture again."""
    from difflab.viz import sampling_title

    asked = None
    if args.per_row is None and args.classes:
        index = int(gen.resolve_labels(args.classes[:1], 1)[0])
        asked = "class " + (gen.class_names or [str(i) for i in range(gen.num_classes)])[index]
    elif args.per_row is None and args.prompt:
        asked = repr(args.prompt[0])
    return sampling_title(
        args.checkpoint, kw["sampler"], kw["steps"], kw["seed"], kw["guidance"], asked=asked
    )


def sampling_kwargs(args: argparse.Namespace, gen, classes: list | None = None) -> dict:
    """The Generator keywords that sample, img2img and inpaint share. Sampler, steps and
    guidance are the flags over the checkpoint's [sample] settings, resolved here once so that
    the line saying what runs is what runs."""
    settings = gen.sampling_settings(
        args.sampler, args.steps, args.guidance,
        conditioned=classes is not None or bool(args.prompt),
    )
    kw = dict(
        sampler=settings.sampler,
        steps=settings.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        guidance=settings.guidance,
        classes=classes,
        clip=None if args.no_clip else "auto",
        precision=args.precision,
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        nearest_captions=args.nearest_captions,
        progress=not args.quiet,  # the library is quiet by default; the command is not
    )
    if args.eta is not None and settings.sampler not in (with_eta := _samplers_with_eta()):
        # Without --sampler the checkpoint picks the sampler, which may have no eta at all.
        raise CLIError(
            f"--eta is a setting of {', '.join(with_eta)}; this run samples with "
            f"{settings.sampler}: add --sampler ddim"
        )
    eta = args.eta if args.eta is not None else settings.eta
    if eta is not None:
        kw["eta"] = eta
    print(describe_sampling(settings, eta))
    print_prompt_readings(args, gen)
    return kw


def _samplers_with_eta() -> list[str]:
    from difflab.samplers import SAMPLERS

    return sorted(n for n, f in SAMPLERS.items() if "eta" in inspect.signature(f).parameters)


def describe_sampling(settings: SamplingSettings, eta: float | None = None) -> str:
    """One line: what a drawing command runs (sampler, steps, guidance) and where each
    setting came from, so that a checkpoint's defaults never act silently."""
    what = [settings.sampler, f"{settings.steps} steps"]
    guidance = settings.guidance
    if "guidance" in settings.source:  # a conditional model asked for a class or prompt
        what.append("no guidance" if guidance is None else f"guidance {guidance:g}")
    if eta is not None:
        what.append(f"eta {eta:g}")
    keys = list(settings.source)  # sampler, steps[, guidance]
    if all(settings.source[k] == "checkpoint" for k in keys):
        flags = "/".join(f"--{k}" for k in keys)
        why = f"the checkpoint's [sample] settings; {flags} override"
    elif all(settings.source[k] == "given" for k in keys):
        why = "as given"
    else:
        groups: dict[str, list[str]] = {}  # where from -> settings, in order
        for k in keys:
            where = {
                "given": f"--{k}",
                "checkpoint": "the checkpoint's [sample] settings",
                "default": f"{settings.sampler}'s default" if k == "steps" else "difflab's default",
            }[settings.source[k]]
            groups.setdefault(where, []).append(k)
        why = "; ".join(f"{' and '.join(ks)}: {where}" for where, ks in groups.items())
    return f"difflab: sampling with {', '.join(what)} ({why})"


def print_prompt_readings(args: argparse.Namespace, gen) -> None:
    """Say which training captions each prompt is read as (models with a caption bank), so
    that a surprising picture can be explained."""
    if not args.prompt or gen.nearest_captions(args.nearest_captions) == 0:
        return
    unique = list(dict.fromkeys(args.prompt + (args.negative_prompt or [])))
    for prompt, near in zip(unique, gen.read_prompts(unique, k=3), strict=True):
        shown = ", ".join(f"{text!r} ({sim:.2f})" for text, sim in near)
        print(f"difflab: {prompt!r} reads as the training captions {shown}")


def _edit_output(args: argparse.Namespace) -> Path:
    """img2img's and inpaint's --out, checked before any work."""
    out = check_output_file(args.out, "--out")
    if out.suffix != ".png":
        raise CLIError(f"--out must end in .png, got {out.name!r}")
    return out


# The largest picture a command writes: 2**27 pixels (128 MP, 384 MB as RGB), a GIF's frames
# together: 2**30. A 100x100 grid of 28x28 images at --scale 2 is 31 MP.
MAX_GRID_PIXELS = 2**27
MAX_GIF_PIXELS = 2**30


def check_grid(args: argparse.Namespace, shape: tuple[int, ...], frames: int = 1) -> None:
    """Refuse a PNG grid (or GIF of `frames` grids) too large to hold in memory, before
    drawing anything: -n and --scale multiply."""
    if args.n > MAX_GRID:
        raise CLIError(f"-n {args.n}: a PNG grid holds at most {MAX_GRID} images; write an "
                       ".npz (--out FILE.npz) for more")
    pixels = args.n * shape[-2] * shape[-1] * args.scale**2
    limit, what = (MAX_GRID_PIXELS, "the grid") if frames == 1 else (MAX_GIF_PIXELS, "the GIF")
    if pixels * frames > limit:
        raise CLIError(
            f"-n {args.n} at --scale {args.scale}: {what} would be "
            f"{pixels * frames / 1e6:.0f} megapixels, more than {limit / 1e6:.0f}; lower -n "
            "or --scale"
        )


def _save_edits(images, args: argparse.Namespace) -> int:
    from difflab import viz

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with writing(out):
        viz.save_grid(images, out, nrow=args.nrow or 8, scale=args.scale)
    print(f"difflab: wrote {len(images)} images to {out}")
    return 0


def cmd_img2img(args: argparse.Namespace) -> int:
    from difflab.pipeline import read_image_file

    _edit_output(args)
    image = read_image_file(args.image, "image")  # a bad file is told before the model loads
    gen = load_generator(args)
    check_grid(args, gen.image_shape)
    kw = sampling_kwargs(args, gen)
    prompt = kw.pop("prompt")
    strength = args.strength
    if strength is None:  # the pipeline's measured default (bench/img2img_strength.py)
        from difflab.pipeline import DEFAULT_IMG2IMG_STRENGTH

        strength = DEFAULT_IMG2IMG_STRENGTH
        print(f"difflab: strength {strength:g} (the default; --strength overrides)")
    images = gen.img2img(image, prompt, strength=strength, n=args.n, **kw)
    return _save_edits(images, args)


def cmd_inpaint(args: argparse.Namespace) -> int:
    from difflab.pipeline import read_image_file

    _edit_output(args)
    image = read_image_file(args.image, "image")
    mask = read_image_file(args.mask, "mask")
    gen = load_generator(args)
    check_grid(args, gen.image_shape)
    kw = sampling_kwargs(args, gen)
    prompt = kw.pop("prompt")
    images = gen.inpaint(image, mask, prompt, n=args.n, **kw)
    return _save_edits(images, args)


def resolve_checkpoint(name: str) -> Path:
    from difflab.pipeline import resolve_checkpoint as resolve

    if Path(name).is_file():
        raise CLIError(f"checkpoint {name!r} is a file; a checkpoint is a folder (config.json, "
                       "model.safetensors, ...)")
    try:
        return resolve(name)
    except FileNotFoundError as e:
        raise CLIError(str(e)) from None


@contextlib.contextmanager
def reading_checkpoint(path: str | Path) -> Iterator[None]:
    """Name the checkpoint when its config.json lacks a key or holds a value of the wrong
    type (edited by hand, written by another version): the code reading it would otherwise
    fail with a bare KeyError or TypeError."""
    from difflab.config import ConfigError

    try:
        yield
    except ConfigError as e:  # its [run] settings, checked as a config file's are
        raise CLIError(f"checkpoint {str(path)!r}: config.json: {e}") from e
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise CLIError(
            f"cannot read checkpoint {str(path)!r}: its config.json lacks or mistypes what "
            f"difflab needs ({type(e).__name__}: {e}); was it written by this difflab?"
        ) from e


def load_generator(args: argparse.Namespace) -> Generator:
    """The checkpoint of a drawing command, ready to sample on --device."""
    from difflab.pipeline import Generator

    path = resolve_checkpoint(args.checkpoint)
    with reading_checkpoint(path):
        return Generator.from_checkpoint(path, device=args.device)


# ---------------------------------------------------------------------------- viz
def cmd_viz(args: argparse.Namespace) -> int:
    from difflab import viz

    out = check_output_file(args.out, "--out")
    if args.what == "schedules":
        viz.plot_schedules(out, T=args.timesteps)
    elif args.what == "toy1d":
        from difflab.toy1d import plot_toy1d

        plot_toy1d(out, seed=args.seed)
    else:
        from difflab.build import build_process
        from difflab.config import load_config
        from difflab.data import load_dataset
        from difflab.data.transforms import to_float

        cfg = load_config(resolve_config(args.config), args.set or [])
        data = load_dataset(cfg.data)
        import torch

        idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))[:6]
        viz.forward_process_grid(
            build_process(cfg.diffusion),
            to_float(data.images[idx]),
            out,
            generator=torch.Generator().manual_seed(args.seed),
        )
    print(f"difflab: wrote {out}")
    return 0


# ---------------------------------------------------------------------------- info
def cmd_info(args: argparse.Namespace) -> int:
    from difflab.training.checkpoint import load_checkpoint

    path = resolve_checkpoint(args.checkpoint)
    with reading_checkpoint(path):
        ck = load_checkpoint(path, with_training_state=True)
        print("\n".join(describe_checkpoint(ck.path, ck)))  # the folder it fell back to
    return 0


def describe_checkpoint(path: Path, ck) -> list[str]:
    """`difflab info`'s lines."""
    c = ck.config
    run = c.get("run", {})
    trained = c.get("trained", {})
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in ck.weights().values()})
    lines = [
        f"checkpoint   {path}",
        f"kind         {c.get('kind')}",
        f"network      {c.get('network', {}).get('type')} "
        f"{c.get('parameters', 0) / 1e6:.2f} M parameters ({', '.join(dtypes)})",
        f"data         {c.get('dataset')} {tuple(c.get('image_shape', []))}",
        f"classes      {c.get('class_names') if c['network'].get('num_classes') else 'none'}",
        f"diffusion    {run.get('diffusion')}",
        f"training     step {ck.state.get('step', trained.get('step', '?'))}, "
        f"{ck.state.get('elapsed_seconds', 60 * trained.get('train_minutes', 0)) / 60:.1f} "
        "min of optimizer steps",
        f"files        {size / 1e6:.2f} MB: {', '.join(sorted(f.name for f in path.iterdir()))}",
    ]
    if "autoencoder" in c:
        ae = c["autoencoder"]
        lines.insert(3, f"latent       {tuple(c.get('model_shape', []))} from an autoencoder "
                        f"(scale {ae['latent_scale']:.4f}, trained as {ae['source']})")
    if c.get("text_encoder"):
        lines.insert(3, f"text         {c['text_encoder']}")
    if c.get("trained_on"):
        on = c["trained_on"]
        how = f", {on['precision']}" if on.get("precision") else ""
        how += f" x{on['threads']} threads" if on.get("threads") else ""
        lines.append(f"trained on   {on.get('device')}: {on.get('cpu')}{how}")
        if on.get("why"):
            lines.append(f"             ({on['why']})")
    if "trained" in c:
        lines.append(f"provenance   {json.dumps(c['trained'])}")
    return lines


# ---------------------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    import platform

    import torch

    from difflab.training.checkpoint import export_for_inference

    provenance = {
        "hardware": args.hardware
        or f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU threads, torch {torch.__version__}"
    }
    if args.command_line:
        provenance["command"] = args.command_line
    dtype = torch.float16 if args.fp16 else None
    src = resolve_checkpoint(args.checkpoint)
    check_export_destination(src, Path(args.out), force=args.force)
    if not args.quiet:  # one read and one write: a line to say what runs, not a bar
        how = "float16" if args.fp16 else "as stored"
        print(f"difflab: exporting {src} to {args.out} (EMA weights where saved, {how}) ...",
              file=sys.stderr, flush=True)
    with reading_checkpoint(src):
        out = export_for_inference(src, args.out, dtype=dtype, provenance=provenance)
    size = sum(f.stat().st_size for f in Path(out).iterdir())
    print(f"difflab: wrote {out} ({size / 1e6:.2f} MB)")
    return 0


def check_export_destination(src: Path, dest: Path, *, force: bool) -> None:
    """Export writes its folder whole, replacing what is there; so it writes only where
    nothing is lost: a new or empty folder, or (--force) an earlier sampling-only export. Never
    the checkpoint being exported, a folder around it or inside it, whatever --force says."""
    from difflab.training.checkpoint import is_difflab_checkpoint

    s, d = src.resolve(), dest.resolve()
    if d == s:
        raise CLIError(f"{dest} is the checkpoint being exported; give a new folder")
    if d in s.parents:
        raise CLIError(
            f"{dest} holds the checkpoint being exported ({src}) and would be replaced by "
            "the export; give a new folder"
        )
    if s in d.parents:
        raise CLIError(f"{dest} is inside the checkpoint being exported; give a new folder")
    if not os.path.lexists(dest):
        return
    if dest.is_symlink() or not dest.is_dir():
        raise CLIError(f"{dest} exists and is not a folder; export writes a folder: give a "
                       "new name")
    contents = sorted(p.name for p in dest.iterdir())
    if not contents:
        return
    if not is_difflab_checkpoint(dest):
        raise CLIError(
            f"{dest} is a folder of other files ({', '.join(contents[:3])}"
            f"{', ...' if len(contents) > 3 else ''}), not a difflab checkpoint; export "
            "replaces its destination whole, so give a new folder"
        )
    if not force:
        raise CLIError(f"{dest} already holds a difflab checkpoint; add --force to replace it")
    training = [n for n in contents if n in TRAINING_STATE]
    if training:
        raise CLIError(
            f"{dest} is a training checkpoint (it holds {', '.join(training)}: a run resumes "
            "from it); --force replaces only an earlier export: give a new folder"
        )
    foreign = [
        n for n in contents
        if n not in CHECKPOINT_FILES and not (n.endswith(".safetensors") and (dest / n).is_file())
    ]  # fmt: skip
    if foreign:
        raise CLIError(
            f"{dest} holds files a checkpoint does not ({', '.join(foreign[:3])}); --force "
            "would delete them: move them away or give a new folder"
        )
    print(f"difflab: --force: replacing the checkpoint in {dest}", file=sys.stderr)


# ---------------------------------------------------------------------------- parser


def add_sampling_arguments(s: argparse.ArgumentParser, default_n: int) -> None:
    """Options every drawing command shares (sample, img2img, inpaint)."""
    s.add_argument(
        "--sampler",
        type=sampler_name,
        help="default: the checkpoint's [sample] sampler (the shipped models: dpmpp_2m)",
    )
    s.add_argument(
        "--steps",
        type=int_in(1, MAX_STEPS),
        help="steps of the time grid (default: the checkpoint's [sample] steps; with another "
        "--sampler, that sampler's own default: ddim 50, dpmpp_2m 20, ...)",
    )
    s.add_argument("-n", "--num", dest="n", type=int_in(1, MAX_SAMPLES), default=default_n)
    s.add_argument("--seed", type=int_in(0, MAX_SEED), default=0)
    s.add_argument(
        "--prompt",
        action="append",
        help="text prompt (text models; repeatable: `sample` draws a grid row per prompt, "
        "img2img and inpaint cycle them)",
    )
    s.add_argument(
        "--negative-prompt",
        action="append",
        help="what to steer away from (replaces the unconditional branch of guidance: "
        "--guidance, or the checkpoint's)",
    )
    s.add_argument(
        "--guidance",
        type=float_in(0, MAX_GUIDANCE),
        help="classifier-free guidance scale, with --class or --prompt (default: the "
        f"checkpoint's [sample] guidance; 1: the plain conditional model; 0 to {MAX_GUIDANCE:g})",
    )
    s.add_argument(
        "--nearest-captions",
        type=int_in(0, 100_000),
        metavar="K",
        help="read each prompt as a blend of its K nearest training captions (text models "
        "with a caption bank; default: the run's text.nearest_captions; 0: off)",
    )
    s.add_argument(
        "--eta",
        type=float_in(0, 1),
        help="DDIM eta (0 deterministic, 1 like DDPM); ddim's default is the checkpoint's "
        "[sample] eta when that is its sampler",
    )
    s.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=256)
    s.add_argument("--nrow", type=int_in(1, MAX_GRID))
    s.add_argument("--scale", type=int_in(1, MAX_SCALE), default=2, help="upscale the PNG grid")
    s.add_argument(
        "--no-clip", action="store_true", help="do not clip x0 to [-1, 1] (pixel models)"
    )
    s.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    s.add_argument("--device", type=device_name, help="cpu, cuda, cuda:1, mps (default: the "
                   "first of those this machine has)")
    s.add_argument(
        "--quiet", action="store_true", help="no progress bar on stderr (results still print)"
    )


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="difflab", description=__doc__.split("\n")[0])
    debug_help = "on an error, show the full traceback (also: DIFFLAB_DEBUG=1)"
    p.add_argument("--debug", action="store_true", help=debug_help)
    # --debug after the command too (`difflab sample ... --debug`); SUPPRESS keeps a command
    # without it from resetting the one given before the command.
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help=debug_help)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **kw) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kw)

    t = command("train", help="train a model from a TOML config")
    t.add_argument(
        "config",
        nargs="?",
        default=DEFAULT_CONFIG,
        help="TOML file or preset name in configs/ (default: fashion_mnist)",
    )
    t.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.lr=1e-3 (repeatable)",
    )
    t.add_argument(
        "--out",
        help="run folder (default: runs/CONFIG_NAME); one that already holds a run needs "
        "--resume or --overwrite",
    )
    t.add_argument("--resume", action="store_true", help="continue from OUT/last exactly")
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in OUT: removes what difflab wrote there (last/, best/, "
        "samples/, metrics.jsonl, the report), keeps every other file",
    )
    t.add_argument(
        "--minutes",
        type=float_in(0, 10**7, low_open=True),
        help="wall-clock training budget of the whole run (resumed time counts)",
    )
    t.add_argument(
        "--steps", type=int_in(1, 10**9), help="stop after this many optimizer steps"
    )
    t.add_argument("--device", type=device_name,
                   help="cpu, cuda, cuda:1 (default: cuda when available)")
    t.add_argument("--no-report", action="store_true", help="skip the pictures at the end")
    t.set_defaults(func=cmd_train)

    s = command("sample", help="draw images from a checkpoint")
    s.add_argument("checkpoint", help="checkpoint folder or shipped model name")
    add_sampling_arguments(s, default_n=64)
    s.add_argument("--out", default="samples.png", help="FILE.png (grid) or FILE.npz")
    s.add_argument("--gif", help="also write the reverse process as a GIF")
    s.add_argument(
        "--class",
        dest="classes",
        action="append",
        help="class name or index (repeatable: a grid row per class), or 'all' for one row "
        "per class of the model (-n is rounded up to whole rows)",
    )
    s.set_defaults(func=cmd_sample)

    im = command(
        "img2img", help="re-draw an image toward a prompt (noise to --strength, denoise)"
    )
    im.add_argument("checkpoint", help="checkpoint folder or shipped model name")
    im.add_argument("image", help="image file (converted to the model's mode; same size)")
    im.add_argument(
        "--strength",
        type=float_in(0, 1),
        help=f"0 keeps the image, 1 ignores it (default: {IMG2IMG_STRENGTH_DEFAULT:g}, the "
        "smallest strength that changes the class as often as 80%% of the best; BENCHMARKS.md)",
    )
    add_sampling_arguments(im, default_n=4)
    im.add_argument("--out", default="img2img.png", help="FILE.png")
    im.set_defaults(func=cmd_img2img)

    ip = command("inpaint", help="fill the masked part of an image, keep the rest")
    ip.add_argument("checkpoint", help="checkpoint folder or shipped model name")
    ip.add_argument("image", help="image file (converted to the model's mode; same size)")
    ip.add_argument("mask", help="mask image of the same size: white (non-zero) = fill")
    add_sampling_arguments(ip, default_n=4)
    ip.add_argument("--out", default="inpaint.png", help="FILE.png")
    ip.set_defaults(func=cmd_inpaint)

    from difflab.metrics.command import add_eval_arguments

    add_eval_arguments(
        command(
            "eval", help="FID, KID, precision/recall, NLL of a checkpoint or an .npz of samples"
        )
    )

    v = command("viz", help="pictures of the process: forward | schedules | toy1d")
    v.add_argument("what", choices=("forward", "schedules", "toy1d"))
    v.add_argument("--config", default=DEFAULT_CONFIG, help="for 'forward': data + schedule")
    v.add_argument("--set", action="append", metavar="KEY=VALUE")
    v.add_argument("--out", default="viz.png")
    v.add_argument("--timesteps", type=int_in(2, MAX_STEPS), default=1000)
    v.add_argument("--seed", type=int_in(0, MAX_SEED), default=0)
    v.set_defaults(func=cmd_viz)

    e = command("export", help="a small sampling-only copy of a checkpoint (EMA weights)")
    e.add_argument("checkpoint")
    e.add_argument("out", help="folder to write (new, empty, or an earlier export with --force)")
    e.add_argument("--fp16", action="store_true", help="store the weights in float16")
    e.add_argument(
        "--force", action="store_true", help="replace an earlier export already in OUT"
    )
    e.add_argument("--command-line", help="the command that trained it, for the record")
    e.add_argument("--hardware", help="what it was trained on (default: this machine)")
    e.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    e.set_defaults(func=cmd_export)

    i = command("info", help="what a checkpoint is, how it was trained, its size")
    i.add_argument("checkpoint")
    i.set_defaults(func=cmd_info)
    return p


# ---------------------------------------------------------------------------- errors
def debug_requested(argv: list[str]) -> bool:
    """--debug on the command line (before a `--`), or DIFFLAB_DEBUG set to anything but 0."""
    flags = argv[: argv.index("--")] if "--" in argv else argv
    return "--debug" in flags or os.environ.get("DIFFLAB_DEBUG", "") not in ("", "0")


def user_error(e: BaseException) -> bool:
    """Whether an exception is a failure the user can cause and fix (a bad value, file or
    device, a full disk, too little memory), said in one line; anything else is a bug in
    difflab, reported as an internal error."""
    from PIL import Image

    if isinstance(e, NotImplementedError | RecursionError):
        return False  # RuntimeErrors that mean difflab is at fault
    if isinstance(e, RuntimeError):
        return bool(str(e).strip())
    return isinstance(
        e,
        CLIError | ValueError | OSError | MemoryError | EOFError | ImportError  # a missing extra
        | Image.DecompressionBombError,
    )


def error_message(e: BaseException) -> str:
    """The exception as one line: what failed and, for files, which one."""
    if isinstance(e, OSError) and e.strerror:  # "[Errno 28] ..." -> what and which file
        where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
        text = f"{e.strerror}: {where}" if where else e.strerror
        if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            text += " (the disk is full or a file-size limit was reached: free some space, " \
                    "or write somewhere else)"
        return text
    if isinstance(e, MemoryError):
        return "out of memory" + (f" ({e})" if str(e) else "") + ": ask for fewer or smaller " \
               "images (-n, --batch-size, train.batch_size)"
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return " ".join(lines) or type(e).__name__  # a multi-line message, on one line


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as `difflab: warning: ...`, without the source line Python prints."""
    print(f"difflab: warning: {message}", file=sys.stderr)


def _stdout_gone() -> None:
    """After a broken pipe (`difflab info | head`), point stdout at /dev/null so that the
    interpreter's last flush at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (tests)
        pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    try:
        with warnings.catch_warnings():  # restores showwarning after (main runs in tests)
            if not debug:
                warnings.showwarning = _show_warning
            args = build_parser().parse_args(argv)
            args.argv = argv
            code = args.func(args)
            sys.stdout.flush()  # a closed pipe fails here, not in the interpreter's exit
            return code
    except KeyboardInterrupt:
        if debug:
            raise
        print("difflab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`difflab info | head`): nothing to say, and no one to say
        # it to; 141 is what a shell reports for a program ended by SIGPIPE.
        _stdout_gone()
        return 141
    except Exception as e:  # every failure ends in one line, --debug aside
        if debug and not (isinstance(e, CLIError) and e.__cause__ is None):
            raise
        if user_error(e):
            print(f"difflab: error: {error_message(e)}", file=sys.stderr)
            return 2
        print(
            f"difflab: error: internal error, {type(e).__name__}: {error_message(e)} "
            "(a bug in difflab: rerun with --debug for the traceback and report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
