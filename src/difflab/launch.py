"""The `difflab` command's entry point (`main`): the command line, imported where a Ctrl-C
is caught.

Importing the command line takes a second or more (torch); a Ctrl-C in that time would
otherwise print Python's traceback of the import, where every later Ctrl-C gets one line
(difflab.cli.main).
"""

import sys

try:
    from difflab.cli import main
except KeyboardInterrupt:
    print("difflab: interrupted", file=sys.stderr)
    sys.exit(130)

__all__ = ["main"]
