"""The app under load and at its edges, through its HTTP API (what gradio_client, scripts and
the page itself call): a burst of requests all complete, correctly; uploads over the bound are
refused; `difflab serve` binds loopback and applies its flags.

The burst's wall-clock time and the server's peak memory are measured by bench/web_load.py
(BENCHMARKS.md), not asserted here: they depend on the machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import types
import zlib

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client", reason="needs the web extra (gradio)")
httpx = pytest.importorskip("httpx", reason="needs the web extra (gradio)")

BURST = 20


@pytest.fixture
def connect(tmp_path, monkeypatch):
    """A gradio_client.Client factory whose downloads stay in the test's tmp_path: the client
    streams each result file through a folder of its own under tempfile.gettempdir() (40 hex
    digits) and leaves that folder behind, empty, and keeps the file under /tmp/gradio unless
    told where (gradio_client 2.7). The suite left ~200 such folders in /tmp a run. Only the
    client's module sees tmp_path as the temp dir: the app serving it runs in this process
    and must keep its own."""
    client_module = sys.modules[gradio_client.Client.__module__]
    monkeypatch.setattr(client_module, "tempfile", types.SimpleNamespace(
        **{**vars(tempfile), "gettempdir": lambda: str(tmp_path)}))
    downloads = tmp_path / "downloads"

    def client(url: str):
        return gradio_client.Client(url, verbose=False, download_files=str(downloads))

    return client


def generate_args(seed: int, n: int = 2) -> tuple:
    """/generate's inputs: model, class, prompt, negative, sampler, steps, guidance, seed, n,
    gif."""
    return ("mnist-digits-cond", "3", "", "", "ddim", 2, 2, seed, n, False)


def test_a_burst_of_generations_all_complete_correctly(app_url, store, connect):
    """20 requests at once wait in the queue (one samples at a time) and every one comes back
    with its own seed's images; the app answers afterwards."""
    client = connect(app_url)
    jobs = [client.submit(*generate_args(seed), api_name="/generate") for seed in range(BURST)]
    results = [job.result(timeout=600) for job in jobs]
    gen = store.load("mnist-digits-cond")
    for seed, (_, gallery, notes, _, files) in enumerate(results):
        shown = np.stack([np.asarray(Image.open(item["image"])) for item in gallery])
        expected = gen.generate(2, sampler="ddim", steps=2, seed=seed, classes=["3"], guidance=2)
        assert np.array_equal(shown, expected[:, 0].numpy()), f"request {seed}"
        assert f"seed {seed}" in notes and len(files) == 1  # the grid PNG (no GIF asked for)
    assert client.predict(100, api_name="/schedules").endswith(".png")


def test_a_failed_request_is_one_line_and_the_next_succeeds(app_url, connect):
    client = connect(app_url)
    with pytest.raises(gradio_client.exceptions.AppError) as e:
        client.predict("/", "(no class)", "", "", "ddim", 2, 0, 0, 1, False, api_name="/generate")
    assert "is outside the folders this app serves" in str(e.value)
    _, gallery, _, _, _ = client.predict(*generate_args(0, n=1), api_name="/generate")
    assert len(gallery) == 1


def test_uploads_over_the_bound_are_refused(app_url, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(2 * 2**20 + 1))  # one byte over the 2 MB default
    with big.open("rb") as f:
        response = httpx.post(f"{app_url}/gradio_api/upload", files={"files": ("big.png", f)})
    assert response.status_code == 413 and "maximum allowed size" in response.text


def _listening(port: int) -> list[str]:
    """The local addresses listening on `port` (from /proc/net/tcp and tcp6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in open(table).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.append(address)
    return found


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's socket table")
def test_serve_binds_loopback_and_applies_its_flags(served, port, connect):
    server = subprocess.Popen(
        [sys.executable, "-m", "difflab.web.command", "--port", str(port), "--root",
         str(served), "--max-images", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline, said = time.monotonic() + 120, []
        while not any("the app is at" in line for line in said):
            line = server.stdout.readline()
            assert line and time.monotonic() < deadline, "".join(said)
            said.append(line)
        assert _listening(port) == ["0100007F"]  # 127.0.0.1 only
        client = connect(f"http://127.0.0.1:{port}/")
        with pytest.raises(gradio_client.exceptions.AppError,
                           match="number of images 5 is over this app's limit of 4"):
            client.predict(*generate_args(0, n=5), api_name="/generate")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_uploads_that_are_not_images_are_refused_in_one_line(app_url, tmp_path, connect):
    """The browser's upload widgets only offer images, but the HTTP API takes any file: an
    image or mask that is not a picture is refused by name, in one line (not gradio's
    preprocessing report), and the app keeps serving."""
    picture, text = tmp_path / "picture.png", tmp_path / "notes.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(picture)
    text.write_text("not a picture\n")
    client = connect(app_url)

    def inpaint(image, mask) -> str:
        sketch = {"background": gradio_client.handle_file(str(image)), "layers": [],
                  "composite": None}
        with pytest.raises(gradio_client.exceptions.AppError) as e:
            client.predict("fashion-text", sketch, gradio_client.handle_file(str(mask)),
                           "a dress", "", "ddim", 2, 2, 0, 1, api_name="/inpaint")
        return str(e.value)

    for message, what in ((inpaint(picture, text), "mask"), (inpaint(text, picture), "image")):
        assert message.startswith(f"cannot read the {what} 'notes.png': it is not an image")
        assert "\n" not in message and "preprocess" not in message
    with pytest.raises(gradio_client.exceptions.AppError) as e:  # Explore's upload too
        client.predict("fashion-mnist", "upload", 0, gradio_client.handle_file(str(text)),
                       500, 0, api_name="/forward")
    assert str(e.value).startswith("cannot read the image 'notes.png': it is not an image")
    # a header that claims 60000x60000 pixels: refused as too large, before it is decoded
    huge = tmp_path / "huge.png"
    header = Image.new("L", (1, 1))
    header.save(huge)
    data = bytearray(huge.read_bytes())
    data[16:24] = (60000).to_bytes(4, "big") * 2  # IHDR width and height, then its CRC
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    huge.write_bytes(bytes(data))
    message = inpaint(huge, picture)
    assert message.startswith("cannot read the image 'huge.png': its header claims more pixels")
    _, gallery, _, _, _ = client.predict(*generate_args(0, n=1), api_name="/generate")
    assert len(gallery) == 1


def test_a_jpeg_picture_is_edited_as_the_command_line_reads_it(app_url, store, tmp_path, connect):
    """gradio's sketch pad saves its picture again as RGBA in the format of the file's name,
    which JPEG cannot hold: every .jpg (here a CMYK one, as print shops write) used to fail
    there. Now the page edits it exactly as `Generator.img2img` does the same file."""
    from difflab.pipeline import read_image_file

    photo = tmp_path / "photo.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).convert("CMYK").save(photo)
    client = connect(app_url)
    sketch = {"background": gradio_client.handle_file(str(photo)), "layers": [], "composite": None}
    gallery, _, _ = client.predict("fashion-text", sketch, "a dress", "", 0.6, "ddim", 2, 2, 3,
                                   1, api_name="/img2img")
    shown = np.asarray(Image.open(gallery[0]["image"]))
    expected = store.load("fashion-text").img2img(read_image_file(photo), ["a dress"],
                                                  strength=0.6, n=1, sampler="ddim", steps=2,
                                                  guidance=2, seed=3)
    assert np.array_equal(shown, expected[0, 0].numpy())


def test_an_unreadable_sketch_layer_is_named_as_the_layer(app_url, tmp_path, connect):
    """The sketch pad sends the picture and the strokes as separate files; a stroke layer that
    is not an image is refused by its own name, not the picture's."""
    picture, layer = tmp_path / "picture.png", tmp_path / "strokes.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(picture)
    layer.write_text("not a picture\n")
    client = connect(app_url)
    sketch = {"background": gradio_client.handle_file(str(picture)),
              "layers": [gradio_client.handle_file(str(layer))], "composite": None}
    with pytest.raises(gradio_client.exceptions.AppError) as e:
        client.predict("fashion-text", sketch, None, "a dress", "", "ddim", 2, 2, 0, 1,
                       api_name="/inpaint")
    assert str(e.value).startswith("cannot read the sketch layer 'strokes.png': it is not an image")


def test_a_sampler_gradio_does_not_list_gets_difflabs_one_line(app_url, connect):
    """The sampler lists take any value, so that a name outside them is refused by difflab's
    own check (one line with the allowed names) rather than gradio's choices report."""
    client = connect(app_url)
    with pytest.raises(gradio_client.exceptions.AppError) as e:
        client.predict("mnist-digits-cond", "3", "", "", "euler_fast", 2, 2, 0, 1, False,
                       api_name="/generate")
    message = str(e.value)
    assert message.startswith("sampler 'euler_fast' is not one of ") and "dpmpp_2m" in message
    assert "\n" not in message and "choices" not in message


def test_serve_on_a_port_in_use_is_one_line_naming_the_flag(capsys):
    """Another program listening on --port: refused in one line that points at --port, before
    any model is loaded (gradio's own message names an environment variable instead)."""
    import socket

    from difflab.cli import main

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"difflab: error: cannot serve on 127.0.0.1:{port}: ")
    assert "give another --port" in err and "\n" not in err
    assert main(["serve", "--host", "no-such-host.invalid"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("difflab: error: cannot serve on no-such-host.invalid:")
    assert "give a --host this machine has" in err and "\n" not in err


def test_the_api_takes_relation_and_binding_guidance_as_docs_web_shows(app_url, connect):
    """docs/web.md's calls: gradio_client with the last four inputs (autoguidance, relation
    and binding guidance, relation regions), and plain HTTP, where every input is given (null:
    the model's)."""
    client = connect(app_url)
    _, gallery, notes, _, _ = client.predict(
        "shapes-text", "(no class)", "a red circle above a blue square", "", "dpmpp_2m", 2, 3,
        0, 1, False, None, 0, 15, False, api_name="/generate")
    assert len(gallery) == 1 and "binding guidance 15" in notes
    assert "relation guidance" not in notes.splitlines()[0]
    data = ["mnist-digits-cond", "7", "", "", "dpmpp_2m", 2, 2, 0, 1, False, None, None, None,
            None]
    event = httpx.post(f"{app_url}/gradio_api/call/generate", json={"data": data}, timeout=60)
    stream = httpx.get(f"{app_url}/gradio_api/call/generate/{event.json()['event_id']}",
                       timeout=600).text
    assert "event: complete" in stream and "sampled with dpmpp_2m, 2 steps" in stream


def test_a_value_outside_a_sliders_range_gets_difflabs_line_naming_the_field(app_url, connect):
    """The API takes any number for a slider: gradio's own range check said "Value 2.0 is
    greater than maximum value 1." (no field, no flag) and logged a traceback; the handler's
    check says which field and what it allows."""
    client = connect(app_url)
    with pytest.raises(Exception, match=r"t 5000 is outside this model's process \(0\.\.999\)"):
        client.predict("fashion-mnist", "training image", 0, None, 5000, 0, api_name="/forward")


def test_an_api_call_that_leaves_guidance_out_gets_the_models_own(app_url, connect):
    """gradio_client fills a value left out with the form's default: guidance's is blank, the
    model's own (3 for fashion-text), not 0, which would draw unconditionally and ignore the
    prompt."""
    client = connect(app_url)
    _, gallery, notes, _, _ = client.predict("fashion-text", "(no class)", "a sneaker", "",
                                             "ddim", 2, n=1, gif=False, api_name="/generate")
    assert len(gallery) == 1 and "guidance 3" in notes and "guidance 0" not in notes
