"""Checkpoints as folders: config.json + model.safetensors (+ ema, optimizer, training state),
and manifest.json, written last, listing every file with its size and sha256.

Writing (`save_checkpoint`). Every file goes into a hidden temporary folder beside the target,
``.NAME.tmp-HOST-PID-TOKEN/``, and is fsynced; manifest.json is written last, so a folder
with a manifest is a complete one; then the folder itself is fsynced. The switch is
renames only, each atomic on POSIX:

    1. NAME.prev/ -> .NAME.del-HOST-PID-TOKEN/   (the checkpoint before last, when there is one)
    2. NAME/      -> NAME.prev/                   (the latest complete checkpoint)
    3. .NAME.tmp-…/ -> NAME/                      (the new one)
    4. fsync the parent folder; delete .NAME.del-…/ (and, unless keep_previous, move
       NAME.prev/ away the same way and delete it)

At every moment the latest complete checkpoint is NAME/ or NAME.prev/: step 1 only moves the
one before it, step 2 renames the latest to NAME.prev/, and step 3 makes the new one the
latest. Readers (`load_checkpoint`) try NAME/, then NAME.prev/ (then best/, best.prev/ for
a run's last/), so a crash between any two steps leaves a checkpoint they find by
themselves. Two renames are needed because a folder cannot atomically replace a non-empty
folder on POSIX. Temporary folders left by a crash are removed by the next load or training
run in that folder (`remove_debris`: difflab's own names only, and only once the process
that wrote them is gone). An OSError while writing (a full disk) removes the temporary folder
and raises one CheckpointError; the previous checkpoint is untouched.

Reading treats a checkpoint folder as untrusted input: every file it names must be a plain
name inside the folder and a regular file (no symlinks, FIFOs or devices); when there is a
manifest, each file read must match its size and sha256 (a guard against damaged files, not
against an attacker, who can rewrite the manifest too); weights come from safetensors and the
optimizer from `torch.load(weights_only=True)`, so loading never runs code. Folders without a
manifest (runs of older difflab versions) still load, without checksums.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import json
import os
import pickle
import re
import secrets
import shutil
import socket
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

FORMAT_VERSION = 1
MANIFEST_VERSION = 1
MODEL_FILE, EMA_FILE, OPTIMIZER_FILE = "model.safetensors", "ema.safetensors", "optimizer.pt"
CONFIG_FILE, STATE_FILE, MANIFEST_FILE = "config.json", "state.json", "manifest.json"
PREVIOUS_SUFFIX = ".prev"
# The components that carry a run's post-hoc EMAs (difflab.training.posthoc_snapshots) for an
# exact resume: training state, which an export leaves out.
POSTHOC_EMA_PREFIX = "posthoc_ema_"
# The component carrying the power EMA a run keeps its guide from (train.guide_ema_length)
# until it keeps the guide: training state too.
GUIDE_EMA = "guide_ema"
_WRITTEN_BY_SAVE = ("format", "format_version", "components")
# The names a checkpoint may give its files and components: one plain path component.
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")
# difflab's own temporary folders, and only these, are ever deleted as debris.
_TEMP_NAME = re.compile(
    r"^\.(?P<name>.+)\.(?P<kind>tmp|del)-(?P<host>[A-Za-z0-9-]*)-(?P<pid>\d+)-[0-9a-f]{8}$"
)
_MAX_JSON_BYTES = 64 << 20  # config/state/manifest are a few kB; refuse to read a huge one
_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_active_temps: set[Path] = set()  # temp folders this process is writing right now


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, incomplete, damaged, unsafe, from an incompatible
    model, or that could not be written."""


class CheckpointWarning(UserWarning):
    """A checkpoint skipped for a complete one, or debris of an interrupted write removed."""


@dataclass
class Checkpoint:
    path: Path
    config: dict[str, Any]
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None = None
    optimizer: dict[str, Any] | None = None
    state: dict[str, Any] = field(default_factory=dict)
    # Separately built parts saved beside the model (e.g. "autoencoder" of a latent
    # diffusion model), each its own NAME.safetensors, as diffusers keeps one file per part.
    components: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    has_manifest: bool = False

    def weights(self, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
        """The weights to sample with: the EMA copy when there is one."""
        return self.ema if (prefer_ema and self.ema is not None) else self.model

    def model_config(self) -> dict[str, Any]:
        """config.json less what `save_checkpoint` writes itself (format, components): what
        to hand `save_checkpoint` to write this model again."""
        return {k: v for k, v in self.config.items() if k not in _WRITTEN_BY_SAVE}


def encode_bytes(t: torch.Tensor) -> str:
    """A uint8 tensor (e.g. an RNG state) as base64 text for state.json."""
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def decode_bytes(s: str) -> torch.Tensor:
    raw = base64.b64decode(s, validate=True)  # binascii.Error (a ValueError) on bad text
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).clone()


# ---------------------------------------------------------------------------------- names
def check_name(name: Any, source: str) -> str:
    """`name` as a file name inside a checkpoint folder: one plain component, no '/', no
    '..', not hidden; anything else could reach outside the folder."""
    if not isinstance(name, str) or not _PLAIN_NAME.match(name) or ".." in name:
        raise CheckpointError(
            f"{source} names the file {name!r}; a checkpoint's files must be plain names "
            "inside its folder (letters, digits, '_', '-', '.', no '/' or '..')"
        )
    return name


def _component_names(components: Any, source: str) -> list[str]:
    if not isinstance(components, list):
        raise CheckpointError(f"{source}: 'components' must be a list of names, got {components!r}")
    reserved = {Path(MODEL_FILE).stem, Path(EMA_FILE).stem}
    for name in components:
        check_name(name, source)
        if name in reserved:
            raise CheckpointError(f"{source}: component names {sorted(reserved)} are reserved")
    return list(components)


def _named(path: str | Path) -> Path:
    """`path` with a last component to put beside ("." becomes the folder it means)."""
    path = Path(path)
    return path if path.name not in ("", ".", "..") else path.resolve()


def previous_path(path: Path) -> Path:
    """Where the checkpoint before `path` is kept while (and after) `path` is replaced."""
    return path.with_name(path.name + PREVIOUS_SUFFIX)


def checkpoint_candidates(path: str | Path) -> list[Path]:
    """The folders `load_checkpoint(path)` tries, in order: `path`, its retained previous
    version, and for a run's last/ also best/ and its previous version."""
    path = _named(path)
    found = [path]
    if not path.name.endswith(PREVIOUS_SUFFIX):
        found.append(previous_path(path))
    if path.name == "last":
        best = path.with_name("best")
        found += [best, previous_path(best)]
    return found


def is_difflab_checkpoint(path: str | Path) -> bool:
    """True for a folder difflab wrote: its manifest.json or config.json carries the
    'format: difflab' marker. Never raises: for callers deciding whether a folder may be
    replaced (difflab never replaces anything else)."""
    p = Path(path)
    if p.is_symlink() or not p.is_dir():
        return False
    for name in (MANIFEST_FILE, CONFIG_FILE):
        try:
            doc = _decode_json(_read_regular(p / name, _MAX_JSON_BYTES))
        except (OSError, ValueError):  # CheckpointError and JSON errors are ValueErrors
            continue
        if isinstance(doc, dict) and doc.get("format") == "difflab":
            return True
    return False


def peek_config(path: str | Path, name: str = CONFIG_FILE) -> dict[str, Any] | None:
    """A checkpoint folder's config.json (or another of its JSON files), read as safely as a
    load reads it (regular file, bounded size) but without the weights or any check of them;
    None when it cannot be read. For early checks before the load, which then explains what
    is wrong, and for what a sampling-only load leaves out."""
    try:
        doc = _decode_json(_read_regular(Path(path) / name, _MAX_JSON_BYTES))
    except (OSError, ValueError):  # CheckpointError and JSON errors are ValueErrors
        return None
    return doc if isinstance(doc, dict) else None


def saved_step(state: dict[str, Any] | None, config: dict[str, Any]) -> int | None:
    """The step a checkpoint was saved at: its training state's, or for an export (which keeps
    no training state) the one its config records under "trained"; None when neither says."""
    trained = config.get("trained")
    step = (state or {}).get("step")
    if step is None and isinstance(trained, dict):
        step = trained.get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None


def trained_steps(path: str | Path) -> int | None:
    """`saved_step` of a checkpoint folder, read without loading it (`peek_config`)."""
    return saved_step(peek_config(path, STATE_FILE), peek_config(path) or {})


# ---------------------------------------------------------------------------------- writing
def _prepare(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.contiguous().clone()  # safetensors refuses tensors that share storage
    return out


def _serialise(
    config: dict[str, Any],
    model: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor] | None,
    optimizer: dict[str, Any] | None,
    state: dict[str, Any] | None,
    components: dict[str, dict[str, torch.Tensor]],
    dtype: torch.dtype | None,
) -> dict[str, bytes]:
    """Every file of the checkpoint as bytes, in memory first: the bytes hashed for the
    manifest are then exactly the bytes written."""
    meta: dict[str, Any] = {"format": "difflab", "format_version": FORMAT_VERSION}
    if components:
        meta["components"] = sorted(components)
    files = {CONFIG_FILE: json.dumps({**config, **meta}, indent=2, default=list).encode()}
    files[MODEL_FILE] = save_safetensors(_prepare(model, dtype))
    if ema is not None:
        files[EMA_FILE] = save_safetensors(_prepare(ema, dtype))
    for name, weights in components.items():
        files[f"{name}.safetensors"] = save_safetensors(_prepare(weights, dtype))
    if optimizer is not None:
        buffer = io.BytesIO()
        torch.save(optimizer, buffer)
        files[OPTIMIZER_FILE] = buffer.getvalue()
    if state is not None:
        files[STATE_FILE] = json.dumps(state, indent=2).encode()
    return files


def manifest_for(files: dict[str, bytes]) -> bytes:
    """manifest.json for these files: each one's size and sha256."""
    listing = {
        name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for name, data in sorted(files.items())
    }
    doc = {"format": "difflab", "manifest_version": MANIFEST_VERSION, "files": listing}
    return json.dumps(doc, indent=2).encode()


def write_manifest(folder: str | Path) -> Path:
    """(Re)write folder/manifest.json for the files the folder holds now, without touching
    them: for checkpoints edited by hand (a shipped model's config.json) or written before
    manifests existed. `python -c "from difflab.checkpoints.store import write_manifest;
    write_manifest('src/difflab/weights/NAME')"`."""
    folder = Path(folder)
    files = {}
    for p in sorted(folder.iterdir()):
        if p.name != MANIFEST_FILE:
            files[check_name(p.name, str(folder))] = _read_regular(p)
    tmp = folder / f".{MANIFEST_FILE}.tmp-{os.getpid()}"
    _write_file(tmp, manifest_for(files))
    os.replace(tmp, folder / MANIFEST_FILE)
    _fsync_dir(folder)
    return folder / MANIFEST_FILE


def _write_file(path: Path, data: bytes) -> None:
    """Create `path` (never through an existing file or link) and make its bytes durable."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a folder's entries (new files, renames) durable; POSIX only."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "", socket.gethostname())[:32]


def _temp_path(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{_host()}-{os.getpid()}-{secrets.token_hex(4)}")


def _replaceable(path: Path) -> bool:
    """Whether difflab may move `path` aside: nothing there, an empty folder, or one of its
    own checkpoints. A user's folder of anything else is never replaced."""
    if not os.path.lexists(path):
        return True
    if path.is_dir() and not path.is_symlink():
        return not any(path.iterdir()) or is_difflab_checkpoint(path)
    return False


def foreign_entries(folder: Path) -> list[Path]:
    """What someone else put in the difflab checkpoint `folder` (a sample grid, notes): the
    entries its manifest does not list. A folder without a readable manifest names none."""
    doc = peek_config(folder, MANIFEST_FILE)
    listed = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(listed, dict):
        return []
    try:
        return sorted(p for p in folder.iterdir() if p.name not in {*listed, MANIFEST_FILE})
    except OSError:
        return []


def keep_foreign(folder: Path, name: str) -> Path | None:
    """Before the checkpoint `folder` (once NAME/ or NAME.prev/ of `name`) is deleted, move
    what difflab did not write there into a new folder beside it, kept_from_NAME[-k]/, and
    say so: difflab never deletes what it did not create. Returns that folder, if any; when
    the move fails, raises OSError and the checkpoint must not be deleted."""
    theirs = foreign_entries(folder)
    if not theirs:
        return None
    dest, k = folder.parent / f"kept_from_{name}", 1
    while os.path.lexists(dest):
        k += 1
        dest = folder.parent / f"kept_from_{name}-{k}"
    dest.mkdir()
    for entry in theirs:
        os.replace(entry, dest / entry.name)
    warnings.warn(
        f"{folder.parent / name} held {', '.join(p.name for p in theirs)}, which difflab did "
        f"not write; moved to {dest} before the checkpoint there was replaced",
        CheckpointWarning, stacklevel=3)
    return dest


def _delete_checkpoint(folder: Path, name: str) -> None:
    """Delete a replaced checkpoint that is out of every reader's way, after keeping what
    others put in it; one that cannot be emptied of theirs stays, named in a warning."""
    try:
        keep_foreign(folder, name)
    except OSError as e:
        warnings.warn(f"{folder} holds files difflab did not write and they could not be moved "
                      f"out ({e}); it is left in place", CheckpointWarning, stacklevel=3)
        return
    shutil.rmtree(folder, ignore_errors=True)


def _switch(tmp: Path, path: Path, keep_previous: bool) -> None:
    """Make the complete folder `tmp` the checkpoint `path` (see the module docstring for
    why the latest complete checkpoint stays reachable between any two steps). A rename that
    fails with an OSError (ENOSPC can reach a folder's entries) undoes the ones before it."""
    prev = previous_path(path)
    trash: list[Path] = []
    done: list[tuple[Path, Path]] = []
    try:
        if os.path.lexists(path):
            if os.path.lexists(prev):
                trash.append(_temp_path(path, "del"))
                os.replace(prev, trash[-1])
                done.append((prev, trash[-1]))
            os.replace(path, prev)
            done.append((path, prev))
        os.replace(tmp, path)
    except OSError:
        _undo(done)
        raise
    _fsync_dir(path.parent)
    if not keep_previous and os.path.lexists(prev):
        trash.append(_temp_path(path, "del"))
        os.replace(prev, trash[-1])
    for folder in trash:  # already out of every reader's way: a failure here costs nothing
        _delete_checkpoint(folder, path.name)


def _undo(renames: list[tuple[Path, Path]]) -> None:
    """Put folders back where they were, last rename first; best effort, since what is left
    after a failure is still a state readers find a complete checkpoint in."""
    for src, dst in reversed(renames):
        try:
            os.replace(dst, src)
        except OSError:
            return


def _write_error(path: Path, e: OSError) -> CheckpointError:
    what = e.strerror or str(e)
    if e.errno in _DISK_FULL:
        return CheckpointError(
            f"cannot write the checkpoint {path}: {what} (the disk is full or a file-size "
            "limit was reached); nothing was changed: the previous checkpoint is intact and "
            "the partial write was removed. Free some space, then resume."
        )
    return CheckpointError(
        f"cannot write the checkpoint {path}: {what} ({e.filename or path}); the previous "
        "checkpoint is intact"
    )


def save_checkpoint(
    path: str | Path,
    *,
    config: dict[str, Any],
    model: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor] | None = None,
    optimizer: dict[str, Any] | None = None,
    state: dict[str, Any] | None = None,
    components: dict[str, dict[str, torch.Tensor]] | None = None,
    dtype: torch.dtype | None = None,
    keep_previous: bool = False,
) -> Path:
    """Write a checkpoint folder atomically (module docstring). `dtype` (e.g. torch.float16)
    casts float weights. `components` are further weight sets (a frozen autoencoder, ...)
    written as NAME.safetensors and listed in config.json so that loading finds them.
    `keep_previous` keeps the replaced checkpoint as NAME.prev/ (training runs do: a second
    complete checkpoint to fall back on). An OSError (a full disk, ...) becomes one
    CheckpointError, with the previous checkpoint intact and the temporary folder removed."""
    components = components or {}
    _component_names(sorted(components), "save_checkpoint")
    path = _named(path)
    for there in (path, previous_path(path)):
        if not _replaceable(there):
            raise CheckpointError(
                f"{there} exists and is not a difflab checkpoint; refusing to replace it"
            )
    files = _serialise(config, model, ema, optimizer, state, components, dtype)
    tmp = _temp_path(path, "tmp")
    _active_temps.add(tmp)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(tmp)
        for name, data in files.items():
            _write_file(tmp / name, data)
        _write_file(tmp / MANIFEST_FILE, manifest_for(files))  # last: marks the folder complete
        _fsync_dir(tmp)
        _switch(tmp, path, keep_previous)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(path, e) from e
    finally:
        _active_temps.discard(tmp)
    return path


# ---------------------------------------------------------------------------------- debris
def _writer_is_gone(match: re.Match[str], folder: Path) -> bool:
    """Whether the process that named this temp folder can no longer be writing it."""
    if match["host"] != _host() or os.name == "nt":  # another machine's: it may be writing
        return False
    pid = int(match["pid"])
    if pid == os.getpid():
        return folder not in _active_temps
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        return False
    return False


def remove_debris(parent: str | Path) -> list[Path]:
    """Delete the temporary folders of interrupted checkpoint writes in `parent`: only names
    matching difflab's own pattern, only when the process that wrote them is gone. Returns
    what was removed; failures to remove are warned about, never raised."""
    parent = Path(parent)
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if not match or entry.is_symlink() or not entry.is_dir():
            continue
        if not _writer_is_gone(match, entry):
            continue
        try:
            if match["kind"] == "del":  # a replaced checkpoint: what others put there stays
                keep_foreign(entry, match["name"])
            shutil.rmtree(entry)
            removed.append(entry)
        except FileNotFoundError:  # another process (a DDP rank) removed it first
            continue
        except OSError as e:
            warnings.warn(f"could not remove {entry}: {e}", CheckpointWarning, stacklevel=3)
    return removed


# ---------------------------------------------------------------------------------- reading
def _read_regular(path: Path, limit: int | None = None) -> bytes:
    """The bytes of a regular file, refusing links, FIFOs and devices without opening them
    (opening a FIFO would block); O_NOFOLLOW and fstat close the gap between check and open."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise CheckpointError(
            f"{path} is a symbolic link; a checkpoint's files must be regular files inside "
            "its folder"
        )
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path} is not a regular file (a folder, FIFO or device)")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"{path} is not a regular file")
        if limit is not None and st.st_size > limit:
            raise CheckpointError(f"{path} is {st.st_size} bytes, far more than it should be")
        return f.read()


def _decode_json(data: bytes) -> Any:
    """json.loads, where nesting too deep for the parser (it recurses once per level, and a
    file from elsewhere may nest thousands) is invalid JSON like any other: a ValueError."""
    try:
        return json.loads(data)
    except RecursionError as e:
        raise ValueError("nested too deeply") from e


def _parse_json(data: bytes, source: Path) -> dict[str, Any]:
    try:
        doc = _decode_json(data)
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors too
        raise CheckpointError(f"{source} is not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise CheckpointError(f"{source} must hold a JSON object, not {type(doc).__name__}")
    return doc


def _read_manifest(folder: Path) -> dict[str, dict[str, Any]] | None:
    """The file listing of folder/manifest.json, checked; None when there is no manifest."""
    source = folder / MANIFEST_FILE
    try:
        doc = _parse_json(_read_regular(source, _MAX_JSON_BYTES), source)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CheckpointError(f"cannot read {source}: {e.strerror or e}") from e
    if doc.get("format") != "difflab" or not isinstance(doc.get("files"), dict):
        raise CheckpointError(f"{source} is not a difflab manifest (format, files)")
    for name, entry in doc["files"].items():
        check_name(name, str(source))
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("size"), int)
            and isinstance(entry.get("sha256"), str)
            and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]) is not None
        )
        if not ok:
            raise CheckpointError(f"{source}: the entry for {name} needs a size and a sha256")
    return doc["files"]


class _Folder:
    """One checkpoint folder being read: which files it has, each read checked."""

    def __init__(self, path: Path):
        self.path = path
        self.manifest = _read_manifest(path)
        if self.manifest is not None:  # complete means: every listed file is there
            missing = [n for n in self.manifest if not os.path.lexists(path / n)]
            if missing:
                raise CheckpointError(
                    f"checkpoint {path} is incomplete: {', '.join(sorted(missing))} listed in "
                    f"{MANIFEST_FILE} but missing"
                )

    def has(self, name: str) -> bool:
        if self.manifest is not None:  # a file the manifest does not list is not part of it
            return name in self.manifest
        return os.path.lexists(self.path / name)

    def read(self, name: str, limit: int | None = None) -> bytes:
        check_name(name, str(self.path))
        if not self.has(name):
            raise CheckpointError(
                f"checkpoint {self.path} has no {name}; it is incomplete or not a difflab "
                "checkpoint"
            )
        try:
            data = _read_regular(self.path / name, limit)
        except OSError as e:  # gone since listed, unreadable, a link swapped in (ELOOP)
            raise CheckpointError(f"cannot read {self.path / name}: {e.strerror or e}") from e
        if self.manifest is not None:
            entry = self.manifest[name]
            digest = hashlib.sha256(data).hexdigest()
            if len(data) != entry["size"] or digest != entry["sha256"]:
                raise CheckpointError(
                    f"{self.path / name} does not match {MANIFEST_FILE} (size {len(data)} vs "
                    f"{entry['size']}, sha256 {digest[:12]}… vs {entry['sha256'][:12]}…): the "
                    "file is damaged or was changed after it was saved"
                )
        return data

    def json(self, name: str) -> dict[str, Any]:
        return _parse_json(self.read(name, _MAX_JSON_BYTES), self.path / name)

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        data = self.read(name)
        try:
            return load_safetensors(data)
        except Exception as e:  # safetensors raises its own error types on corrupt files
            raise CheckpointError(f"cannot read the weights in {self.path / name}: {e}") from e

    def optimizer(self) -> dict[str, Any]:
        """optimizer.pt through torch's weights-only unpickler: tensors and plain containers
        only; a pickle that would construct anything else (run code) is refused."""
        source = self.path / OPTIMIZER_FILE
        data = self.read(OPTIMIZER_FILE)
        try:
            state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as e:
            asked = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
            if asked:  # a real pickle of other objects: never loaded (it could run code)
                raise CheckpointError(
                    f"{source} was refused: it holds Python objects other than tensors, "
                    f"which loading would have to run code for (it asks for {asked[1]})"
                ) from e
            raise CheckpointError(f"{source} is damaged: it is not a PyTorch file") from e
        except Exception as e:  # a damaged zip, a truncated or empty file, ...
            said = str(e).splitlines()[0][:120] if str(e) else ""
            why = f"{type(e).__name__}: {said}" if said else type(e).__name__
            raise CheckpointError(f"{source} is damaged: it is not a whole PyTorch file "
                                  f"({why})") from e
        if not isinstance(state, dict) or not {"state", "param_groups"} <= set(state):
            raise CheckpointError(f"{source} is not an optimizer state (state, param_groups)")
        return state


def _not_a_folder(path: Path) -> str:
    return (
        f"checkpoint {str(path)!r} is not a folder; a difflab checkpoint is a folder with "
        f"{CONFIG_FILE} and {MODEL_FILE}"
    )


def _load_one(path: Path, with_training_state: bool, resumable: bool) -> Checkpoint:
    if not path.is_dir():
        raise CheckpointError(_not_a_folder(path))
    folder = _Folder(path)
    for name in (CONFIG_FILE, MODEL_FILE):
        if not folder.has(name):
            raise CheckpointError(
                f"checkpoint {str(path)!r} has no {name}; it is incomplete or "
                "not a difflab checkpoint"
            )
    config = folder.json(CONFIG_FILE)
    if config.get("format") != "difflab":
        raise CheckpointError(
            f"{path} was not written by difflab (no 'format: difflab' in {CONFIG_FILE})"
        )
    names = _component_names(config.get("components", []), str(path / CONFIG_FILE))
    if resumable:
        _check_resumable(folder)
    model = folder.tensors(MODEL_FILE)
    ema = folder.tensors(EMA_FILE) if folder.has(EMA_FILE) else None
    components = {name: folder.tensors(f"{name}.safetensors") for name in names}
    ckpt = Checkpoint(path, config, model, ema, components=components,
                      has_manifest=folder.manifest is not None)
    if with_training_state or resumable:
        if folder.has(OPTIMIZER_FILE):
            ckpt.optimizer = folder.optimizer()
        if folder.has(STATE_FILE):
            ckpt.state = folder.json(STATE_FILE)
    return ckpt


def _check_resumable(folder: _Folder) -> None:
    """An exact resume needs the EMA weights, the optimizer's moments and the training state;
    continuing without one would silently reset it."""
    what = {EMA_FILE: "the EMA weights", OPTIMIZER_FILE: "the optimizer's moments",
            STATE_FILE: "the step, data order and random states"}
    for name, role in what.items():
        if not folder.has(name):
            raise CheckpointError(
                f"cannot resume exactly from {folder.path}: it has no {name} ({role}); "
                "resume from a complete training checkpoint, or start the run anew "
                "(a new --out, or --overwrite)"
            )


def load_checkpoint(
    path: str | Path,
    *,
    with_training_state: bool = False,
    resumable: bool = False,
    fallback: bool = True,
) -> Checkpoint:
    """Read a checkpoint folder; optimizer and training state only when asked for
    (`resumable`: and refuse a checkpoint without them).

    With `fallback`, a missing, incomplete or damaged folder is skipped for the next of
    `checkpoint_candidates(path)` (for runs/x/last: last.prev, best, best.prev), with a
    warning naming what was skipped and why; and the debris of interrupted writes beside it
    is removed. Raises CheckpointError, naming every folder tried, when none loads."""
    path = _named(path)
    candidates = checkpoint_candidates(path) if fallback else [path]
    if fallback:
        for gone in remove_debris(path.parent):
            warnings.warn(f"removed {gone}, left by an interrupted checkpoint write",
                          CheckpointWarning, stacklevel=2)
    errors: list[tuple[Path, str]] = []
    for cand in candidates:
        if not os.path.lexists(cand):
            if cand == path:  # an absent fallback is normal; only the asked-for path counts
                errors.append((cand, "is missing (a write interrupted between its renames?)"))
            continue
        try:
            ckpt = _load_one(cand, with_training_state, resumable)
        except CheckpointError as e:
            errors.append((cand, str(e)))
            continue
        if errors:
            why = "; ".join(f"{p} {e}" if e.startswith("is ") else f"{p}: {e}" for p, e in errors)
            warnings.warn(f"using {cand} instead: {why}", CheckpointWarning, stacklevel=2)
        return ckpt
    if len(errors) == 1:  # the asked-for folder was the only one there (or not even it)
        raise CheckpointError(errors[0][1] if os.path.lexists(path) else _not_a_folder(path))
    raise CheckpointError(
        f"no usable checkpoint at {path}: " + "; ".join(f"{p.name}: {e}" for p, e in errors)
    )


def require_fields(doc: dict[str, Any], spec: dict[str, tuple[type, ...]], source: str,
                   optional: tuple[str, ...] = ()) -> None:
    """Check that `doc` has each key of `spec` with a value of one of its types (`optional`
    keys may be absent or null); one CheckpointError naming the file and the key."""
    for key, types in spec.items():
        if key not in doc or doc[key] is None:
            if key in optional:
                continue
            raise CheckpointError(f"{source} has no {key!r}")
        value = doc[key]
        if isinstance(value, bool) and bool not in types:  # JSON true is not a number
            ok = False
        else:
            ok = isinstance(value, types)
        if not ok:
            names = " or ".join(t.__name__ for t in types)
            raise CheckpointError(
                f"{source}: {key!r} must be {names}, got {type(value).__name__} {value!r:.60}"
            )


def load_weights_into(net: torch.nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict with an error that says which model the weights belong to and what
    differs (names, shapes)."""
    own = net.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    bad_shape = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in weights and own[k].shape != weights[k].shape
    ]
    if missing or unexpected or bad_shape:
        detail = "; ".join(
            part
            for part in (
                f"missing {missing[:3]}" if missing else "",
                f"unexpected {unexpected[:3]}" if unexpected else "",
                f"shape mismatch in {bad_shape[:3]} (checkpoint vs network)" if bad_shape else "",
            )
            if part
        )
        raise CheckpointError(f"the weights in {source} belong to a different model ({detail})")
    net.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()})


def _name_autoencoder_by_its_run(config: dict[str, Any]) -> None:
    """An export is made to be shared, so the autoencoder a latent model was trained on is
    named by its run (e.g. "fashion_ae/last"), not by a path on the machine that trained it;
    its weights travel in the export itself."""
    def run_name(path: Any) -> Any:
        return "/".join(Path(path).parts[-2:]) if isinstance(path, str) else path

    ae = config.get("autoencoder")
    if isinstance(ae, dict) and "source" in ae:
        ae["source"] = run_name(ae["source"])
    latent = (config.get("run") or {}).get("latent")
    if isinstance(latent, dict) and latent.get("autoencoder"):
        latent["autoencoder"] = run_name(latent["autoencoder"])


def export_for_inference(src: str | Path, dst: str | Path, *, dtype: torch.dtype | None = None,
                         provenance: dict[str, Any] | None = None,
                         weights: dict[str, torch.Tensor] | None = None,
                         guide: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a sampling-only copy of a checkpoint: the EMA weights (when present) as the
    model, optionally cast (fp16 halves the size), no optimizer, training state or
    training-only components (POSTHOC_EMA_PREFIX, GUIDE_EMA), and a 'trained' record of how it
    was made (command, time, hardware, and for a warm-started run the checkpoint it started
    from) in config.json. `weights` and `guide` replace the model's and autoguidance's guide's
    weights (a post-hoc EMA, difflab.training.posthoc_snapshots). Written atomically, like every
    checkpoint."""
    ck = load_checkpoint(src, with_training_state=True)
    config = ck.model_config()
    earlier = ck.config.get("trained")
    if not ck.state and isinstance(earlier, dict):
        # an export exported again (a shipped model, say): it holds no training state, so its
        # own record of how it was trained is the record, not "step None, 0 minutes"
        config["trained"] = {**earlier, **(provenance or {})}
    else:
        elapsed = ck.state.get("elapsed_seconds", 0.0)
        config["trained"] = {
            "step": ck.state.get("step"),
            "train_minutes": round(elapsed / 60, 1) if isinstance(elapsed, int | float)
            else None,
            "weights": "ema" if ck.ema is not None else "model",
            **(provenance or {}),
        }
    init_from = ck.state.get("init_from")
    if isinstance(init_from, dict):  # a warm start: its steps came on top of these weights'
        config["trained"]["init_from"] = init_from
    _name_autoencoder_by_its_run(config)
    return save_checkpoint(
        dst,
        config=config,
        model=ck.weights(prefer_ema=True) if weights is None else weights,
        # "guide": checkpoints.components.GUIDE, which imports this module
        components={name: guide if name == "guide" and guide is not None else c
                    for name, c in ck.components.items()
                    if not name.startswith(POSTHOC_EMA_PREFIX) and name != GUIDE_EMA},
        dtype=dtype,
    )
