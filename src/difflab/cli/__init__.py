"""The `difflab` command line: train | sample | img2img | inpaint | eval | viz | info | export
| serve.

    difflab train configs/fashion_mnist.toml --minutes 10 --out runs/fashion
    difflab sample runs/fashion/last -n 64 --out samples.png   # the run's [sample] sampler, steps
    difflab sample runs/fashion/last -n 64 --sampler ddim --steps 50 --out samples.png
    difflab viz forward | schedules | toy1d --out FILE.png
    difflab info runs/fashion/last

One module per command (train, sample, edit: img2img and inpaint, eval, viz, info, export),
with what they share in sampling (the drawing commands), inputs (config and checkpoint names,
output paths), runs (run folders) and errors; parser wires the commands together, and this
file runs one.

Nothing below this package reads the command line; every flag is checked here and a bad value
is reported with the allowed ones. Every failure a user can cause -- a bad flag or config value,
a missing or hostile file, a full disk, Ctrl-C -- ends in one line on stderr,
`difflab: error: ...` with exit status 2 (130 for Ctrl-C), never a traceback unless `--debug`
(or DIFFLAB_DEBUG=1) asks for one. Nothing is replaced without being asked: `train` refuses an
existing run without --resume or --overwrite, `export` a destination that is not a checkpoint
it may replace (--force).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable

from tqdm import tqdm

from difflab import failures
from difflab.cli.errors import CLIError
from difflab.cli.parser import build_parser

__all__ = ["main"]


def debug_requested(argv: list[str]) -> bool:
    """--debug on the command line (before a `--`), or DIFFLAB_DEBUG set to anything but 0."""
    flags = argv[: argv.index("--")] if "--" in argv else argv
    return "--debug" in flags or os.environ.get("DIFFLAB_DEBUG", "") not in ("", "0")


def user_error(e: BaseException) -> bool:
    """Whether an exception is a failure the user can cause and fix, said in one line
    (difflab.failures); anything else is a bug in difflab, reported as an internal error."""
    return isinstance(e, CLIError) or failures.is_user_error(e)


def error_message(e: BaseException) -> str:
    """The exception as one line: what failed and, for files, which one."""
    return failures.one_line(e, fewer="-n, --batch-size, train.batch_size")


def _warning_printer() -> Callable[..., None]:
    """A `warnings.showwarning` that prints each warning as `difflab: warning: ...`, without
    the source line Python prints, and once per command: a long prompt is read by the caption
    bank and by each sampling batch, and its warning need not be said each time."""
    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if str(message) not in shown:
            shown.add(str(message))
            # through tqdm: a warning during a progress bar (a checkpoint's rotation) gets a
            # line of its own instead of being glued to the bar's
            tqdm.write(f"difflab: warning: {message}", file=sys.stderr)

    return show


def _stdout_gone() -> None:
    """After a broken pipe (`difflab info | head`), point stdout at /dev/null so that the
    interpreter's last flush at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (tests)
        pass


def main(argv: list[str] | None = None) -> int:
    """Run the command in `argv` (default: sys.argv[1:]); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    try:
        with warnings.catch_warnings():  # restores showwarning after (main runs in tests)
            if not debug:
                warnings.showwarning = _warning_printer()
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

