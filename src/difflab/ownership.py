"""Which files difflab wrote: the mark every picture and sample file carries, and the check
before a command replaces a file.

difflab never overwrites or deletes what it did not create. Names alone cannot tell: a user's
own `samples.png` in a run folder or beside the checkout looks like one of ours. So what
difflab writes says so inside the file (a PNG's Software text, a GIF's comment, an `.npz`
array, a JSON report's top-level "written_by"), and a command that would replace a file first
checks that mark (`written_by_difflab`); a file without it is left alone and the command says
so.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

MARK = "difflab"  # a PNG's Software text, a GIF's comment
MARK_KEY = "written_by"  # an .npz array holding MARK, a JSON report's key with MARK


def png_mark() -> PngImagePlugin.PngInfo:
    """PIL's `pnginfo` that marks a PNG as difflab's."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", MARK)
    return info


def written_by_difflab(path: str | os.PathLike) -> bool:
    """Whether `path` is a PNG, GIF, .npz or JSON report that difflab wrote (it carries the
    mark): what a command may replace. Anything else (a user's file of the same name, a file
    that is not what its name says, an unreadable one) is not."""
    path = Path(path)
    if path.suffix == ".json":
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(report, dict) and report.get(MARK_KEY) == MARK
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return MARK_KEY in arrays.files and str(arrays[MARK_KEY]) == MARK
        except (OSError, ValueError, zipfile.BadZipFile):
            return False
    try:
        with Image.open(path) as img:
            info = img.info
    except (OSError, ValueError, Image.DecompressionBombError):
        return False
    return info.get("Software") == MARK or info.get("comment") in (MARK, MARK.encode())
