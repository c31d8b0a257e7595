"""The words captions are made of, read from the package's caption_text/*.toml files.

Text is data, not code: each file holds one dataset's sentence templates and, per class in
label order, its names (synonyms), descriptions (what an item is like or is for) and held-out
paraphrases, with comments on how they were written and filtered.
:mod:`difflab.data.captions` turns them into captions. TOML rather than JSON for those comments;
tomllib is in the standard library.

The reader is strict: a missing or unknown key, a class table without names, or a non-string
entry is an error naming the file and the key, since a silently dropped string would renumber
every caption after it, and the caption indices shipped models were trained with.
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Inside the package; pyproject's package-data ships it ("data/caption_text/*.toml").
CAPTION_TEXT_DIR = Path(__file__).resolve().parent / "caption_text"

_TOP_KEYS = ("templates", "description_templates", "classes")
_CLASS_KEYS = ("class", "names", "descriptions", "held_out")


@dataclass(frozen=True)
class CaptionWords:
    """The caption text of one dataset; the per-class fields have one entry per class, in
    label order."""

    class_names: tuple[str, ...]  # the standard name of each class, as in data.catalog
    names: tuple[tuple[str, ...], ...]
    templates: tuple[str, ...]  # "{}": a name, "{a}": the article of the next word
    descriptions: tuple[tuple[str, ...], ...]
    description_templates: tuple[str, ...]  # "{}": a whole description
    held_out: tuple[tuple[str, ...], ...]


def _strings(value: Any, where: str, allow_empty: bool = False) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{where} must be a list of non-empty strings")
    if not value and not allow_empty:
        raise ValueError(f"{where} is empty")
    return tuple(value)


def _check_keys(table: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be a table")
    missing = [k for k in keys if k not in table]
    unknown = sorted(set(table) - set(keys))
    if missing or unknown:
        raise ValueError(
            f"{where}: missing {', '.join(missing) or 'nothing'}, unknown "
            f"{', '.join(unknown) or 'nothing'}; the keys are {', '.join(keys)}"
        )


def load_words_file(path: Path) -> dict:
    """A words file's TOML, or ValueError naming the file and what is wrong with it."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e})") from None


def read_caption_words(path: str | Path) -> CaptionWords:
    """Parse and check one caption words file (module docstring)."""
    path = Path(path)
    raw = load_words_file(path)
    _check_keys(raw, _TOP_KEYS, str(path))
    classes = raw["classes"]
    if not isinstance(classes, list) or not classes:
        raise ValueError(f"{path}: classes must be one [[classes]] table per class")
    for i, table in enumerate(classes):
        _check_keys(table, _CLASS_KEYS, f"{path}: classes[{i}]")
    per_class = {
        key: tuple(
            _strings(t[key], f"{path}: classes[{i}].{key}", allow_empty=key != "names")
            for i, t in enumerate(classes)
        )
        for key in ("names", "descriptions", "held_out")
    }
    class_names = []
    for i, t in enumerate(classes):
        if not isinstance(t["class"], str) or not t["class"]:
            raise ValueError(f"{path}: classes[{i}].class must be the class's name")
        class_names.append(t["class"])
    return CaptionWords(
        class_names=tuple(class_names),
        names=per_class["names"],
        templates=_strings(raw["templates"], f"{path}: templates"),
        descriptions=per_class["descriptions"],
        description_templates=_strings(
            raw["description_templates"], f"{path}: description_templates", allow_empty=True
        ),
        held_out=per_class["held_out"],
    )


@functools.cache
def caption_words(key: str) -> CaptionWords:
    """The caption words shipped as caption_text/<key>.toml (read once per process); `key` is
    a dataset's ``captions`` entry in data.catalog."""
    path = CAPTION_TEXT_DIR / f"{key}.toml"
    if not path.is_file():
        raise FileNotFoundError(f"no caption words file {path}; reinstall difflab")
    return read_caption_words(path)
