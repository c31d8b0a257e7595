"""`difflab export CHECKPOINT OUT`: a small sampling-only copy of a checkpoint (EMA weights,
optionally float16), with a record of what trained it.

Export writes its folder whole, so it writes only where nothing is lost: a new or empty
folder, or with --force an earlier export; never a training checkpoint or a folder of other
files.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import torch

from difflab.argtypes import float_in, record_text
from difflab.checkpoints.store import (
    export_for_inference,
    is_difflab_checkpoint,
    load_checkpoint,
    peek_config,
)
from difflab.cli.errors import CLIError, reading_checkpoint
from difflab.cli.inputs import resolve_checkpoint
from difflab.training.posthoc_ema import MAX_SIGMA_REL
from difflab.training.posthoc_snapshots import rebuild
from difflab.training.run_state import describe_machine

# The files a checkpoint folder holds besides its NAME.safetensors (checkpoints/store.py):
# `export --force` replaces a folder of these only, so that nothing else in it is lost.
CHECKPOINT_FILES = ("config.json", "manifest.json", "state.json", "optimizer.pt")
TRAINING_STATE = ("state.json", "optimizer.pt")


def add_export_arguments(e: argparse.ArgumentParser) -> None:
    """The flags of `difflab export`; sets func=cmd_export."""
    e.add_argument("checkpoint")
    e.add_argument("out", help="folder to write (new, empty, or an earlier export with --force)")
    e.add_argument("--fp16", action="store_true", help="store the weights in float16")
    e.add_argument(
        "--force", action="store_true", help="replace an earlier export already in OUT"
    )
    e.add_argument(
        "--ema-length", type=float_in(0, MAX_SIGMA_REL, low_open=True), metavar="SIGMA_REL",
        help="export the post-hoc EMA of this length (a share of the run, e.g. 0.08) instead "
        "of the run's EMA; the run must have kept snapshots (train.posthoc_ema)",
    )
    e.add_argument(
        "--guide-ema-length", type=float_in(0, MAX_SIGMA_REL, low_open=True),
        metavar="SIGMA_REL",
        help="the same for autoguidance's guide, rebuilt at the step the run kept it",
    )
    e.add_argument("--command-line", type=record_text,
                   help="the command that trained it, for the record")
    e.add_argument("--hardware", type=record_text,
                   help="what it was trained on (default: this machine)")
    e.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    e.set_defaults(func=cmd_export)


def training_machine(src: Path) -> str:
    """What the checkpoint at `src` says it trained on (its run's machine record), else this
    machine, said to be the exporting one: the export's record must not pass the machine that
    copied the weights off as the one that trained them."""
    config = peek_config(src) or {}
    record = config.get("trained_on")
    if isinstance(record, dict) and isinstance(record.get("cpu"), str):
        return describe_machine(record)
    earlier = config.get("trained")  # an export exported again keeps what it says
    if isinstance(earlier, dict) and isinstance(earlier.get("hardware"), str):
        return earlier["hardware"]
    return (f"exported on {platform.processor() or platform.machine()}, {os.cpu_count()} CPU "
            f"threads, torch {torch.__version__} (the checkpoint records no training machine)")


def cmd_export(args: argparse.Namespace) -> int:
    """Check the destination, then write the sampling-only copy with its provenance."""
    src = resolve_checkpoint(args.checkpoint)
    provenance = {"hardware": args.hardware or training_machine(src)}
    if args.command_line:
        provenance["command"] = args.command_line
    dtype = torch.float16 if args.fp16 else None
    if not str(args.out).strip():  # Path("") is the current folder, which is never meant
        raise CLIError("the destination folder's name is empty; give a new folder")
    check_export_destination(src, Path(args.out), force=args.force)
    if not args.quiet:  # one read and one write: a line to say what runs, not a bar
        how = "float16" if args.fp16 else "as stored"
        which = ("the EMA weights where saved" if args.ema_length is None
                 else f"the post-hoc EMA of length {args.ema_length:g}")
        print(f"difflab: exporting {src} to {args.out} ({which}, {how}) ...",
              file=sys.stderr, flush=True)
    with reading_checkpoint(src):
        weights = posthoc_weights(src, args.ema_length, args.guide_ema_length, provenance)
        out = export_for_inference(src, args.out, dtype=dtype, provenance=provenance, **weights)
    size = sum(f.stat().st_size for f in Path(out).iterdir())
    print(f"difflab: wrote {out} ({size / 1e6:.2f} MB)")
    return 0


def posthoc_weights(src: Path, length: float | None, guide_length: float | None,
                    provenance: dict) -> dict:
    """The post-hoc EMA weights asked for (--ema-length, --guide-ema-length: lengths in
    (0, MAX_SIGMA_REL], checked as the flags are read) as export_for_inference's keywords,
    each recorded in the provenance."""
    found = {}
    for what, sigma_rel in (("weights", length), ("guide", guide_length)):
        if sigma_rel is None:
            continue
        step = None
        if what == "guide":
            step = load_checkpoint(src, with_training_state=True).state.get("guide_step")
            if not isinstance(step, int):
                raise CLIError(f"--guide-ema-length: {src} kept no guide (train.guide_at)")
        found[what], record = rebuild(src, sigma_rel, step)
        provenance["posthoc_ema" if what == "weights" else "guide_posthoc_ema"] = record
    return found


def check_export_destination(src: Path, dest: Path, *, force: bool) -> None:
    """Export writes its folder whole, replacing what is there; so it writes only where
    nothing is lost: a new or empty folder, or (--force) an earlier sampling-only export. Never
    the checkpoint being exported, a folder around it or inside it, whatever --force says."""
    for parent in dest.parents:  # before "exporting ...": a path through a file
        if parent.exists():
            if not parent.is_dir():
                raise CLIError(f"{dest}: {parent} is a file, not a folder; give a new folder")
            break
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

