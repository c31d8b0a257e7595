"""Each tab's handlers, called as the page calls them, against the CLI and the library.

The page must draw what `difflab sample` / `img2img` / `inpaint` draw for the same seed and
settings, pixel for pixel; refuse what is over its bounds in one line; and read runs as they
are on disk.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.cli import main as difflab_main
from difflab.web import edit, explore, generate, runs
from difflab.web.limits import Limits, Roots
from difflab.web.models import ModelStore, find_checkpoints, find_runs

LIMITS = Limits(max_steps=50, max_images=16)


def draw(store, limits=LIMITS, **kw):
    """generate.run to the end: (previews, result)."""
    job = generate.run(store, limits, generate.Request(**kw), interval_s=0)
    previews = []
    while True:
        try:
            previews.append(next(job))
        except StopIteration as stop:
            return previews, stop.value


def cli_images(tmp_path, *args: str) -> np.ndarray:
    out = tmp_path / "cli.npz"
    assert difflab_main(["sample", *args, "--out", str(out), "--quiet"]) == 0
    return np.load(out)["images"]


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_generate_equals_difflab_sample(store, tmp_path):
    previews, result = draw(
        store,
        model="mnist-digits-cond",
        condition="7",
        sampler="dpmpp_2m",
        steps=4,
        guidance=2,
        seed=5,
        n=3,
    )
    expected = cli_images(
        tmp_path, "mnist-digits-cond", "--class", "7", "-n", "3", "--steps", "4", "--seed", "5"
    )  # guidance: the checkpoint's, 2
    assert np.array_equal(result.images.numpy(), expected)
    assert previews and previews[-1].total == 4 and result.captions[0] == "#0 · 7"
    assert result.grid.is_file() and Image.open(result.gif).n_frames >= 2
    assert result.notes[0] == "sampled with dpmpp_2m, 4 steps, guidance 2, seed 5"


def test_all_classes_is_laid_out_as_the_cli_does(store, tmp_path):
    """'all' is `--class all`: ceil(n / classes) per class, one grid row each."""
    _, result = draw(
        store,
        Limits(max_images=20),
        model="mnist-digits-cond",
        condition=generate.ALL_CLASSES,
        sampler="ddim",
        steps=3,
        guidance=2,
        seed=1,
        n=12,
    )
    expected = cli_images(
        tmp_path,
        "mnist-digits-cond",
        "--class",
        "all",
        "-n",
        "12",
        "--sampler",
        "ddim",
        "--steps",
        "3",
        "--seed",
        "1",
    )
    assert result.images.shape[0] == 20 and np.array_equal(result.images.numpy(), expected)
    # the API may say "all", as the CLI and docs/web.md do, for the list's last entry
    _, typed = draw(store, Limits(max_images=20), model="mnist-digits-cond", condition="all",
                    sampler="ddim", steps=3, guidance=2, seed=1, n=12)
    assert np.array_equal(typed.images.numpy(), expected)


def test_text_generation_equals_the_cli_and_says_how_the_prompt_reads(store, tmp_path):
    _, result = draw(
        store,
        model="fashion-text",
        prompt="a warm winter coat",
        negative_prompt="a dress",
        sampler="dpmpp_2m",
        steps=3,
        guidance=3,
        seed=0,
        n=2,
    )
    expected = cli_images(
        tmp_path,
        "fashion-text",
        "--prompt",
        "a warm winter coat",
        "--negative-prompt",
        "a dress",
        "-n",
        "2",
        "--steps",
        "3",
    )
    assert np.array_equal(result.images.numpy(), expected)
    assert any(
        note.startswith("'a warm winter coat' reads as the training captions")
        for note in result.notes
    )


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"steps": 51}, "steps 51 is over this app's limit of 50"),
        ({"n": 17}, "number of images 17 is over this app's limit of 16"),
        ({"sampler": "magic"}, "sampler 'magic' is not one of"),
        ({"sampler": ["ddim"]}, "sampler ['ddim'] is not one of"),  # JSON lets a list through
        ({"model": "fashion-text", "prompt": "a \ud800 shirt"}, "is not valid text"),
        ({"model": "fashion-text", "prompt": ["a shirt"]}, "prompt must be text, got list"),
        (
            {"condition": generate.ALL_CLASSES, "n": 16},
            "'all (a row per class)' rounds 16 images up to 20 (2 per class), over this app's "
            "limit",
        ),
        ({"model": "fashion-mnist", "condition": "7"}, "this checkpoint is unconditional"),
        ({"model": "fashion-text", "condition": "Shirt"},
         "this checkpoint is text-conditional: it takes a prompt, not a class"),
        ({"model": "/etc"}, "checkpoint '/etc' is outside the folders this app serves"),
        ({"model": "runs/a\x00b"}, "checkpoint 'runs/a\\x00b' holds a NUL byte"),
        ({"autoguidance": 2}, "autoguidance needs a guide"),  # this model keeps none
        ({"autoguidance": "2x"}, "autoguidance must be a number"),
        ({"autoguidance": -1}, "autoguidance -1 is out of range (allowed 0..50; 1: the model "
                               "alone)"),
    ],
)
def test_generate_refuses_in_one_line(store, kw, message):
    request = {"model": "mnist-digits-cond", "sampler": "ddim", "steps": 2, "n": 2, **kw}
    with pytest.raises(ValueError) as e:
        draw(store, **request)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_autoguidance_is_the_models_own_and_draws_as_the_cli_does(store, served, tmp_path):
    """The served run keeps a guide: the form preselects its weight, a weight given draws
    what `--autoguidance` draws, and 1 is the model alone."""
    run = str(served / "runs" / "tiny" / "last")
    assert generate.defaults(store.load(run))["autoguidance"] == 2.0
    assert generate.defaults(store.load("mnist-digits-cond"))["autoguidance"] is None
    common = [run, "-n", "2", "--sampler", "ddim", "--steps", "3", "--seed", "2"]
    for weight in (1.5, 1):
        _, result = draw(store, model=run, sampler="ddim", steps=3, seed=2, n=2,
                         autoguidance=weight)
        expected = cli_images(tmp_path, *common, "--autoguidance", str(weight))
        assert np.array_equal(result.images.numpy(), expected)
    assert "autoguidance 1," in result.notes[0]  # the weight given, 1: the model alone
    _, own = draw(store, model=run, sampler="ddim", steps=3, seed=2, n=2)
    assert np.array_equal(own.images.numpy(), cli_images(tmp_path, *common))
    assert "autoguidance 2" in own.notes[0]
    assert not np.array_equal(own.images.numpy(), result.images.numpy())


def test_a_runs_checkpoint_is_listed_and_draws(store, served):
    found = find_checkpoints(store.roots)
    last = [c for c in found if c.endswith("tiny/last")]
    assert last, found
    _, result = draw(store, model=last[0], sampler="ddim", steps=2, n=2)
    assert result.images.shape == (2, 1, 8, 8)
    # its health line names the step the checkpoint was saved at (its state.json's)
    health = [n for n in result.notes if n.startswith("health")]
    assert health and all(n.startswith("health warning: step 2:") for n in health), result.notes


def test_img2img_and_inpaint_equal_the_cli(store, tmp_path):
    shirt = tmp_path / "shirt.png"
    pixels = store.load("fashion-mnist-cond").generate(1, classes=["shirt"], steps=4, seed=1)
    Image.fromarray(pixels[0, 0].numpy()).save(shirt)
    layer = np.zeros((28, 28, 4), np.uint8)
    layer[:10, :, 0], layer[:10, :, 3] = 255, 255  # a red stroke over the top ten rows
    Image.fromarray(layer, "RGBA").save(tmp_path / "layer.png")
    mask = tmp_path / "mask.png"
    Image.fromarray((layer[:, :, 3] > 0).astype(np.uint8) * 255).save(mask)
    sketch = {"background": str(shirt), "layers": [str(tmp_path / "layer.png")], "composite": None}
    req = generate.Request(
        model="fashion-text", prompt="a dress", sampler="dpmpp_2m", steps=4, guidance=3, seed=2, n=2
    )

    edited = edit.img2img(store, LIMITS, req, sketch, 0.8)
    out = tmp_path / "img2img.png"
    assert (
        difflab_main(
            [
                "img2img",
                "fashion-text",
                str(shirt),
                "--prompt",
                "a dress",
                "--strength",
                "0.8",
                "--steps",
                "4",
                "--seed",
                "2",
                "-n",
                "2",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert np.array_equal(png(edited.grid), png(out))

    filled = edit.inpaint(store, LIMITS, req, sketch)  # the mask: the strokes
    out = tmp_path / "inpaint.png"
    assert (
        difflab_main(
            [
                "inpaint",
                "fashion-text",
                str(shirt),
                str(mask),
                "--prompt",
                "a dress",
                "--steps",
                "4",
                "--seed",
                "2",
                "-n",
                "2",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert np.array_equal(png(filled.grid), png(out))
    kept = pixels[0, 0, 10:].expand(2, -1, -1)
    assert torch.equal(filled.images[:, 0, 10:], kept)  # outside the strokes: unchanged


def test_edits_refuse_in_one_line(store, tmp_path):
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(big)
    req = generate.Request(model="fashion-text", prompt="a dress", sampler="ddim", steps=2, n=1)
    with pytest.raises(ValueError, match="image is 40x40 but the model draws 28x28"):
        edit.img2img(store, LIMITS, req, {"background": str(big), "layers": []})
    with pytest.raises(ValueError, match="no mask: paint over the part to redraw"):
        edit.inpaint(store, LIMITS, req, {"background": str(big), "layers": []})
    with pytest.raises(ValueError, match="no image: upload one"):
        edit.img2img(store, LIMITS, req, None)
    with pytest.raises(ValueError, match="strength must be a number from 0 to 1"):
        edit.img2img(store, LIMITS, req, {"background": str(big), "layers": []}, 1.5)


def test_sampler_comparison_shares_the_seed(store):
    out = explore.compare(
        store, LIMITS, "mnist-digits-cond", ["ddim", "dpmpp_2m"], "2, 4", "3", None, 7, 3
    )
    assert [(s, k) for s, k, _ in out.rows] == [
        ("ddim", 2),
        ("ddim", 4),
        ("dpmpp_2m", 2),
        ("dpmpp_2m", 4),
    ]
    gen = store.load("mnist-digits-cond")
    again = gen.generate(3, sampler="dpmpp_2m", steps=4, seed=7, classes=["3"], guidance=2)
    assert torch.equal(out.rows[-1][2], again)
    from difflab.ownership import written_by_difflab

    assert written_by_difflab(out.path)  # the picture offered for download is marked
    with pytest.raises(ValueError, match="over this app's limit of 12"):
        explore.compare(
            store,
            LIMITS,
            "fashion-mnist",
            ["ddim", "dpmpp_2m", "heun"],
            "1 2 3 4 5",
            None,
            None,
            0,
            1,
        )
    with pytest.raises(ValueError, match="step count 'x' is not a whole number"):
        explore.step_counts("5, x", LIMITS)
    assert explore.step_counts("5 10,10 , 20", LIMITS) == [5, 10, 20]


def test_forward_process_and_schedules(store, tmp_path):
    assert (
        Image.open(
            explore.forward(store, "fashion-mnist", explore.DATA_IMAGE, 3, None, 600, 0)
        ).size[0]
        > 0
    )
    with pytest.raises(ValueError, match=r"t 1000 is outside this model's process \(0..999\)"):
        explore.forward(store, "fashion-mnist", explore.DATA_IMAGE, 0, None, 1000, 0)
    with pytest.raises(ValueError, match="t of a discrete process is a whole step"):
        explore.forward(store, "fashion-mnist", explore.DATA_IMAGE, 0, None, 2.5, 0)
    with pytest.raises(ValueError, match="no image: upload one"):
        explore.forward(store, "fashion-mnist", explore.UPLOAD, 0, None, 10, 0)
    assert Image.open(explore.schedules(100)).size[0] > 0
    with pytest.raises(ValueError, match="T 1 is out of range"):
        explore.schedules(1)


def test_runs_view_reads_the_run_as_written(store, served, tmp_path):
    roots = store.roots
    assert [r for r in find_runs(roots) if r.endswith("runs/tiny")]
    run = served / "runs" / "tiny"
    view = runs.view(roots, str(run))
    assert "step 2 · loss" in view.summary
    assert view.loss is not None and view.fid is None  # this run tracks no FID
    assert [c for _, c in view.grids] == ["final samples (samples.png)", "step 2", "step 1"]
    # Two steps of training draw noise; each check says so (and, on a busy machine, that the
    # run was slower than timed: the clock's part is not asserted).
    assert view.health and view.health[0].startswith("step 2: samples are still noise")
    assert all("samples are still noise" in line for line in view.health)
    with pytest.raises(ValueError, match="is outside the folders this app serves"):
        runs.view(roots, str(tmp_path))


def test_runs_read_a_run_that_is_still_writing(tmp_path):
    """The trainer appends a line at a time: a half-written last line is not an error, and a
    sample grid linked from outside the served folders is not shown."""
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    rows = [
        {"step": 1, "loss": 1.0, "lr": 1e-3},
        {"step": 2, "loss": 0.5, "lr": 1e-3},
        {"step": 2, "fid": 80.0, "kid": 0.1},
        {"step": 2, "health": []},
        {"step": 2, "loss": None},  # damaged: skipped with a warning, not an internal error
        {"step": 3, "health": ["slow", "a_kind_from_a_newer_version"]},
        {"step": 4, "health": ["slow"]},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5,')
    outside = tmp_path / "outside.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(outside)
    (run / "samples" / "step_0000002.png").symlink_to(outside)
    with pytest.warns(UserWarning, match="skipped 1 damaged row"):
        view = runs.view(Roots([run]), str(run))
    assert view.fid is not None and view.grids == []
    assert "FID 80.00 at step 2 (best 80.00 at step 2)" in view.summary
    assert view.health == [  # newest first; a kind it does not know is named, not healthy
        "step 4: samples look like data; training ran slower than its start-up timing",
        "step 3: a finding of kind 'a_kind_from_a_newer_version'; training ran slower than its "
        "start-up timing",
        "step 2: samples look like data",
    ]


def test_a_refused_request_logs_one_line_and_a_bug_its_traceback(capsys):
    """gradio prints the traceback of every gr.Error to the server's log; a user's mistake
    gets one line there instead, and only a bug a traceback."""
    gr = pytest.importorskip("gradio")
    from difflab.web.app import _shown_errors

    def refuses():
        raise ValueError("steps must be between 1 and 200")

    def breaks():
        raise ZeroDivisionError("division by zero")

    for handler, shown, logged in ((refuses, "steps must be between 1 and 200", False),
                                   (breaks, "internal error, ZeroDivisionError", True)):
        with pytest.raises(gr.Error) as failure:
            _shown_errors(handler)()
        assert shown in failure.value.message and failure.value.print_exception is False
        log = capsys.readouterr().err
        assert ("Traceback" in log) is logged
        assert logged or log == "difflab serve: refused a request: steps must be between 1 " \
                                "and 200\n"


def test_request_folders_share_one_per_process_and_old_ones_go(monkeypatch):
    """Each request's files go to a folder of its own under one per server process; those
    older than WORK_FOLDER_SECONDS are removed as new ones are made (gradio has copied them
    by then), so a long-running server does not fill the temp space."""
    import os

    monkeypatch.setattr(generate, "_work_root", None)
    first, second = generate.work_folder(), generate.work_folder()
    assert first.parent == second.parent and first != second and first.name.startswith("tmp")
    assert first.parent.name.startswith("difflab-web-")
    old = generate.time.time() - generate.WORK_FOLDER_SECONDS - 1
    os.utime(first, (old, old))
    third = generate.work_folder()
    assert not first.exists() and second.is_dir() and third.is_dir()


def test_a_checkpoint_fallback_is_said_beside_every_drawing_from_it(served, tmp_path):
    """A run whose last/ is damaged draws from the next candidate (checkpoints.store); the page says
    so in the notes of each request that draws from it, not only in the server's log on the
    first load."""
    import shutil

    from difflab.web.errors import install_warning_router

    install_warning_router()
    root = tmp_path / "root"
    shutil.copytree(served / "runs" / "tiny", root / "runs" / "tiny")
    (root / "runs" / "tiny" / "last" / "ema.safetensors").write_bytes(b"damaged")
    store = ModelStore(Roots([root]))
    for _ in range(2):  # the first request loads it, the second finds it loaded
        _, result = draw(store, model="runs/tiny/last", sampler="ddim", steps=2, n=1)
        said = [n for n in result.notes if "instead" in n]
        assert len(said) == 1 and " instead: " in said[0], result.notes  # best/ here
        assert "ema.safetensors does not match manifest.json" in said[0]


def test_guidance_without_a_class_or_prompt_is_said_not_to_apply(store):
    """The CLI refuses --guidance without a class or prompt; the page always sends its
    guidance field, so it draws unconditionally and says the guidance was not applied."""
    _, alone = draw(store, model="mnist-digits-cond", sampler="ddim", steps=2, guidance=3, n=1)
    assert ("guidance 3 not applied: without a class or a prompt the model draws "
            "unconditionally") in alone.notes
    _, guided = draw(store, model="mnist-digits-cond", condition="3", sampler="ddim", steps=2,
                     guidance=3, n=1)
    assert not any("not applied" in note for note in guided.notes)


def test_fallback_copies_are_listed_only_when_all_that_is_left(served, tmp_path):
    """NAME.prev/ beside its NAME/ is the copy kept to fall back on, which loading NAME/
    reaches by itself: not listed. last.prev/ without last/ (a crash between the two renames
    of a write) is the run's newest complete checkpoint: then it is listed."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(served / "runs" / "tiny", run)
    for name in ("last", "best"):
        shutil.copytree(run / name, run / f"{name}.prev")
    found = find_checkpoints(Roots([tmp_path]))
    assert any(c.endswith("run/last") for c in found), found
    assert not any(c.endswith(".prev") for c in found), found
    shutil.rmtree(run / "last")
    found = find_checkpoints(Roots([tmp_path]))
    assert any(c.endswith("run/last.prev") for c in found), found
    assert not any(c.endswith("run/best.prev") for c in found), found


def test_relation_and_binding_guidance_are_the_models_own_and_draw_as_the_cli_does(
        store, tmp_path):
    """`shapes-text` guides relations and colours by default (its [sample] settings): the page
    presets its fields to them, draws what `difflab sample` draws, and takes 0 for off."""
    d = generate.defaults(store.load("shapes-text"))
    assert (d["relation_guidance"], d["binding_guidance"]) == (30, 15)
    assert d["relation_regions"] is True
    off = generate.defaults(store.load("mnist-digits-cond"))
    assert (off["relation_guidance"], off["binding_guidance"]) == (None, None)  # no fields
    assert off["relation_regions"] is None
    # a phrase of two objects: drawn whole (no regions), so the guidance has every step
    prompt = "two red circles above a blue square"
    _, result = draw(store, model="shapes-text", prompt=prompt, sampler="dpmpp_2m", steps=3,
                     guidance=3, seed=1, n=2, relation_guidance=30, binding_guidance=15)
    expected = cli_images(tmp_path, "shapes-text", "--prompt", prompt, "-n", "2", "--steps",
                          "3", "--seed", "1")
    assert np.array_equal(result.images.numpy(), expected)
    assert "relation guidance 30, binding guidance 15, relation regions" in result.notes[0]  # on
    _, plain = draw(store, model="shapes-text", prompt=prompt, sampler="dpmpp_2m", steps=3,
                    guidance=3, seed=1, n=2, relation_guidance=0, binding_guidance=0)
    expected = cli_images(tmp_path, "shapes-text", "--prompt", prompt, "-n", "2", "--steps",
                          "3", "--seed", "1", "--relation-guidance", "0",
                          "--binding-guidance", "0")
    assert np.array_equal(plain.images.numpy(), expected)
    assert not np.array_equal(plain.images.numpy(), result.images.numpy())
    # without a prompt the fields (always sent) steer nothing: it draws, and says so
    _, alone = draw(store, model="shapes-text", sampler="dpmpp_2m", steps=2, guidance=3,
                    seed=1, n=1, relation_guidance=30, binding_guidance=15)
    assert alone.images.shape[0] == 1
    assert ("relation guidance 30 and binding guidance 15 not applied: they steer what a "
            "prompt says, and there is none") in alone.notes


def test_relation_regions_turned_off_draw_as_the_cli_does(store, tmp_path):
    """Relation regions are on for `shapes-text` (its [sample] setting); off from the page, a
    relation prompt draws what `difflab sample --no-relation-regions` draws, and the notes no
    longer name them."""
    prompt = "a red circle above a blue square"
    _, off = draw(store, model="shapes-text", prompt=prompt, sampler="dpmpp_2m", steps=3,
                  guidance=3, seed=1, n=2, relation_regions=False)
    expected = cli_images(tmp_path, "shapes-text", "--prompt", prompt, "-n", "2", "--steps",
                          "3", "--seed", "1", "--no-relation-regions")
    assert np.array_equal(off.images.numpy(), expected)
    assert "relation regions" not in off.notes[0]
    _, on = draw(store, model="shapes-text", prompt=prompt, sampler="dpmpp_2m", steps=3,
                 guidance=3, seed=1, n=2, relation_regions=True)
    assert not np.array_equal(on.images.numpy(), off.images.numpy())


@pytest.mark.parametrize("kw, message", [
    ({"model": "mnist-digits-cond", "condition": "3", "relation_guidance": 5},
     "this model has none: set them to 0"),
    ({"model": "shapes-text", "prompt": "a red circle", "binding_guidance": -1},
     "binding guidance -1 is out of range (allowed 0..1000; 0: off)"),
    ({"model": "shapes-text", "prompt": "a red circle", "relation_guidance": "x"},
     "relation guidance must be a number"),
    ({"model": "shapes-text", "prompt": "a red circle", "relation_regions": "yes"},
     "relation regions must be true or false, got 'yes'"),
    ({"model": "mnist-digits-cond", "condition": "3", "relation_regions": True},
     "this model takes no text: turn them off"),
])
def test_relation_and_binding_guidance_refuse_in_one_line(store, kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        draw(store, sampler="dpmpp_2m", steps=2, n=1, **kw)
