"""Checkpoint folders are untrusted input. Each crafted folder below (path traversal in the
manifest or the component names, links to files outside, a FIFO, wrong shapes, a flipped byte,
a pickle that would write a file, broken or missing JSON, missing training state, another
network) is refused, by the library with one CheckpointError and by the command line with one
"difflab: error:" line naming what is wrong, and nothing outside the folder is read, written or
created: canary files stay as they were."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from reliability_helpers import trainer
from safetensors.torch import load_file, save_file

from difflab.checkpoints import store as ckpt_io
from difflab.cli import main
from difflab.pipeline import Generator

MANIFEST = ckpt_io.MANIFEST_FILE


# ------------------------------------------------------------------------------ crafting
def remanifest(folder: Path) -> None:
    """A manifest that matches the folder's regular files, as an attacker can write one."""
    files = {
        p.name: p.read_bytes()
        for p in folder.iterdir()
        if p.name != MANIFEST and p.is_file() and not p.is_symlink()
    }
    (folder / MANIFEST).write_bytes(ckpt_io.manifest_for(files))


def edit_json(folder: Path, name: str, change: Callable[[dict], None], manifest=True) -> None:
    doc = json.loads((folder / name).read_text())
    change(doc)
    (folder / name).write_text(json.dumps(doc))
    if manifest:
        remanifest(folder)


def list_in_manifest(folder: Path, name: str, data: bytes) -> None:
    """Add `name` to the manifest with the size and sha256 of `data`."""
    listing = json.loads((folder / MANIFEST).read_text())
    entry = json.loads(ckpt_io.manifest_for({name: data}))["files"][name]
    listing["files"][name] = entry
    (folder / MANIFEST).write_text(json.dumps(listing))


class Evil:
    """A pickle payload: unpickling it calls open(path, "w"), creating the file."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def traversal_in_manifest(f: Path, out: Path) -> None:
    list_in_manifest(f, "../outside/canary.safetensors", (out / "canary.safetensors").read_bytes())


def traversal_in_components(f: Path, out: Path) -> None:
    edit_json(f, "config.json", lambda c: c.update(components=["../outside/canary"]))


def absolute_component(f: Path, out: Path) -> None:
    edit_json(f, "config.json", lambda c: c.update(components=[str(out / "canary")]))


def model_links_outside(f: Path, out: Path) -> None:
    (f / "model.safetensors").unlink()
    (f / "model.safetensors").symlink_to(out / "canary.safetensors")  # same bytes: sha matches


def component_links_outside_no_manifest(f: Path, out: Path) -> None:
    edit_json(f, "config.json", lambda c: c.update(components=["extra"]), manifest=False)
    (f / "extra.safetensors").symlink_to(out / "canary.safetensors")
    (f / MANIFEST).unlink()


def config_links_outside(f: Path, out: Path) -> None:
    (out / "config.json").write_bytes((f / "config.json").read_bytes())
    (f / "config.json").unlink()
    (f / "config.json").symlink_to(out / "config.json")


def ema_is_a_fifo(f: Path, out: Path) -> None:
    (f / "ema.safetensors").unlink()
    os.mkfifo(f / "ema.safetensors")  # opening it to read would wait for a writer forever


def ema_is_a_fifo_no_manifest(f: Path, out: Path) -> None:
    ema_is_a_fifo(f, out)
    (f / MANIFEST).unlink()


def wrong_shapes(f: Path, out: Path) -> None:
    weights = load_file(f / "model.safetensors")
    key = next(k for k, v in weights.items() if v.ndim == 4)
    weights[key] = torch.zeros(weights[key].shape[0] + 1, *weights[key].shape[1:])
    save_file(weights, f / "model.safetensors")
    save_file(weights, f / "ema.safetensors")
    remanifest(f)


def flipped_byte(f: Path, out: Path) -> None:
    data = bytearray((f / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01
    (f / "model.safetensors").write_bytes(bytes(data))


def malicious_pickle(f: Path, out: Path) -> None:
    torch.save({"state": {}, "param_groups": [], "x": Evil(out / "pwned")}, f / "optimizer.pt")
    remanifest(f)


def no_state(f: Path, out: Path) -> None:
    (f / "state.json").unlink()
    remanifest(f)


def state_not_json(f: Path, out: Path) -> None:
    (f / "state.json").write_text('{"step": 3, ')
    remanifest(f)


def state_wrong_types(f: Path, out: Path) -> None:
    edit_json(f, "state.json", lambda s: s.update(step="three"))


def state_bad_rng(f: Path, out: Path) -> None:
    edit_json(f, "state.json", lambda s: s.update(generator="not base64!"))


def config_not_json(f: Path, out: Path) -> None:
    (f / "config.json").write_text("{not json")
    remanifest(f)


def manifest_not_json(f: Path, out: Path) -> None:
    (f / MANIFEST).write_text("[")


def manifest_lists_a_missing_file(f: Path, out: Path) -> None:
    list_in_manifest(f, "autoencoder.safetensors", b"")


def no_ema(f: Path, out: Path) -> None:
    (f / "ema.safetensors").unlink()
    remanifest(f)


def no_optimizer(f: Path, out: Path) -> None:
    (f / "optimizer.pt").unlink()
    remanifest(f)


def optimizer_random_bytes(f: Path, out: Path) -> None:
    (f / "optimizer.pt").write_bytes(bytes(range(256)) * 20)  # not a pickle of anything
    remanifest(f)


def optimizer_empty(f: Path, out: Path) -> None:
    (f / "optimizer.pt").write_bytes(b"")
    remanifest(f)


def optimizer_truncated(f: Path, out: Path) -> None:
    whole = (f / "optimizer.pt").read_bytes()
    (f / "optimizer.pt").write_bytes(whole[: len(whole) // 2])
    remanifest(f)


def other_network(f: Path, out: Path) -> None:
    edit_json(f, "config.json", lambda c: c["network"]["config"].update(base_channels=8))


ALL = ("load", "resume", "generator", "info", "sample", "export")
LOADING = ("load", "resume", "info", "export")  # what reads the training state
# (name, how to craft it, what is tried on it, what the message must say)
HOSTILE = [
    ("path traversal in manifest", traversal_in_manifest, ALL, "plain names"),
    ("path traversal in components", traversal_in_components, ALL, "plain names"),
    ("absolute path as component", absolute_component, ALL, "plain names"),
    ("model.safetensors links outside", model_links_outside, ALL, "symbolic link"),
    ("component links outside, no manifest", component_links_outside_no_manifest, ALL,
     "symbolic link"),
    ("config.json links outside", config_links_outside, ALL, "symbolic link"),
    ("ema.safetensors is a FIFO", ema_is_a_fifo, ALL, "not a regular file"),
    ("FIFO, no manifest", ema_is_a_fifo_no_manifest, ALL, "not a regular file"),
    ("wrong tensor shapes", wrong_shapes, ("resume", "generator", "sample"), "shape mismatch"),
    ("flipped byte in weights", flipped_byte, ALL, "does not match manifest"),
    ("malicious pickle in optimizer.pt", malicious_pickle, LOADING, "refused.*Python objects"),
    ("state.json missing", no_state, ("resume",), "no state.json.*--overwrite"),
    ("state.json not JSON", state_not_json, LOADING, "state.json is not valid JSON"),
    ("state.json wrong types", state_wrong_types, ("resume",), "'step' must be int"),
    ("state.json bad RNG state", state_bad_rng, ("resume",), "random states"),
    ("config.json not JSON", config_not_json, ALL, "config.json is not valid JSON"),
    ("manifest.json not JSON", manifest_not_json, ALL, "manifest.json is not valid JSON"),
    ("manifest lists a missing file", manifest_lists_a_missing_file, ALL, "incomplete"),
    ("ema.safetensors missing", no_ema, ("resume",), "no ema.safetensors.*--overwrite"),
    ("optimizer.pt missing", no_optimizer, ("resume",), "no optimizer.pt.*--overwrite"),
    # damaged, not hostile: said as damage, never as "Python objects" (whose fix would be
    # to unpickle it, the one thing not to do)
    ("optimizer.pt random bytes", optimizer_random_bytes, LOADING,
     "optimizer.pt is damaged: it is not a PyTorch file"),
    ("optimizer.pt empty", optimizer_empty, LOADING, "optimizer.pt is damaged: it is not a whole"),
    ("optimizer.pt truncated", optimizer_truncated, LOADING,
     "optimizer.pt is damaged: it is not a whole"),
    ("another network", other_network, ("resume", "generator", "sample"),
     "different (network|model)"),
]  # fmt: skip


# ------------------------------------------------------------------------------ trying
class Blocked(Exception):
    pass


def _alarm(signum, frame):
    raise Blocked("blocked for 20 s (a FIFO opened?)")


def attempt(op: str, folder: Path, work: Path, capsys) -> str:
    """Run one operation on the crafted folder; the error text it gave. Anything but a
    CheckpointError (library) or exit status 2 with one error line (CLI) fails the test."""
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(20)
    try:
        if op == "load":
            with pytest.raises(ckpt_io.CheckpointError) as e:
                ckpt_io.load_checkpoint(folder, with_training_state=True)
            return str(e.value)
        if op == "resume":
            with pytest.raises(ckpt_io.CheckpointError) as e:
                trainer(work / "resumed", 2).resume(folder)
            return str(e.value)
        if op == "generator":
            with pytest.raises(ckpt_io.CheckpointError) as e:
                Generator.from_checkpoint(folder, device="cpu")
            return str(e.value)
        capsys.readouterr()
        argv = {
            "info": ["info", str(folder)],
            "sample": ["sample", str(folder), "-n", "1", "--steps", "2", "--device", "cpu",
                       "--out", str(work / "drawn.png")],
            "export": ["export", str(folder), str(work / "exported"), "--quiet"],
        }[op]  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("difflab: error:")]
        assert len(lines) == 1 and "Traceback" not in err, err
        return lines[0]
    finally:
        signal.alarm(0)


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("good")
    trainer(run, 2, "train.checkpoint_every=1000").train()
    return run / "last"


def outside_state(outside: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(outside.iterdir())}


def test_the_pickle_payload_is_real(tmp_path):
    """Unpickled without weights_only, the crafted optimizer.pt does create its file: the
    refusal below is what stands between a checkpoint and running code."""
    torch.save({"x": Evil(tmp_path / "pwned")}, tmp_path / "optimizer.pt")
    torch.load(tmp_path / "optimizer.pt", weights_only=False)
    assert (tmp_path / "pwned").exists()


def test_every_crafted_checkpoint_is_refused_cleanly(good_checkpoint, tmp_path, capsys, tally):
    t0 = time.perf_counter()
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(good_checkpoint / "model.safetensors", outside / "canary.safetensors")
    (outside / "canary.txt").write_text("must stay as it is")
    attempts = 0
    for name, craft, ops, expected in HOSTILE:
        folder = tmp_path / "crafted" / name.replace(" ", "_").replace(".", "_")
        shutil.copytree(good_checkpoint, folder, symlinks=True)
        craft(folder, outside)
        before = outside_state(outside)
        for op in ops:
            work = tmp_path / "work" / f"{folder.name}-{op}"
            work.mkdir(parents=True)
            message = attempt(op, folder, work, capsys)
            assert re_search(expected, message), f"{name} / {op}: {message}"
            assert "\n" not in message.strip(), f"{name} / {op}: more than one line"
            assert outside_state(outside) == before, f"{name} / {op} touched a file outside"
            assert not (outside / "pwned").exists()
            assert list(work.iterdir()) == [], f"{name} / {op} wrote {list(work.iterdir())}"
            attempts += 1
    tally(
        "hostile_checkpoints",
        crafted_folders=len(HOSTILE),
        attempts=attempts,
        refused_with_a_clear_error=attempts,
        files_outside_touched=0,
        code_run_from_a_pickle=0,
        tracebacks=0,
        kinds=[name for name, *_ in HOSTILE],
        seconds=round(time.perf_counter() - t0, 1),
    )


def re_search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None
