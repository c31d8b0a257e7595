"""The argument parser: the commands, in the order --help lists them, and --debug.

Each command's own flags live beside what it does (train.py, sample.py, ...): this file only
wires them in. Every value is checked as the command line is read (difflab.argtypes), and a
bad one is one `difflab: error:` line naming the flag and what is allowed.
"""

from __future__ import annotations

import argparse
import difflib
import platform
from importlib import metadata
from typing import NoReturn

from difflab import __version__
from difflab.cli.edit import add_img2img_arguments, add_inpaint_arguments
from difflab.cli.errors import CLIError
from difflab.cli.eval import add_eval_arguments
from difflab.cli.export import add_export_arguments
from difflab.cli.info import add_info_arguments
from difflab.cli.sample import add_sample_arguments
from difflab.cli.train import add_train_arguments
from difflab.cli.viz import add_viz_arguments
from difflab.web.command import add_serve_arguments

DESCRIPTION = (
    "The `difflab` command line: train | sample | img2img | inpaint | eval | viz | info | export |"
    " serve."
)
DEBUG_HELP = "on an error, show the full traceback (also: DIFFLAB_DEBUG=1)"


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one `difflab: error:` line (no usage block), raised so
    that main() reports them as it reports every other error."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}  # the top level's, by name

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message} (see {self.prog} --help)")

    def parse_args(self, args: list[str] | None = None,
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        """As argparse's, with an unknown flag refused by the command it was given to: the
        nearest of that command's flags suggested, and its own --help named."""
        known, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(known, "command", None)
            sub = self.commands.get(command)
            flags = [f for a in (sub or self)._actions for f in a.option_strings]
            near = difflib.get_close_matches(extras[0].split("=", 1)[0], flags, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            where = (sub or self).prog
            shown = " ".join(e if e.strip() else repr(e) for e in extras)  # '' is seen
            raise CLIError(f"unrecognized arguments: {shown}{hint} (see {where} --help)")
        return known

    def _get_values(self, action: argparse.Action, arg_strings: list[str]):
        # Python 3.11's argparse drops a value of "--" (`--guidance=--`) and stores [] in its
        # place, which fails much later as a TypeError; a lone "--" is never a value here.
        if action.nargs is None and action.option_strings and arg_strings == ["--"]:
            raise argparse.ArgumentError(action, "expected one argument, got '--'")
        # An empty value (`--gif ""`, `--json ""`, `--init-from ""`) would read as the flag left
        # out (`if args.gif:`) or as the current folder (Path("")): neither is what was typed.
        if action.option_strings and any(not a.strip() for a in arg_strings):
            raise argparse.ArgumentError(action, "the value is empty; give one, or leave the "
                                         "flag out")
        return super()._get_values(action, arg_strings)


def version_line() -> str:
    """What `difflab --version` prints: difflab's version, and the torch and Python it runs on
    (read from the installed packages' metadata: importing torch would take seconds)."""
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "not installed"
    return (f"difflab {__version__} (torch {torch_version}, Python "
            f"{platform.python_version()})")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="difflab", description=DESCRIPTION)
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    p.add_argument("--version", action="version", version=version_line(),
                   help="print difflab's version and the torch and Python it runs on, and exit")
    # --debug after the command too (`difflab sample ... --debug`); SUPPRESS keeps a command
    # without it from resetting the one given before the command.
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help=DEBUG_HELP)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **kw) -> argparse.ArgumentParser:
        p.commands[name] = sub.add_parser(name, parents=[common], **kw)
        return p.commands[name]

    add_train_arguments(command("train", help="train a model from a TOML config"))
    add_sample_arguments(command("sample", help="draw images from a checkpoint"))
    add_img2img_arguments(
        command("img2img", help="re-draw an image toward a prompt (noise to --strength, denoise)")
    )
    add_inpaint_arguments(
        command("inpaint", help="fill the masked part of an image, keep the rest")
    )
    add_eval_arguments(
        command(
            "eval", help="FID, KID, precision/recall, NLL of a checkpoint or an .npz of samples"
        )
    )
    add_viz_arguments(command("viz", help="pictures of the process: forward | schedules | toy1d"))
    add_export_arguments(
        command("export", help="a small sampling-only copy of a checkpoint (EMA weights)")
    )
    add_info_arguments(command("info", help="what a checkpoint is, how it was trained, its size"))
    add_serve_arguments(
        command("serve", help="the web app: generate, edit, explore, watch training runs")
    )
    return p
