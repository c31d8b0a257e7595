"""The `difflab` command's entry point (`main`): the command line, imported where a Ctrl-C
is caught.

Importing the command line takes a second or more (torch); a Ctrl-C in that time would
otherwise print Python's traceback of the import, where every later Ctrl-C gets one line
(difflab.cli.main).
"""

import os
import sys

INTERRUPTED = 130  # what a shell reports for a program ended by Ctrl-C


def _leave_interrupted() -> None:
    """End with status 130 at once. A Ctrl-C that lands while C code runs Python source
    (torch's import does) is marked "unhandled" by CPython even once caught, and the
    interpreter then ends itself by SIGINT at exit instead of with the status (seen: 1 in 24
    timings); what needed cleaning up was cleaned before this, by the command itself."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(INTERRUPTED)


try:
    from difflab.cli import main as _cli_main
except KeyboardInterrupt:
    print("difflab: interrupted", file=sys.stderr)
    _leave_interrupted()


def main(argv: list[str] | None = None) -> int:
    """`difflab ARGS`: difflab.cli.main, ended by _leave_interrupted after a Ctrl-C."""
    code = _cli_main(argv)
    if code == INTERRUPTED:
        _leave_interrupted()
    return code


__all__ = ["main"]
