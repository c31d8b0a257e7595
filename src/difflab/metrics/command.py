"""`difflab eval`: the arguments and the entry point, importing nothing heavy until run.

cli.py wires it with one line:

    from difflab.metrics.command import add_eval_arguments
    add_eval_arguments(sub.add_parser("eval", help="FID, KID, precision/recall, NLL"))

which sets `func=eval_main`. eval_main prints a table (evaluate.format_report), writes JSON with
--json, returns 0, and raises ValueError / FileNotFoundError with a message for the user.

    difflab eval CHECKPOINT [--samples N] [--sampler S] [--steps K] [--nll] [--nll-timesteps K]
                            [--json FILE]
    difflab eval --images FILE.npz --dataset fashion_mnist [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from difflab.argtypes import positive_int

# The datasets with a feature network (features.RECIPES; a test keeps the two in step).
FEATURE_DATASETS = ("fashion_mnist", "mnist", "digits")
REFERENCE_SPLITS = ("test", "train")


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of `difflab eval`; sets func=eval_main as the parser's default."""
    parser.add_argument(
        "checkpoint", nargs="?", help="checkpoint folder or shipped model name (or use --images)"
    )
    parser.add_argument(
        "--images",
        metavar="FILE.npz",
        help="evaluate these samples instead: 'images' uint8 (N, C, H, W), "
        "(N, H, W) or (N, H, W, C), optional 'labels' (the dataset's class index each image "
        "was asked to be); needs --dataset",
    )
    parser.add_argument(
        "--dataset", choices=FEATURE_DATASETS, help="the real data to compare --images with"
    )
    parser.add_argument(
        "--samples",
        type=positive_int,
        default=10_000,
        help="images to draw from the checkpoint (default 10000; FID is biased "
        "upward on fewer, so compare equal numbers)",
    )
    parser.add_argument(
        "--sampler", help="sampler name (default: the checkpoint's [sample] sampler)"
    )
    parser.add_argument(
        "--steps", type=positive_int,
        help="default: the checkpoint's [sample] steps for its sampler, else per sampler",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the samples and of every random choice (default 0)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    parser.add_argument(
        "--reference",
        choices=REFERENCE_SPLITS,
        default="test",
        help="real split to compare with (default test)",
    )
    parser.add_argument(
        "--n-reference", type=positive_int, help="a random subset of this many reference images"
    )
    parser.add_argument(
        "--nll", action="store_true", help="also the test-set negative log-likelihood in bits/dim"
    )
    parser.add_argument(
        "--nll-timesteps",
        type=positive_int,
        metavar="K",
        help="VLB terms evaluated per image (default: all T, T network calls per batch; K "
        "gives an unbiased estimate with K calls, e.g. 50 on a CPU)",
    )
    parser.add_argument(
        "--nll-images",
        type=positive_int,
        default=1000,
        help="test images for the NLL (default 1000)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bars or messages on stderr"
    )
    parser.set_defaults(func=eval_main)
    return parser


def eval_main(args: argparse.Namespace) -> int:
    """`difflab eval`: print the report's table, write JSON with --json. Bad input raises
    ValueError / FileNotFoundError with a message for the user."""
    from .evaluate import evaluate_checkpoint, evaluate_images, format_report, load_images_file

    verbose = not getattr(args, "quiet", False)
    if args.images is not None:
        if args.checkpoint is not None:
            raise ValueError("give either a checkpoint or --images, not both")
        if args.dataset is None:
            raise ValueError(f"--images needs --dataset ({', '.join(FEATURE_DATASETS)})")
        if args.nll:
            raise ValueError("--nll needs a checkpoint (a model), not --images")
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
        report = evaluate_checkpoint(
            args.checkpoint,
            args.samples,
            sampler=args.sampler,
            steps=args.steps,
            seed=args.seed,
            batch_size=args.batch_size,
            guidance=args.guidance,
            reference_split=args.reference,
            n_reference=args.n_reference,
            nll=args.nll,
            nll_timesteps=args.nll_timesteps,
            nll_images=args.nll_images,
            device=args.device,
            verbose=verbose,
        )
    print(format_report(report))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(out)
        print(f"difflab: wrote {out}")
    return 0
