"""`difflab eval`: FID, KID, precision/recall (and NLL) of a checkpoint, or of anyone's samples.

    difflab eval CHECKPOINT [--samples N] [--sampler S] [--steps K] [--nll] [--nll-timesteps K]
                            [--json FILE]
    difflab eval --images FILE.npz --dataset fashion_mnist [--json FILE]
    difflab eval CHECKPOINT --geneval [--images-per-prompt 4] [--guidance G] [--steps K]
    difflab eval --geneval --images FILE.npz          # 'images' and 'prompts', one per image

--geneval scores a text-to-image model of the shapes world on the 99 held-out test prompts
(GenEval's six categories, difflab.metrics.geneval, docs/shapes.md) instead of FID.

It prints a table (difflab.metrics.format_report), writes JSON with --json, returns 0, and
raises ValueError / FileNotFoundError with a message for the user. An --images file is
checked from its headers before numpy loads it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np

from difflab.argtypes import (
    MAX_BATCH,
    MAX_GUIDANCE,
    MAX_SAMPLES,
    MAX_SEED,
    MAX_STEPS,
    device_name,
    float_in,
    int_in,
    sampler_name,
)
from difflab.cli.errors import reading_checkpoint
from difflab.cli.inputs import CHECKPOINT_HELP, check_output_file, resolve_checkpoint
from difflab.cli.sampling import (
    add_attention_guidance_arguments,
    add_autoguidance_argument,
    add_compile_argument,
    add_grid_arguments,
    add_guidance_interval_argument,
    guidance_interval,
)
from difflab.evaluation import evaluate_checkpoint, geneval_checkpoint
from difflab.metrics.evaluate import (
    REFERENCE_SPLITS,
    evaluate_images,
    format_report,
    load_images_file,
)
from difflab.metrics.features import DATASETS
from difflab.metrics.geneval import format_geneval_report, score_images_file
from difflab.ownership import MARK, MARK_KEY


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of `difflab eval`; sets func=cmd_eval as the parser's default."""
    parser.add_argument(
        "checkpoint", nargs="?", help=CHECKPOINT_HELP + " (or use --images)"
    )
    parser.add_argument(
        "--images",
        metavar="FILE.npz",
        help="evaluate these samples instead: 'images' uint8 (N, C, H, W), "
        "(N, H, W) or (N, H, W, C), optional 'labels' (the dataset's class index each image "
        "was asked to be); needs --dataset",
    )
    parser.add_argument(
        "--dataset", choices=DATASETS, help="the real data to compare --images with"
    )
    parser.add_argument(
        "--samples",
        type=int_in(4, MAX_SAMPLES),  # KID compares subsets of 4 or more
        default=10_000,
        help="images to draw from the checkpoint (default 10000; FID is biased "
        "upward on fewer, so compare equal numbers)",
    )
    parser.add_argument(
        "--sampler",
        type=sampler_name,
        help="sampler name (default: the checkpoint's [sample] sampler)",
    )
    parser.add_argument(
        "--steps", type=int_in(1, MAX_STEPS),
        help="default: the checkpoint's [sample] steps for its sampler, else per sampler",
    )
    parser.add_argument(
        "--seed",
        type=int_in(0, MAX_SEED),
        default=0,
        help="seed of the samples and of every random choice (default 0)",
    )
    parser.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=256)
    parser.add_argument(
        "--guidance",
        type=float_in(0, MAX_GUIDANCE),
        help=f"classifier-free guidance scale (0 to {MAX_GUIDANCE:g})",
    )
    add_guidance_interval_argument(parser)
    add_autoguidance_argument(parser)
    add_attention_guidance_arguments(parser)
    add_grid_arguments(parser)
    parser.add_argument(
        "--reference",
        choices=REFERENCE_SPLITS,
        default="test",
        help="real split to compare with (default test)",
    )
    parser.add_argument(
        "--n-reference",
        type=int_in(4, MAX_SAMPLES),
        help="a random subset of this many reference images",
    )
    parser.add_argument(
        "--nll", action="store_true", help="also the test-set negative log-likelihood in bits/dim"
    )
    parser.add_argument(
        "--nll-timesteps",
        type=int_in(1, MAX_STEPS),
        metavar="K",
        help="VLB terms evaluated per image (default: all T, T network calls per batch; K "
        "gives an unbiased estimate with K calls, e.g. 50 on a CPU)",
    )
    parser.add_argument(
        "--nll-images",
        type=int_in(1, MAX_SAMPLES),
        default=1000,
        help="test images for the NLL (default 1000)",
    )
    parser.add_argument(
        "--geneval",
        action="store_true",
        help="GenEval-style prompt following on the shapes world (a text-to-image shapes "
        "model, or --images with 'prompts'), with FID in that world's feature space, instead "
        "of the dataset FID",
    )
    parser.add_argument(
        "--images-per-prompt",
        type=int_in(1, 1000),
        default=4,
        help="--geneval: images drawn per test prompt (default 4, as GenEval)",
    )
    parser.add_argument(
        "--negative-prompt", help="--geneval: a negative prompt for every image"
    )
    add_compile_argument(parser)
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    parser.add_argument(
        "--device", type=device_name, help="cpu, cuda, ... (default: cuda when available)"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bars or messages on stderr"
    )
    parser.set_defaults(func=cmd_eval)
    return parser


# Flags that shape how a checkpoint's samples are drawn: --images are drawn already.
_DRAWING_FLAGS = ("sampler", "steps", "guidance", "guidance_interval", "autoguidance",
                  "sigma_max", "rho")


def _refuse_unread_flags(args: argparse.Namespace) -> None:
    """A flag the evaluation asked for would not read is refused, not silently ignored."""
    def flag(dest: str) -> str:
        return "--" + dest.replace("_", "-")

    if args.images is not None:
        for dest in _DRAWING_FLAGS:
            if getattr(args, dest) is not None:
                raise ValueError(f"{flag(dest)} shapes how a checkpoint's samples are drawn; "
                                 "--images are drawn already: drop it")
    if args.nll_timesteps is not None and not args.nll:
        raise ValueError("--nll-timesteps sets the NLL's estimate: it goes with --nll")
    if args.negative_prompt is not None and not (args.geneval and args.images is None):
        raise ValueError("--negative-prompt steers the prompts of --geneval's samples; it goes "
                         "with --geneval and a checkpoint")


def cmd_eval(args: argparse.Namespace) -> int:
    """`difflab eval`: print the report's table, write JSON with --json. Bad input raises
    ValueError / FileNotFoundError with a message for the user."""
    verbose = not getattr(args, "quiet", False)
    _refuse_unread_flags(args)
    if args.json:  # found out now, not after minutes of sampling
        check_output_file(args.json, "--json")
    if args.compile is not None and (args.geneval or args.images is not None):
        raise ValueError("--compile goes with drawing a checkpoint's samples for FID, not "
                         "with --geneval or --images")
    steering = [flag for flag, value in (("--relation-guidance", args.relation_guidance),
                                         ("--binding-guidance", args.binding_guidance),
                                         ("--relation-regions" if args.relation_regions
                                          else "--no-relation-regions",
                                          args.relation_regions))
                if value is not None]
    if steering and not (args.geneval and args.images is None):
        raise ValueError(f"{steering[0]} steers the prompts of --geneval's samples; it goes "
                         "with --geneval and a checkpoint (FID samples and --images have none)")
    if verbose and args.n_reference is not None and args.n_reference < FEW_REFERENCE_IMAGES:
        print(f"difflab: warning: FID against {args.n_reference:,} reference images is biased "
              "upward and noisy; compare it only with figures of the same --n-reference "
              "(BENCHMARKS.md uses 10,000)", file=sys.stderr)
    if args.geneval:
        report = _geneval(args, verbose)
    elif args.images is not None:
        if args.checkpoint is not None:
            raise ValueError("give either a checkpoint or --images, not both")
        if args.dataset is None:
            raise ValueError(f"--images needs --dataset ({', '.join(DATASETS)})")
        if args.nll:
            raise ValueError("--nll needs a checkpoint (a model), not --images")
        check_array_file(args.images)
        images, labels = load_images_file(args.images)
        report = evaluate_images(
            images,
            args.dataset,
            labels,
            reference_split=args.reference,
            n_reference=args.n_reference,
            seed=args.seed,
            verbose=verbose,
        )
        report["images_file"] = str(args.images)
    else:
        if args.checkpoint is None:
            raise ValueError("give a checkpoint to evaluate, or --images FILE.npz --dataset NAME")
        if args.dataset is not None:
            raise ValueError("--dataset goes with --images; a checkpoint names its own dataset")
        with reading_checkpoint(resolve_checkpoint(args.checkpoint)):
            report = evaluate_checkpoint(
                args.checkpoint,
                args.samples,
                sampler=args.sampler,
                steps=args.steps,
                seed=args.seed,
                batch_size=args.batch_size,
                guidance=args.guidance,
                guidance_interval=guidance_interval(args),
                autoguidance=args.autoguidance,
                sigma_max=args.sigma_max,
                rho=args.rho,
                reference_split=args.reference,
                n_reference=args.n_reference,
                nll=args.nll,
                nll_timesteps=args.nll_timesteps,
                nll_images=args.nll_images,
                device=args.device,
                verbose=verbose,
                compile=args.compile or "auto",
            )
    print(format_geneval_report(report) if args.geneval else format_report(report))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({**report, MARK_KEY: MARK}, indent=2) + "\n")
        tmp.replace(out)
        print(f"difflab: wrote {out}")
    return 0


def _geneval(args: argparse.Namespace, verbose: bool) -> dict:
    """`difflab eval --geneval`: a checkpoint sampled on the test prompts, or an --images
    file scored against its own prompts."""
    if args.dataset is not None:
        raise ValueError("--geneval scores the shapes world; leave out --dataset")
    if args.nll:
        raise ValueError("--nll goes without --geneval (it measures likelihood, not prompts)")
    if args.images is not None:
        if args.checkpoint is not None:
            raise ValueError("give either a checkpoint or --images, not both")
        check_array_file(args.images)
        report = score_images_file(args.images)
        report["images_file"] = str(args.images)
        return report
    if args.checkpoint is None:
        raise ValueError("--geneval needs a checkpoint to sample, or --images FILE.npz")
    with reading_checkpoint(resolve_checkpoint(args.checkpoint)):
        return geneval_checkpoint(
            args.checkpoint,
            images_per_prompt=args.images_per_prompt,
            seed=args.seed,
            sampler=args.sampler,
            steps=args.steps,
            guidance=args.guidance,
            guidance_interval=guidance_interval(args),
            autoguidance=args.autoguidance,
            sigma_max=args.sigma_max,
            rho=args.rho,
            relation_guidance=args.relation_guidance,
            binding_guidance=args.binding_guidance,
            relation_regions=args.relation_regions,
            batch_size=args.batch_size,
            negative_prompt=args.negative_prompt,
            device=args.device,
            verbose=verbose,
        )


# Fewer reference images than this get a warning: FID's covariance is then estimated from too
# few images (real test images against 2,000 training images already read ~0.5).
FEW_REFERENCE_IMAGES = 1000


# The most one array of an --images file may hold: 4 GiB (a million 28x28 RGB images in uint8
# are 2.4 GB). A header that claims more is refused before numpy allocates for it.
MAX_ARRAY_BYTES = 4 << 30


def check_array_file(path: str | os.PathLike) -> None:
    """Check an --images .npz / .npy from its headers alone, before numpy loads it: a file
    (not a folder), a readable archive, and arrays whose claimed size is both sane and what
    the file really holds -- a 1 KB file whose header claims a (10**9, 3, 256, 256) array
    would otherwise make np.load allocate first and fail after (or never)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--images {path} is a folder; give an .npz or .npy file")
    if not path.is_file():
        raise FileNotFoundError(f"--images {path}: no such file")

    def check(fh, stored: int, name: str) -> None:
        """One .npy stream: its header, then the claimed size against `stored` bytes."""
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        except (ValueError, EOFError, OSError) as e:
            raise ValueError(f"{name} is not a NumPy array ({e})") from None
        if dtype.hasobject:
            raise ValueError(f"{name} holds Python objects; give plain numeric arrays")
        claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if claimed > MAX_ARRAY_BYTES:
            raise ValueError(
                f"{name} claims an array of shape {shape} ({claimed / 1e9:.3g} GB), more "
                f"than the {MAX_ARRAY_BYTES / 1e9:.3g} GB difflab evaluates at once"
            )
        if claimed > stored - fh.tell():
            raise ValueError(
                f"{name}: its header claims shape {shape} ({claimed} bytes of {dtype}) but "
                f"the file holds {max(0, stored - fh.tell())}; it is truncated or corrupt"
            )

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if info.filename.endswith(".npy"):
                        with archive.open(info) as fh:
                            check(fh, info.file_size, f"{path.name}[{info.filename[:-4]!r}]")
        else:
            with open(path, "rb") as fh:
                if fh.read(2) == b"PK":  # a zip's signature, but no readable archive
                    raise zipfile.BadZipFile("truncated or corrupt")
                fh.seek(0)
                check(fh, path.stat().st_size, path.name)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError,
            zlib.error) as e:
        raise ValueError(f"{path.name} is not a readable .npz archive ({e})") from None

