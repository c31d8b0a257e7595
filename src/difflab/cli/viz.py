"""`difflab viz forward | schedules | toy1d`: pictures of the process itself, no model needed.

- forward: six images of a config's data noised at 0, 25, 50, 75 and 100 % of T;
- schedules: the noise schedules side by side;
- toy1d: a point diffused and un-diffused in one dimension.
"""

from __future__ import annotations

import argparse

import torch

from difflab import viz
from difflab.argtypes import MAX_SEED, MAX_STEPS, int_in
from difflab.build import build_process
from difflab.cli.errors import CLIError
from difflab.cli.inputs import DEFAULT_CONFIG, check_output_file, resolve_config
from difflab.config import load_config
from difflab.data import load_dataset
from difflab.data.transforms import to_float
from difflab.toy1d import plot_toy1d


def add_viz_arguments(v: argparse.ArgumentParser) -> None:
    """The flags of `difflab viz`; sets func=cmd_viz."""
    v.add_argument("what", choices=("forward", "schedules", "toy1d"))
    v.add_argument("--config", help=f"forward: its data and schedule (default {DEFAULT_CONFIG})")
    v.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="forward: a config value over --config's")
    v.add_argument("--out", default="viz.png", help="FILE.png (default viz.png)")
    v.add_argument("--timesteps", type=int_in(2, MAX_STEPS), default=None,
                   help="schedules: T of the curves (1000); forward: the process's T (the "
                   "config's diffusion.timesteps); toy1d: the steps of its paths (500)")
    v.add_argument("--seed", type=int_in(0, MAX_SEED),
                   help="forward: which images and noise; toy1d: its paths (default 0)")
    v.set_defaults(func=cmd_viz)


def cmd_viz(args: argparse.Namespace) -> int:
    """Draw the picture `what` names into --out."""
    out = check_output_file(args.out, "--out")
    if out.suffix != ".png":  # the pictures are PNGs: a .jpg name would hold PNG bytes
        raise CLIError(f"--out must end in .png, got {out.name!r}")
    # Flags a picture does not read are refused, not ignored: `viz schedules --set
    # diffusion.schedule=linear` would otherwise draw the same curves and say nothing.
    unread = {"schedules": ("config", "set", "seed"), "toy1d": ("config", "set")}
    for name in unread.get(args.what, ()):
        if getattr(args, name) is not None:
            raise CLIError(f"viz {args.what} draws the same picture whatever --{name} says: "
                           f"drop it (--{name} is read by viz forward"
                           f"{' and toy1d' if name == 'seed' else ''})")
    if args.what == "schedules":
        viz.plot_schedules(out, T=args.timesteps or 1000)
    elif args.what == "toy1d":
        steps = {"n_steps": args.timesteps} if args.timesteps else {}
        plot_toy1d(out, seed=args.seed or 0, **steps)
    else:
        for item in args.set or []:  # forward reads a config's data and its noise process
            if item.split("=", 1)[0].strip().split(".", 1)[0] not in ("data", "diffusion"):
                raise CLIError(f"--set {item}: viz forward reads a config's [data] and "
                               "[diffusion] only; drop it")
        steps = [f"diffusion.timesteps={args.timesteps}"] if args.timesteps else []
        cfg = load_config(resolve_config(args.config or DEFAULT_CONFIG),
                          [*(args.set or []), *steps])
        data = load_dataset(cfg.data)
        seed = args.seed or 0
        idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:6]
        viz.forward_process_grid(
            build_process(cfg.diffusion),
            to_float(data.images[idx]),
            out,
            generator=torch.Generator().manual_seed(seed),
        )
    print(f"difflab: wrote {out}")
    return 0

