"""`difflab train CONFIG`: train a model from a TOML config (a preset name or a path).

    difflab train configs/fashion_mnist.toml --minutes 10 --out runs/fashion

The run folder gets the checkpoints (last/, best/), config.json, the sample grids and, unless
--no-report, the pictures and command.sh of runs/report.py. Under torchrun every rank trains;
rank 0 alone prints and writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from difflab.argtypes import device_name, float_in, int_in
from difflab.checkpoints.names import resolve_checkpoint
from difflab.cli.errors import CLIError, writing
from difflab.cli.inputs import DEFAULT_CONFIG, resolve_config
from difflab.cli.run_lock import run_folder_lock
from difflab.cli.runs import check_run_folder, is_run_config
from difflab.config import RunConfig, load_config
from difflab.runs import report, score_fid
from difflab.training.distributed import launched_rank
from difflab.training.run_state import describe_init_from
from difflab.training.trainer import INTERRUPTED, Trainer, describe


def add_train_arguments(t: argparse.ArgumentParser) -> None:
    """The flags of `difflab train`; sets func=cmd_train."""
    t.add_argument(
        "config",
        nargs="?",
        help="TOML file or preset name in configs/, or a run's config.json (default: "
        "fashion_mnist; with --resume, the run's own config.json)",
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
        "--init-from",
        metavar="CHECKPOINT",
        help="start from these weights (a run folder, which means its last/, a run's best/, or "
        "a shipped model name) with a fresh optimizer, schedule and step count: fine-tuning, "
        "or training a model further under a new budget; the network must be the config's, "
        "or the same with layers added that start at zero (a text model may start from an "
        "unconditional one: its text layers are added at zero)",
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in OUT: removes what difflab wrote there (last/, best/, "
        "samples/, metrics.jsonl, the report), keeps every other file; without a config it "
        "trains the run's own config.json again",
    )
    t.add_argument(
        "--minutes",
        type=float_in(0, 10**7, low_open=True),
        help="wall-clock training budget of the whole run (resumed time counts); replaces "
        "the config's budget (with --steps too: whichever comes first)",
    )
    t.add_argument(
        "--steps",
        type=int_in(1, 10**9),
        help="stop after this many optimizer steps; replaces the config's budget (a preset's "
        "minutes no longer apply unless --minutes is given too)",
    )
    t.add_argument("--device", type=device_name,
                   help="cpu, cuda, cuda:1 (default: cuda when available)")
    t.add_argument("--no-report", action="store_true",
                   help="skip the report at the end: the forward-process and sample pictures, "
                   "the reverse-process GIF, the loss curve and command.sh")
    t.add_argument("--no-check", action="store_true",
                   help="skip the health check at the end (it draws 32 samples to see whether "
                   "they look like data)")
    t.set_defaults(func=cmd_train)


def budget_overrides(minutes: float | None, steps: int | None) -> list[str]:
    """--set strings for the budget flags. A flag replaces the config's whole budget: `--steps
    5000` on a preset that says 10 minutes trains 5,000 steps, as asked, and its learning-rate
    schedule decays over those steps. Explicit --set values, applied after, still win."""
    if minutes is None and steps is None:
        return []
    return [
        f"train.minutes={'none' if minutes is None else minutes}",
        f"train.max_steps={'none' if steps is None else steps}",
        "train.epochs=none",
    ]


BUDGET_KEYS = ("minutes", "max_steps", "epochs")


def set_keys(args: argparse.Namespace) -> set[str]:
    """The keys the command line's --set values name ("train.minutes")."""
    return {s.split("=", 1)[0].strip() for s in args.set or []}


def check_budget_flags(args: argparse.Namespace) -> None:
    """A budget flag and a --set of the same key would be two budgets, of which the --set
    silently wins: refused, naming both."""
    sets = set_keys(args)
    for flag, given, key in (("--minutes", args.minutes, "train.minutes"),
                             ("--steps", args.steps, "train.max_steps")):
        if given is not None and key in sets:
            raise CLIError(f"{flag} and --set {key} both set the budget: give one of them")


def budget_given(args: argparse.Namespace) -> bool:
    """Whether the command line sets the budget (--minutes, --steps, or --set of one)."""
    sets = set_keys(args)
    return (args.minutes is not None or args.steps is not None
            or any(k in sets for k in (f"train.{key}" for key in BUDGET_KEYS)))


def keep_recorded_budget(trainer: Trainer) -> tuple[str, list[str]]:
    """A resume that names no budget continues to the one the run was trained with (its
    checkpoint's record), not to the preset's: a run started with --minutes 1 and resumed
    plainly would otherwise train for the preset's 10 minutes. Returns how it is said, and
    the flags that name that budget (for command.sh and the next resume command)."""
    recorded = (trainer.resumed_run or {}).get("train")
    if not isinstance(recorded, dict):
        return "", []
    tc = trainer.cfg.train
    for key in BUDGET_KEYS:
        value = recorded.get(key)
        if value is None or isinstance(value, int | float) and not isinstance(value, bool):
            setattr(tc, key, value)
    parts = [f"{tc.minutes:g} min" if tc.minutes is not None else "",
             f"{tc.max_steps:,} steps" if tc.max_steps is not None else "",
             f"{tc.epochs:g} epochs" if tc.epochs is not None else ""]
    what = " or ".join(p for p in parts if p) or "no limit"
    if tc.epochs is None and (tc.minutes is None) != (tc.max_steps is None):
        flags = (["--minutes", f"{tc.minutes:g}"] if tc.minutes is not None
                 else ["--steps", str(tc.max_steps)])
    else:
        flags = [a for key in BUDGET_KEYS for a in (
            "--set", f"train.{key}={'none' if getattr(tc, key) is None else getattr(tc, key)}")]
    return f", to the run's own budget of {what} (--minutes or --steps sets another)", flags


# What the network learns: a resume that changed one of these would go on training the same
# weights towards another target (eps -> v, a linear -> a cosine schedule) under the old
# run's name. Refused; --init-from starts a new run from the weights instead.
LEARNED_SECTIONS = ("diffusion", "latent", "text")
# Said, and taken: what a resume may change knowingly (a moved data folder, a new budget or
# learning rate, other sampling settings); a resume is exact only without them.
SAID_SECTIONS = ("data", "train", "sample")


def changed_settings(trainer: Trainer, section: str) -> list[str]:
    """"SECTION.KEY RECORDED -> NOW" for each setting of `section` a resume changes against
    the run's record ([train]'s budget aside, which check_budget_left says); keys the record
    lacks (a run of an older difflab) are not compared."""
    recorded = (trainer.resumed_run or {}).get(section)
    if not isinstance(recorded, dict):
        return []
    now = dataclasses.asdict(getattr(trainer.cfg, section))
    return [f"{section}.{key} {recorded[key]!r} -> {now[key]!r}" for key in now
            if key in recorded and not (section == "train" and key in BUDGET_KEYS)
            and _comparable(recorded[key]) != _comparable(now[key])]


def check_resumed_settings(trainer: Trainer, out: Path, main: bool) -> None:
    """Refuse a resume that changes what the network learns; say every other change."""
    learned = [c for section in LEARNED_SECTIONS for c in changed_settings(trainer, section)]
    if learned:
        raise CLIError(
            f"--resume: this command changes what the run in {out} learns "
            f"({', '.join(learned)}); resume with the run's own settings (difflab train "
            f"--out {out} --resume, naming no config), or start a new run from its weights "
            "with --init-from")
    changed = [c for section in SAID_SECTIONS for c in changed_settings(trainer, section)]
    if main and changed:
        print(f"difflab: resuming with settings the run did not have: {', '.join(changed)} "
              "(it goes on with these)")


def _comparable(value: Any) -> Any:
    """A setting as JSON records it (tuples become lists)."""
    return json.loads(json.dumps(value))


def check_budget_left(trainer: Trainer, main: bool, budget: str = "") -> None:
    """Say where a resumed run continues, and refuse a budget it has already spent (the
    budget is the whole run's, resumed parts included)."""
    tc, done = trainer.cfg.train, trainer.elapsed / 60
    if main:
        print(f"difflab: resuming {trainer.last_saved[0]} at step {trainer.step} "
              f"({done:.1f} min trained){budget}")
    # `budget` is said when the run's recorded budget was kept: the user gave no flag for it
    more = "give --minutes or --steps with more" if budget else "give more"
    if tc.minutes is not None and done >= tc.minutes:
        spent = (f"its own budget of {tc.minutes:g} min" if budget
                 else f"--minutes {tc.minutes:g} is the whole run's budget")
        raise CLIError(f"the run has trained {done:.1f} min already and {spent}: {more} to "
                       "train on")
    if tc.max_steps is not None and trainer.step >= tc.max_steps:
        spent = (f"its own budget of {tc.max_steps} steps" if budget
                 else f"--steps {tc.max_steps} is the whole run's")
        raise CLIError(f"the run is at step {trainer.step} already and {spent}: {more} to "
                       "train on")


def resume_command(argv: list[str], world_size: int = 1, local_world_size: int = 1) -> str:
    """The command line that continues the run `argv` started: the same with --resume, without
    what only a new run takes (--overwrite, --init-from); under torchrun, its launch on one
    machine (on several, the user's own launch of the same arguments)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--init-from":
            skip = True
        elif arg != "--overwrite" and not arg.startswith("--init-from="):
            kept.append(arg)
    if "--resume" not in kept:
        kept.append("--resume")
    if world_size == 1:
        return shlex.join(["difflab", *kept])
    if local_world_size == world_size:
        return shlex.join(["torchrun", "--standalone", f"--nproc_per_node={world_size}", "-m",
                           "difflab.cli", *kept])
    return f"your torchrun launch of {shlex.join(['-m', 'difflab.cli', *kept])}"


def train_config(args: argparse.Namespace) -> Path:
    """The config a `difflab train` command names; when it names none, a resume's or an
    --overwrite's is the run's own config.json (so a run on custom data resumes, or starts
    again, without its --set flags again, and is never replaced by the default preset), else
    the default preset. The config is then put in `args.argv`, so that command.sh and the
    resume command name it."""
    if args.config is not None:
        return resolve_config(args.config)
    recorded = Path(args.out or f"runs/{DEFAULT_CONFIG}") / "config.json"
    if (args.resume or args.overwrite) and recorded.is_file() and is_run_config(recorded):
        path = recorded
        if args.overwrite and launched_rank() == 0:
            print(f"difflab: --overwrite without a config: {recorded.parent} starts again from "
                  f"its own {recorded.name} (name a config to train another)")
    else:
        path = resolve_config(DEFAULT_CONFIG)
    at = args.argv.index("train") + 1 if "train" in args.argv else 0
    args.argv = [*args.argv[:at], str(path), *args.argv[at:]]
    return path


def cmd_train(args: argparse.Namespace) -> int:
    """Check the config and the run folder, train, and write the report, holding the run
    folder against a second trainer throughout."""
    config_path = train_config(args)
    check_budget_flags(args)
    cfg = load_config(config_path, budget_overrides(args.minutes, args.steps) + (args.set or []))
    if cfg.data.root is not None:  # recorded whole, so that a resume from elsewhere finds it
        cfg.data.root = os.path.abspath(os.path.expanduser(cfg.data.root))
    out = Path(args.out) if args.out else default_run_folder(config_path, cfg.data.root)
    if cfg.data.root is not None:
        check_run_folder_outside(out, cfg.data.root)  # before the lock creates the folder
    if not args.out and not args.resume and cfg.data.root is not None \
            and launched_rank() == 0:  # said once, also under torchrun
        print(f"difflab: the run goes to {out} (named after data.root; --out chooses another)")
    with run_folder_lock(out):
        return _train(args, cfg, out)


def default_run_folder(config_path: Path, data_root: str | None) -> Path:
    """Where a run goes without --out: a resumed run's own folder, runs/<data folder's name>
    for a run on one's own data (so that it never lands in, or is refused by, the folder of
    the preset's own dataset), else runs/<preset name>."""
    if config_path.suffix == ".json":
        return config_path.parent
    if data_root is not None:
        name = re.sub(r"[^\w.-]+", "_", Path(data_root).name).strip("._")
        return Path("runs") / (name or "own_data")
    return Path("runs") / config_path.stem


def check_run_folder_outside(out: Path, data_root: str) -> None:
    """Refuse a run folder inside the data it trains on: its pictures and checkpoints would be
    read as training images by the next run."""
    root, run = Path(data_root).resolve(), out.expanduser().resolve()
    if run == root or root in run.parents:
        raise ValueError(
            f"the run folder {out} is inside data.root {data_root}: its pictures would become "
            "training images of the next run; give --out a folder outside the data")


def _train(args: argparse.Namespace, cfg: RunConfig, out: Path) -> int:
    if args.init_from and args.resume:
        raise ValueError("--init-from starts a new run and --resume continues one: give one")
    init_from = resolve_checkpoint(args.init_from) if args.init_from else None
    remove_old_run = check_run_folder(out, resume=args.resume, overwrite=args.overwrite)
    trainer = Trainer(cfg, out, device=args.device)
    main = trainer.dist.is_main
    if args.resume:
        trainer.resume()
        kept, flags = ("", []) if budget_given(args) else keep_recorded_budget(trainer)
        args.argv = [*args.argv, *flags]  # so command.sh and a next resume name it too
        check_resumed_settings(trainer, out, main)
        check_budget_left(trainer, main, kept)
    elif init_from is not None:
        trainer.warm_start(init_from)
        if main:  # a shipped model by its name (init_from records it so), a run by its path
            print(f"difflab: starting from the weights of {describe_init_from(trainer.init_from)}")
    if remove_old_run is not None:  # the new run has its data and network: now it replaces
        remove_old_run()
    if main:
        print(
            f"difflab: {trainer.data.name}: {len(trainer.data)} images "
            f"{tuple(trainer.data.image_shape)}; {describe(trainer)}; "
            f"device {trainer.device}, world size {trainer.dist.world_size}"
        )
        for note in trainer.data.notes:  # what loading did to the user's images
            print(f"difflab:   {note}")
        (out / "config.json").parent.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=list))

    def on_sample(tr) -> None:
        if tr.dist.is_main:
            report.save_sample_grid(tr, out / "samples" / f"step_{tr.step:07d}.png")
            report.plot_progress(tr, out / "loss.png")

    t0 = time.time()
    try:
        with writing(out):
            why = trainer.train(on_sample=on_sample, score=score_fid)
    finally:
        trainer.close()
    if not main:
        return 0
    if why.why == INTERRUPTED:  # the user wants out: no pictures, no health check
        by = why.signal or signal.SIGINT
        again = resume_command(args.argv, trainer.dist.world_size,
                               trainer.dist.local_world_size)
        what = "interrupted" if by == signal.SIGINT else f"stopped by {signal.Signals(by).name}"
        print(f"difflab: {what} at step {why.step}; saved {out / 'last'}, and this "
              f"continues from there: {again}", file=sys.stderr)
        return 128 + by  # the shell's status for a process the signal stopped
    whole = f", {trainer.elapsed / 60:.1f} min in all" if args.resume else ""
    if why.step == 0:  # nothing to draw, judge or report: say why, not pictures of noise
        per_step = trainer.step_settings.seconds_per_step if trainer.step_settings else None
        took = f" (a step takes about {per_step:.2f} s here)" if per_step else ""
        print(f"difflab: the budget ran out before the first step, after "
              f"{(time.time() - t0) / 60:.1f} min of choosing how to run{took}: add --resume "
              "and a larger --minutes (or --steps) to continue it", file=sys.stderr)
        return 1
    kept = " and ".join(str(out / n) for n in ("last", "best") if (out / n).is_dir())
    print(
        f"difflab: stopped at step {why.step} ({why.why}) after {(time.time() - t0) / 60:.1f} "
        f"min{whole}; checkpoints in {kept}"
    )
    if not args.no_report:
        with writing(out):
            paths = report.write_report(trainer, out, command=["difflab", *args.argv])
        print("difflab: wrote")
        for what, p in paths.items():
            print(f"  {what:>8}: {p}")
    if not args.no_check:
        print(f"difflab: {report.final_check(trainer)}")
    return 0

