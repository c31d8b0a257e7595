"""The `difflab` command line: train | sample | img2img | inpaint | eval | viz | info | export.

    difflab train configs/fashion_mnist.toml --minutes 10 --out runs/fashion
    difflab sample runs/fashion/last -n 64 --out samples.png   # the run's [sample] sampler, steps
    difflab sample runs/fashion/last -n 64 --sampler ddim --steps 50 --out samples.png
    difflab viz forward | schedules | toy1d --out FILE.png
    difflab info runs/fashion/last

Nothing below this file reads the command line; every flag is checked here and a bad value
is reported with the allowed ones, without a traceback.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from difflab.argtypes import positive_float, positive_int

if TYPE_CHECKING:
    from difflab.pipeline import SamplingSettings

DEFAULT_CONFIG = "fashion_mnist"
# difflab.pipeline.DEFAULT_IMG2IMG_STRENGTH, repeated for --help without importing torch
# (tests/test_image_inputs.py checks that they agree).
IMG2IMG_STRENGTH_DEFAULT = 0.9


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
    raise SystemExit(
        f"difflab: config {name!r} not found; give a TOML file or one of the "
        f"presets: {', '.join(presets)}"
    )


def _sampler_name(text: str) -> str:
    from difflab.samplers import SAMPLERS

    if text not in SAMPLERS:
        raise argparse.ArgumentTypeError(
            f"unknown sampler {text!r}; allowed: {', '.join(sorted(SAMPLERS))}"
        )
    return text


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
    trainer = Trainer(cfg, out, device=args.device)
    main = trainer.dist.is_main
    if args.resume:
        if not (out / "last").is_dir():
            raise SystemExit(f"difflab: --resume: no checkpoint at {out / 'last'}")
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
        paths = report.write_report(trainer, out, command=["difflab", *args.argv])
        print("difflab: wrote")
        for what, p in paths.items():
            print(f"  {what:>8}: {p}")
    print(f"difflab: {report.final_check(trainer)}")
    return 0


# ---------------------------------------------------------------------------- sample
def cmd_sample(args: argparse.Namespace) -> int:
    from difflab import viz
    from difflab.pipeline import Generator

    gen = Generator.from_checkpoint(resolve_checkpoint(args.checkpoint), device=args.device)
    classes, row_labels = sample_rows(args, gen)
    kw = sampling_kwargs(args, gen, classes)
    out = Path(args.out)
    if out.suffix not in (".png", ".npz"):
        raise SystemExit(f"difflab: --out must end in .png or .npz, got {out.name!r}")
    if args.gif and out.suffix == ".png" and args.n > args.batch_size:
        # Every frame is one grid of the whole run; batches after the first would not fit it.
        raise SystemExit(
            f"difflab: --gif draws all {args.n} samples in one batch: raise --batch-size to "
            f"{args.n} or draw fewer"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npz":
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
        viz.save_grid(images, out, nrow=nrow, scale=args.scale, row_labels=labels, title=title)
        if recorder is not None:
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


def sample_rows(args: argparse.Namespace, gen) -> tuple[list | None, list[str] | None]:
    """Lay out several classes (`--class all` or a list) or several prompts as one grid row
    each: every value is drawn ceil(n / values) times in a row, and when that changes n a
    line says so. Sets args.n, args.per_row (None: no rows) and, for prompts, args.prompt
    (and args.negative_prompt when there is one per prompt). Returns (classes for the
    Generator or None, one label per row or None)."""
    args.per_row = None
    if args.classes == ["all"]:
        if gen.num_classes is None:
            raise SystemExit("difflab: --class all needs a class-conditional checkpoint")
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
        raise SystemExit(
            f"difflab: --eta is a setting of {', '.join(with_eta)}; this run samples with "
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


def _save_edits(images, args: argparse.Namespace) -> int:
    from difflab import viz

    out = Path(args.out)
    if out.suffix != ".png":
        raise SystemExit(f"difflab: --out must end in .png, got {out.name!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    viz.save_grid(images, out, nrow=args.nrow or 8, scale=args.scale)
    print(f"difflab: wrote {len(images)} images to {out}")
    return 0


def cmd_img2img(args: argparse.Namespace) -> int:
    from difflab.pipeline import Generator

    gen = Generator.from_checkpoint(resolve_checkpoint(args.checkpoint), device=args.device)
    kw = sampling_kwargs(args, gen)
    prompt = kw.pop("prompt")
    strength = args.strength
    if strength is None:  # the pipeline's measured default (bench/img2img_strength.py)
        from difflab.pipeline import DEFAULT_IMG2IMG_STRENGTH

        strength = DEFAULT_IMG2IMG_STRENGTH
        print(f"difflab: strength {strength:g} (the default; --strength overrides)")
    images = gen.img2img(args.image, prompt, strength=strength, n=args.n, **kw)
    return _save_edits(images, args)


def cmd_inpaint(args: argparse.Namespace) -> int:
    from difflab.pipeline import Generator

    gen = Generator.from_checkpoint(resolve_checkpoint(args.checkpoint), device=args.device)
    kw = sampling_kwargs(args, gen)
    prompt = kw.pop("prompt")
    images = gen.inpaint(args.image, args.mask, prompt, n=args.n, **kw)
    return _save_edits(images, args)


def resolve_checkpoint(name: str) -> Path:
    from difflab.pipeline import resolve_checkpoint as resolve

    try:
        return resolve(name)
    except FileNotFoundError as e:
        raise SystemExit(f"difflab: {e}") from None


# ---------------------------------------------------------------------------- viz
def cmd_viz(args: argparse.Namespace) -> int:
    from difflab import viz

    out = Path(args.out)
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
    ck = load_checkpoint(path, with_training_state=True)
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
    print("\n".join(lines))
    return 0


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
    if not args.quiet:  # one read and one write: a line to say what runs, not a bar
        how = "float16" if args.fp16 else "as stored"
        print(f"difflab: exporting {src} to {args.out} (EMA weights where saved, {how}) ...",
              file=sys.stderr, flush=True)
    out = export_for_inference(src, args.out, dtype=dtype, provenance=provenance)
    size = sum(f.stat().st_size for f in Path(out).iterdir())
    print(f"difflab: wrote {out} ({size / 1e6:.2f} MB)")
    return 0


# ---------------------------------------------------------------------------- parser
def add_sampling_arguments(s: argparse.ArgumentParser, default_n: int) -> None:
    """Options every drawing command shares (sample, img2img, inpaint)."""
    s.add_argument(
        "--sampler",
        type=_sampler_name,
        help="default: the checkpoint's [sample] sampler (the shipped models: dpmpp_2m)",
    )
    s.add_argument(
        "--steps",
        type=positive_int,
        help="steps of the time grid (default: the checkpoint's [sample] steps; with another "
        "--sampler, that sampler's own default: ddim 50, dpmpp_2m 20, ...)",
    )
    s.add_argument("-n", "--num", dest="n", type=positive_int, default=default_n)
    s.add_argument("--seed", type=int, default=0)
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
        type=float,
        help="classifier-free guidance scale, with --class or --prompt (default: the "
        "checkpoint's [sample] guidance; 1: the plain conditional model)",
    )
    s.add_argument(
        "--nearest-captions",
        type=int,
        metavar="K",
        help="read each prompt as a blend of its K nearest training captions (text models "
        "with a caption bank; default: the run's text.nearest_captions; 0: off)",
    )
    s.add_argument(
        "--eta",
        type=float,
        help="DDIM eta (0 deterministic, 1 like DDPM); ddim's default is the checkpoint's "
        "[sample] eta when that is its sampler",
    )
    s.add_argument("--batch-size", type=positive_int, default=256)
    s.add_argument("--nrow", type=positive_int)
    s.add_argument("--scale", type=positive_int, default=2, help="upscale the PNG grid")
    s.add_argument(
        "--no-clip", action="store_true", help="do not clip x0 to [-1, 1] (pixel models)"
    )
    s.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    s.add_argument("--device")
    s.add_argument(
        "--quiet", action="store_true", help="no progress bar on stderr (results still print)"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="difflab", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model from a TOML config")
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
    t.add_argument("--out", help="run folder (default: runs/CONFIG_NAME)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/last exactly")
    t.add_argument(
        "--minutes",
        type=positive_float,
        help="wall-clock training budget of the whole run (resumed time counts)",
    )
    t.add_argument("--steps", type=positive_int, help="stop after this many optimizer steps")
    t.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    t.add_argument("--no-report", action="store_true", help="skip the pictures at the end")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="draw images from a checkpoint")
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

    im = sub.add_parser(
        "img2img", help="re-draw an image toward a prompt (noise to --strength, denoise)"
    )
    im.add_argument("checkpoint", help="checkpoint folder or shipped model name")
    im.add_argument("image", help="image file (converted to the model's mode; same size)")
    im.add_argument(
        "--strength",
        type=float,
        help=f"0 keeps the image, 1 ignores it (default: {IMG2IMG_STRENGTH_DEFAULT:g}, the "
        "smallest strength that changes the class as often as 80%% of the best; BENCHMARKS.md)",
    )
    add_sampling_arguments(im, default_n=4)
    im.add_argument("--out", default="img2img.png", help="FILE.png")
    im.set_defaults(func=cmd_img2img)

    ip = sub.add_parser("inpaint", help="fill the masked part of an image, keep the rest")
    ip.add_argument("checkpoint", help="checkpoint folder or shipped model name")
    ip.add_argument("image", help="image file (converted to the model's mode; same size)")
    ip.add_argument("mask", help="mask image of the same size: white (non-zero) = fill")
    add_sampling_arguments(ip, default_n=4)
    ip.add_argument("--out", default="inpaint.png", help="FILE.png")
    ip.set_defaults(func=cmd_inpaint)

    from difflab.metrics.command import add_eval_arguments

    add_eval_arguments(
        sub.add_parser(
            "eval", help="FID, KID, precision/recall, NLL of a checkpoint or an .npz of samples"
        )
    )

    v = sub.add_parser("viz", help="pictures of the process: forward | schedules | toy1d")
    v.add_argument("what", choices=("forward", "schedules", "toy1d"))
    v.add_argument("--config", default=DEFAULT_CONFIG, help="for 'forward': data + schedule")
    v.add_argument("--set", action="append", metavar="KEY=VALUE")
    v.add_argument("--out", default="viz.png")
    v.add_argument("--timesteps", type=positive_int, default=1000)
    v.add_argument("--seed", type=int, default=0)
    v.set_defaults(func=cmd_viz)

    e = sub.add_parser("export", help="a small sampling-only copy of a checkpoint (EMA weights)")
    e.add_argument("checkpoint")
    e.add_argument("out", help="folder to write")
    e.add_argument("--fp16", action="store_true", help="store the weights in float16")
    e.add_argument("--command-line", help="the command that trained it, for the record")
    e.add_argument("--hardware", help="what it was trained on (default: this machine)")
    e.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    e.set_defaults(func=cmd_export)

    i = sub.add_parser("info", help="what a checkpoint is, how it was trained, its size")
    i.add_argument("checkpoint")
    i.set_defaults(func=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    from difflab.config import ConfigError
    from difflab.training.checkpoint import CheckpointError
    from difflab.training.trainer import TrainingDiverged

    try:
        return args.func(args)
    except (ConfigError, CheckpointError, TrainingDiverged, ValueError, FileNotFoundError) as e:
        if os.environ.get("DIFFLAB_DEBUG"):
            raise
        print(f"difflab: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
