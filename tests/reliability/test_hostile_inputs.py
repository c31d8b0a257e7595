"""Hostile inputs: each ends in exit status 2 and one `difflab: error:` line that names the
file (or flag) and what is wrong -- no traceback -- and changes nothing on disk (every file
under the test's folder, a canary among them, is byte-identical afterwards).

Files: images that are not images, truncated or corrupt PNGs, decompression bombs (a few
hundred bytes of PNG claiming 10 gigapixels), folders where files belong, .npz files whose
headers claim absurd arrays or lie about their size, pickled arrays, broken checkpoints and
configs, unreadable datasets. Then the machine: a device that is not there, a full disk (a
file-size limit), a reader that goes away (`difflab info | head`), Ctrl-C.
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import threading
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.checkpoints.names import WEIGHTS_DIR
from difflab.cli import main

# PIL's default decompression-bomb limit (PIL.Image: a quarter GiB of 3-byte pixels).
PIL_DEFAULT_MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3

SHIPPED = WEIGHTS_DIR / "fashion-mnist"
CANARY = b"canary: must be byte-identical after every hostile input"


# ---------------------------------------------------------------------------- file makers
def png_bytes(side: int = 28) -> bytes:
    """A grey noise picture: incompressible, so a cut anywhere lands in its pixel data."""
    pixels = np.random.default_rng(0).integers(0, 256, (side, side), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def black_png(side: int = 28) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (side, side), 0).save(buf, format="PNG")
    return buf.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header that claims width x height pixels, with almost no data behind it:
    what a decompression bomb looks like before it is decoded."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))  # fmt: skip


def corrupt_png() -> bytes:
    """A PNG whose compressed pixel data is overwritten with noise (CRCs kept valid)."""
    data = png_bytes()
    start = data.index(b"IDAT") + 4
    (length,) = struct.unpack(">I", data[start - 8 : start - 4])
    noise = bytes((i * 37 + 11) % 256 for i in range(length))
    return (data[: start - 8] + chunk(b"IDAT", noise) + data[start + length + 4 :])


def npy_header(shape: tuple[int, ...], dtype: str = "|u1") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": dtype, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()  # the magic string, the header's length, the header


def npz_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(f"{name}.npy", data)
    return buf.getvalue()


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def broken_checkpoint(folder: Path, config: object | None = None, model: bytes | None = None,
                      ) -> Path:
    """A copy of a shipped checkpoint with its config.json and/or weights replaced."""
    shutil.copytree(SHIPPED, folder)
    (folder / "manifest.json").unlink(missing_ok=True)  # edited by hand: no checksums left
    if config is not None:
        text = config if isinstance(config, str) else json.dumps(config)
        (folder / "config.json").write_text(text)
    if model is not None:
        (folder / "model.safetensors").write_bytes(model)
    return folder


def shipped_config() -> dict:
    return json.loads((SHIPPED / "config.json").read_text())


def config_without(*keys: str) -> dict:
    c = shipped_config()
    for k in keys:
        c.pop(k)
    return c


def config_with(**changes) -> dict:
    return {**shipped_config(), **changes}


# ---------------------------------------------------------------------------- the cases
# Each: (id, make) where make(folder) writes the hostile input under `folder` and returns
# (argv, strings the error line must contain: the file or flag, and what is wrong).
Case = tuple[str, Callable[[Path], tuple[list[str], list[str]]]]


def img2img(image: Path) -> list[str]:
    return ["img2img", "fashion-mnist", str(image), "-n", "1", "--steps", "2", "--out", "o.png"]


def inpaint(mask: Path, image: Path | None = None) -> list[str]:
    image = image or mask.with_name("ok.png")
    write(image, png_bytes()) if not image.exists() else None
    return ["inpaint", "fashion-mnist", str(image), str(mask), "-n", "1", "--steps", "2",
            "--out", "o.png"]


def junk_idx(folder: Path) -> Path:
    """An MNIST folder whose IDX files are not IDX files."""
    write(folder / "train-images-idx3-ubyte", b"junk" * 10)
    write(folder / "train-labels-idx1-ubyte", b"junk")
    return folder


def few_images(folder: Path, n: int = 3) -> Path:
    """An image folder of `n` real 28x28 pictures: fewer than a batch."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("L", (28, 28), 40 * i).save(folder / f"{i}.png")
    return folder


def eval_images(path: Path) -> list[str]:
    return ["eval", "--images", str(path), "--dataset", "fashion_mnist", "--quiet"]


def train_on(*sets: str) -> list[str]:
    return ["train", "fashion_mnist", "--out", "run", "--steps", "1",
            *[a for s in sets for a in ("--set", s)]]


CASES: list[Case] = [
    # -- images given to img2img / inpaint
    ("text file as image", lambda d: (img2img(write(d / "shirt.png", "not an image")),
                                      ["shirt.png", "cannot identify image"])),
    ("empty image file", lambda d: (img2img(write(d / "e.png", b"")), ["e.png", "cannot read"])),
    ("truncated png", lambda d: (img2img(write(d / "t.png", png_bytes()[:400])),
                                 ["t.png", "cannot read image"])),
    ("corrupt png", lambda d: (img2img(write(d / "c.png", corrupt_png())),
                               ["c.png", "cannot read image"])),
    ("bomb beyond PIL's limit", lambda d: (img2img(write(d / "b.png", png_claiming(10**5, 10**5))),
                                           ["b.png", "exceeds limit"])),
    ("bomb over difflab's limit", lambda d: (
        img2img(write(d / "b.png", png_claiming(12000, 11000))),
        ["b.png", "12000x11000 pixels (132 megapixels)", "at most 120 megapixels"])),
    ("a phone photo's size, but no photo", lambda d: (
        img2img(write(d / "b.png", png_claiming(8000, 6000))), ["b.png", "cannot read image"])),
    ("folder as image", lambda d: (img2img(d / "dir.png"), ["dir.png", "is a folder"])),
    ("missing image", lambda d: (img2img(d / "gone.png"), ["gone.png", "does not exist"])),
    ("all-black mask", lambda d: (inpaint(write(d / "mask.png", black_png())),
                                  ["mask", "marks nothing to redraw"])),
    ("text file as mask", lambda d: (inpaint(write(d / "mask.png", "#!/bin/sh\n")),
                                     ["mask.png", "cannot read mask"])),
    ("bomb as mask", lambda d: (inpaint(write(d / "m.png", png_claiming(12000, 12000))),
                                ["m.png", "12000x12000"])),
    ("folder as mask", lambda d: (inpaint(d / "maskdir"), ["maskdir", "is a folder"])),
    # -- sample files for eval
    ("npz claiming a huge array", lambda d: (
        eval_images(write(d / "huge.npz", npz_of({"images": npy_header((10**9, 1, 64, 64))}))),
        ["huge.npz", "claims an array of shape (1000000000, 1, 64, 64)"])),
    ("npy claiming a huge array", lambda d: (
        eval_images(write(d / "huge.npy", npy_header((2**40, 28, 28)))),
        ["huge.npy", "claims an array"])),
    ("npz shorter than its header", lambda d: (
        eval_images(write(d / "short.npz", npz_of({"images": npy_header((100, 28, 28))
                                                   + b"\x00" * 10}))),
        ["short.npz", "truncated or corrupt"])),
    ("npz of pickled objects", lambda d: (
        eval_images(write(d / "pickle.npz", npz_of({"images": npy_header((2,), "|O")
                                                    + b"\x80\x04N."}))),
        ["pickle.npz", "Python objects"])),
    ("text file as npz", lambda d: (eval_images(write(d / "t.npz", "images,labels\n1,2\n")),
                                    ["t.npz", "not a NumPy array"])),
    ("corrupt zip as npz", lambda d: (
        eval_images(write(d / "z.npz", npz_of({"images": b"\x93NUMPY" + b"\x00" * 50})[:40])),
        ["z.npz"])),
    ("folder as npz", lambda d: (eval_images(d / "samples.npz"), ["samples.npz", "is a folder"])),
    ("missing npz", lambda d: (eval_images(d / "none.npz"), ["none.npz", "no such file"])),
    # -- checkpoints
    ("missing checkpoint", lambda d: (["info", str(d / "nope")], ["nope", "not found"])),
    ("empty folder as checkpoint", lambda d: (["info", str(d / "empty")], ["empty"])),
    ("file as checkpoint", lambda d: (["sample", str(write(d / "ck.bin", "x")), "-n", "1"],
                                      ["ck.bin"])),
    ("checkpoint config not JSON", lambda d: (
        ["info", str(broken_checkpoint(d / "ck", config="{not json"))], ["ck", "JSON"])),
    ("checkpoint config a list", lambda d: (
        ["sample", str(broken_checkpoint(d / "ck", config="[1, 2]")), "-n", "1"], ["ck"])),
    ("checkpoint config without network", lambda d: (
        ["sample", str(broken_checkpoint(d / "ck", config=config_without("network"))), "-n", "1"],
        ["ck", "network"])),
    ("checkpoint config without run", lambda d: (
        ["sample", str(broken_checkpoint(d / "ck", config=config_without("run"))), "-n", "1"],
        ["ck", "run"])),
    ("checkpoint network of the wrong type", lambda d: (
        ["sample", str(broken_checkpoint(d / "ck", config=config_with(network=[1]))), "-n", "1"],
        ["ck"])),
    ("checkpoint run config out of range", lambda d: (
        ["sample", str(broken_checkpoint(d / "ck", config=config_with(
            run={**shipped_config()["run"], "train": {"lr": -1}}))), "-n", "1"],
        ["ck", "train.lr"])),
    ("checkpoint weights truncated", lambda d: (
        ["sample", str(broken_checkpoint(
            d / "ck", model=(SHIPPED / "model.safetensors").read_bytes()[:1000])), "-n", "1"],
        ["ck"])),
    ("checkpoint weights garbage", lambda d: (
        ["export", str(broken_checkpoint(d / "ck", model=b"\xff" * 64)), str(d / "out")],
        ["ck"])),
    ("checkpoint info without network", lambda d: (
        ["info", str(broken_checkpoint(d / "ck", config=config_without("network")))],
        ["ck", "network"])),
    # -- configs and data
    ("binary config", lambda d: (["train", str(write(d / "c.toml", b"\xff\xfe\x00[[["))],
                                 ["c.toml", "not valid TOML"])),
    ("folder as config", lambda d: (["train", str(d / "conf.toml")], ["conf.toml", "folder"])),
    ("image folder of corrupt images", lambda d: (
        train_on("data.name=image_folder", f"data.root={write(d / 'imgs' / 'a.png', 'x').parent}"),
        ["imgs", "readable"])),
    ("image folder smaller than a batch", lambda d: (
        train_on("data.name=image_folder", f"data.root={few_images(d / 'few')}"),
        ["3 images", "train.batch_size"])),
    ("latent run before its autoencoder", lambda d: (
        ["train", "fashion_text", "--out", "run", "--steps", "1"],
        ["latent.autoencoder", "difflab train fashion_autoencoder"])),
    ("missing image folder", lambda d: (
        train_on("data.name=image_folder", f"data.root={d / 'nowhere'}"), ["nowhere"])),
    ("corrupt IDX files", lambda d: (
        train_on("data.name=mnist", f"data.root={junk_idx(d / 'idx')}"),
        ["train-images-idx3-ubyte", "not an IDX file"])),
    # -- outputs
    ("folder as --out", lambda d: (
        ["sample", "fashion-mnist", "-n", "1", "--out", str(d / "outdir.png")],
        ["outdir.png", "is a folder"])),
    ("--out through a file", lambda d: (
        ["sample", "fashion-mnist", "-n", "1", "--out", str(write(d / "f.txt", "x") / "o.png")],
        ["f.txt", "is a file"])),
    ("--init-from a model of another network", lambda d: (
        ["train", "fashion_mnist", "--init-from", "fashion-mnist", "--out", "run", "--steps", "1"],
        ["base_channels", "trained from the config fashion_mnist_large"])),
    ("empty --prompt", lambda d: (
        ["sample", "fashion-text", "--prompt", " ", "-n", "1", "--out", "o.png"],
        ["--prompt", "is empty", "leave the flag out"])),
    ("--prompt to a model without text", lambda d: (
        ["sample", "fashion-mnist", "--prompt", "a shirt", "-n", "1", "--out", "o.png"],
        ["fashion-mnist takes no text: drop --prompt"])),
    ("a user's own picture as --out", lambda d: (
        ["sample", "fashion-mnist", "-n", "1", "--out", str(write(d / "mine.png", "photo"))],
        ["mine.png", "did not write it"])),
    ("folder as --gif", lambda d: (
        ["sample", "fashion-mnist", "-n", "1", "--out", "o.png", "--gif", str(d / "g.gif")],
        ["g.gif", "is a folder"])),
    ("folder as --json", lambda d: (
        ["eval", "fashion-mnist", "--json", str(d / "r.json"), "--samples", "8"],
        ["r.json", "is a folder"])),
    ("viz --out not a .png", lambda d: (["viz", "schedules", "--out", str(d / "v.jpg")],
                                        ["--out must end in .png", "v.jpg"])),
    ("folder as viz --out", lambda d: (["viz", "schedules", "--out", str(d / "v.png")],
                                       ["v.png", "is a folder"])),
    ("--out.npz with its scratch file taken", lambda d: (
        ["sample", "fashion-mnist", "-n", "1", "--out",
         str(write(d / "s.images.npy", b"mine").with_name("s.npz"))],
        ["s.images.npy", "move it away"])),
    ("--device cuda without a GPU", lambda d: (["sample", "fashion-mnist", "--device", "cuda"],
                                               ["--device", "no CUDA"])),
    ("--device nonsense", lambda d: (["train", "--device", "gpu9"], ["--device", "gpu9"])),
]
FOLDERS = ("dir.png", "maskdir", "samples.npz", "empty", "conf.toml", "outdir.png", "g.gif",
           "r.json", "v.png")  # cases above that need a folder where a file is expected


def snapshot(folder: Path) -> dict[str, bytes | str]:
    return {
        p.relative_to(folder).as_posix(): ("dir" if p.is_dir() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
    }


@pytest.mark.parametrize("name, make", CASES, ids=[c[0] for c in CASES])
def test_hostile_input(name, make, tmp_path, monkeypatch, capsys, tally):
    if name == "--device cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for folder in FOLDERS:
        (tmp_path / folder).mkdir()
    (tmp_path / "canary.txt").write_bytes(CANARY)
    argv, says = make(tmp_path)
    monkeypatch.chdir(tmp_path)
    # The cases name PIL's own limits ("at PIL's warning"): pin its default, which a web app
    # launched earlier in this process lowers on purpose (difflab.web.app.launch).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", PIL_DEFAULT_MAX_PIXELS)
    before = snapshot(tmp_path)
    capsys.readouterr()
    try:
        code = main(argv)
    except BaseException as e:  # a traceback, in a user's terminal
        tally("hostile_inputs", cases=1, tracebacks=1)
        raise AssertionError(f"{name}: {type(e).__name__} escaped main()") from e
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    ok = code == 2 and "Traceback" not in err and "internal error" not in err
    tally("hostile_inputs", cases=1, tracebacks=0 if ok else 1)
    assert ok, f"{name}: exit status {code}\n{err}"
    errors = [line for line in lines if line.startswith("difflab: error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    for text in says:
        assert text in errors[0], f"{name}: {text!r} not in {errors[0]!r}"
    assert snapshot(tmp_path) == before, f"{name} changed files"


# ---------------------------------------------------------------------------- the machine
def run_cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "difflab.cli", *args], text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, **kw)


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE as a full disk: Linux")
@pytest.mark.parametrize("out", ["grid.png", "samples.npz"])
def test_full_disk_while_writing_samples(out, tmp_path, tally):
    """A file-size limit makes every large write fail with EFBIG, as a full disk fails them
    with ENOSPC: one line, and no half-written file left behind."""
    (tmp_path / "canary.txt").write_bytes(CANARY)

    def small_files() -> None:  # in the child: files may not grow beyond 4 kB
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    p = run_cli("sample", "fashion-mnist", "-n", "64", "--steps", "1", "--quiet", "--out", out,
                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                preexec_fn=small_files)
    _, err = p.communicate(timeout=300)
    ok = p.returncode == 2 and "Traceback" not in err
    tally("hostile_inputs", cases=1, tracebacks=0 if ok else 1)
    assert ok, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("difflab: error: File too large") and out in last, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["canary.txt"]
    assert (tmp_path / "canary.txt").read_bytes() == CANARY


def test_reader_gone_is_quiet(tmp_path, tally):
    """`difflab info | head -1`: the pipe closes before difflab writes; no traceback, no
    'Exception ignored' at exit, the status a shell gives a program ended by SIGPIPE."""
    r, w = os.pipe()
    os.close(r)  # no reader at all
    p = run_cli("info", "fashion-mnist", cwd=tmp_path, stdout=w, stderr=subprocess.PIPE)
    os.close(w)
    _, err = p.communicate(timeout=120)
    tally("hostile_inputs", cases=1, tracebacks=int("Traceback" in err or "Exception" in err))
    assert err == "" and p.returncode == 141, (p.returncode, err)


def test_ctrl_c_is_one_line_and_130(tmp_path, tally):
    """SIGINT in the middle of sampling: exit status 130, one line, and the half-drawn .npz
    stream (samples.images.npy) removed."""
    # A process started in the background by a non-interactive shell (CI under nohup ... &)
    # inherits SIGINT ignored, and Python then never installs its Ctrl-C handler: give the
    # child the default disposition, as a terminal's foreground process has.
    p = run_cli("sample", "fashion-mnist", "-n", "100000", "--steps", "50", "--batch-size", "8",
                "--out", "samples.npz", cwd=tmp_path, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # stderr is read all along by a thread: the progress bar writes there, and a full pipe
    # would block the child before the signal arrives.
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(p.stderr), daemon=True)
    reader.start()
    for line in p.stdout:  # wait until it samples: the line that says with what
        if line.startswith("difflab: sampling with"):
            break
    p.send_signal(signal.SIGINT)
    try:
        p.wait(timeout=120)
    finally:
        p.kill()  # a no-op once it exited; a hung child must not outlive the test
    reader.join(timeout=30)
    err = "".join(err_lines)
    lines = [
        line
        for line in err.splitlines()
        if line.strip() and "it/s" not in line and "s/it" not in line and "%|" not in line
    ]  # the progress bar
    tally("hostile_inputs", cases=1, tracebacks=int("Traceback" in err))
    assert p.returncode == 130 and "Traceback" not in err, err
    assert lines[-1] == "difflab: interrupted", err
    assert list(tmp_path.iterdir()) == []
