"""Pictures that explain themselves: labelled grids and GIF frames, the loss curve from its
first point, and `--class all` / several prompts laid out one row each."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from difflab import viz
from difflab.cli import main
from difflab.cli.sample import sample_rows


def _batch(n: int = 6, c: int = 1, side: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).copy()


# ----------------------------------------------------------------------------- grids


def test_unlabelled_grid_is_the_bare_grid(tmp_path):
    # Tests elsewhere compare grid files: without labels nothing may change, not one pixel.
    images = _batch(5)
    path = viz.save_grid(images, tmp_path / "g.png", nrow=3, scale=2)
    expected = viz.make_grid(images, nrow=3)[:, :, 0].repeat(2, 0).repeat(2, 1)
    assert np.array_equal(_pixels(path), expected)


@pytest.mark.parametrize("channels", [1, 3])
def test_labelled_grid_adds_a_margin_and_keeps_every_pixel(tmp_path, channels):
    images = _batch(6, channels)
    bare = _pixels(viz.save_grid(images, tmp_path / "bare.png", nrow=3, scale=4))
    path = viz.save_grid(
        images, tmp_path / "labelled.png", nrow=3, scale=4,
        row_labels=["a long class name", "dress"], title="model · ddim, 10 steps, seed 0",
    )
    labelled = _pixels(path)
    top = labelled.shape[0] - bare.shape[0]
    left = labelled.shape[1] - bare.shape[1]
    assert top > 0 and left > 0  # a band above for the title, one left for the row labels
    assert np.array_equal(labelled[top:, left:], bare)  # the images themselves untouched
    assert labelled.ndim == bare.ndim  # grey stays grey, RGB stays RGB
    # The title is written: the band above is not blank.
    assert (labelled[:top] < 128).any()


def test_every_row_label_is_written_beside_its_row(tmp_path):
    images = _batch(9, side=12)
    labels = ["first", "second", "third"]
    labelled = _pixels(viz.save_grid(images, tmp_path / "l.png", nrow=3, scale=3,
                                     row_labels=labels))
    bare = _pixels(viz.save_grid(images, tmp_path / "b.png", nrow=3, scale=3))
    left = labelled.shape[1] - bare.shape[1]
    assert labelled.shape[0] == bare.shape[0]  # no title: no band above
    band = labelled[:, :left]
    for top, bottom in viz._row_spans(9, 3, 12, 2, 3):
        assert (band[top:bottom] < 128).any(), (top, bottom)  # dark text on white
    # Nothing is written between the rows (the outer padding above the first row).
    assert (band[:2 * 3] == 255).all()


def test_row_labels_must_match_the_rows(tmp_path):
    with pytest.raises(ValueError, match="2 row labels for a grid of 3 rows"):
        viz.save_grid(_batch(9), tmp_path / "x.png", nrow=3, row_labels=["a", "b"])


def test_long_labels_are_cut_and_titles_wrapped(tmp_path):
    images = _batch(2)
    path = viz.save_grid(
        images, tmp_path / "x.png", nrow=2, scale=2,
        row_labels=["a very long prompt " * 10], title="a title of many words " * 5,
    )
    bare = _pixels(viz.save_grid(images, tmp_path / "b.png", nrow=2, scale=2))
    labelled = _pixels(path)
    # A long label is cut, not allowed to make the picture ever wider; the title wraps to it.
    widest = max(bare.shape[1] + viz.MAX_ROW_LABEL_PX + 2 * viz.LABEL_GAP, viz.MIN_TITLE_PX)
    assert labelled.shape[1] <= widest
    assert labelled.shape[0] - bare.shape[0] > 3 * 11  # several lines of title


def test_sampling_title_says_how_to_draw_it_again():
    assert viz.sampling_title("fashion-mnist-cond", "dpmpp_2m", 20, 0, 2.0) == (
        "fashion-mnist-cond · dpmpp_2m, 20 steps, guidance 2, seed 0"
    )
    assert viz.sampling_title("run", "ddim", 5, 3, None, asked="class Bag", step=1200) == (
        "run · step 1,200 · class Bag · ddim, 5 steps, seed 3"
    )
    assert viz.sampling_title("run", "dpmpp_2m_sde", 13, 0, autoguidance=2.0,
                              interval=(0.09, 12.0)) == (
        "run · dpmpp_2m_sde, 13 steps, autoguidance 2 at noise levels 0.09 to 12, seed 0"
    )
    assert viz.sampling_title("fashion-text", "dpmpp_2m", 20, 0, 3.0, asked="'a coat'",
                              negative="'a dress'") == (
        "fashion-text · 'a coat' · dpmpp_2m, 20 steps, guidance 3 away from 'a dress', seed 0"
    )
    assert viz.sampling_title("run", "dpmpp_2m", 13, 0, sigma_max=40.0, rho=12.0) == (
        "run · dpmpp_2m, 13 steps (Karras grid from sigma 40, rho 12), seed 0"
    )


# ----------------------------------------------------------------------------- GIFs


def test_frame_recorder_labels_each_frame_with_its_step_and_t():
    rec = viz.FrameRecorder(every=2)
    for i, t in enumerate([999.0, 500.0, 0.5]):
        rec({"x": torch.zeros(1, 1, 2, 2), "i": i, "t": t, "total": 3})
    frames = rec.finish()
    assert len(frames) == len(rec.labels) == 2
    assert rec.labels == ["step 1/3, t = 999", "step 3/3, t = 0.5"]
    ode = viz.step_label({"i": 6, "t": 0.25, "total": None, "nfe": 7}, key="denoised")
    assert ode == "evaluation 7, t = 0.25, predicted x0"


def test_gif_frames_carry_their_own_label(tmp_path):
    frames = [_batch(4, seed=s) for s in range(3)]
    labels = ["step 1/3, t = 999", "step 2/3, t = 500", "final sample"]
    path = viz.save_gif(frames, tmp_path / "r.gif", nrow=2, scale=3, frame_labels=labels,
                        row_labels=["x", "y"], title="a model")
    bare = viz.make_grid(frames[0], nrow=2)[:, :, 0].repeat(3, 0).repeat(3, 1)
    with Image.open(path) as im:
        shown = [np.asarray(f.convert("L")).copy() for f in ImageSequence.Iterator(im)]
    assert len(shown) == 3
    top = shown[0].shape[0] - bare.shape[0]
    left = shown[0].shape[1] - bare.shape[1]
    assert top > 0 and left > 0
    # The band above differs between the first and the last frame: each says its own step.
    assert not np.array_equal(shown[0][:top], shown[-1][:top])
    # ... and the images are the frames' grids (within the GIF palette's rounding).
    assert np.abs(shown[0][top:, left:].astype(int) - bare).max() <= 1
    with pytest.raises(ValueError, match="2 frame labels for 3 frames"):
        viz.save_gif(frames, tmp_path / "bad.gif", frame_labels=labels[:2])


def test_gif_frame_labels_follow_the_thinning(tmp_path):
    frames = [torch.full((1, 1, 4, 4), i, dtype=torch.uint8) for i in range(100)]
    labels = [f"step {i + 1}/100" for i in range(100)]
    path = viz.save_gif(frames, tmp_path / "t.gif", max_frames=10, frame_labels=labels)
    unlabelled = viz.save_gif(frames, tmp_path / "u.gif", max_frames=10)
    with Image.open(path) as a, Image.open(unlabelled) as b:
        assert a.n_frames == b.n_frames == 10
        assert a.size[1] > b.size[1] and a.size[0] == b.size[0]  # a band above, no more


# ----------------------------------------------------------------------------- loss curve


def test_plot_loss_draws_a_single_logged_step(tmp_path):
    rows = [{"step": 1, "loss": 0.93, "lr": 1e-4}]
    path = viz.plot_loss(rows, tmp_path / "loss.png")
    assert path.stat().st_size > 0
    fig = viz.loss_figure(rows)
    ax = fig.axes[0]
    (line,) = ax.get_lines()
    assert line.get_marker() == "o"  # one point is a visible marker, not an empty line
    assert ax.get_yscale() == "linear"
    lo, hi = ax.get_xlim()
    assert lo < 1 < hi


def test_plot_loss_log_axis_only_across_decades():
    steps = range(1, 400, 10)
    decades = [{"step": s, "loss": 2.0 * 0.98**s} for s in steps]  # 2 down to ~8e-4
    narrow = [{"step": s, "loss": 0.05 + 0.01 * (s % 7) / 7} for s in steps]
    assert viz.loss_figure(decades).axes[0].get_yscale() == "log"
    assert viz.loss_figure(narrow).axes[0].get_yscale() == "linear"
    # Zero or negative values cannot go on a log axis, whatever their span.
    assert viz.loss_figure([{"loss": 0.0}, {"loss": 5.0}]).axes[0].get_yscale() == "linear"


def test_plot_loss_legend_is_outside_the_axes():
    rows = [{"step": s, "loss": 1.0 / s, "lr": 1e-3} for s in range(1, 200)]
    fig = viz.loss_figure(rows)
    fig.canvas.draw()
    (legend,) = fig.legends  # a figure legend, not one inside the axes
    below = legend.get_window_extent().y1
    assert below <= fig.axes[0].get_window_extent().y0  # entirely below the plot area
    assert fig.axes[0].get_legend() is None


# ----------------------------------------------------------------------------- rows of classes


def test_class_all_rounds_up_to_whole_rows(tmp_path, capsys):
    out = tmp_path / "all.npz"
    assert main(["sample", "mnist-digits-cond", "--class", "all", "-n", "64", "--steps", "1",
                 "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "difflab: --class all: 7 per class x 10 classes = 70 samples (asked for 64)" in printed
    data = np.load(out)
    assert data["images"].shape[0] == 70
    assert np.array_equal(data["labels"], np.repeat(np.arange(10), 7))


def test_class_all_grid_has_a_label_per_row(tmp_path, capsys):
    out, mixed = tmp_path / "all.png", tmp_path / "mixed.png"
    common = ["--class", "all", "-n", "10", "--steps", "1", "--quiet", "--scale", "1"]
    assert main(["sample", "mnist-digits-cond", *common, "--out", str(out)]) == 0
    assert "per class" not in capsys.readouterr().out  # 10 = 1 x 10: nothing to say
    grid_h, grid_w = 10 * 30 + 2, 1 * 30 + 2  # ten rows of one 28x28 image, padding 2
    labelled = _pixels(out)
    top, left = labelled.shape[0] - grid_h, labelled.shape[1] - grid_w
    assert top > 0 and left > 0  # the title above, the class names to the left
    for y0, y1 in viz._row_spans(10, 1, 28, 2, 1):
        assert (labelled[top + y0 : top + y1, :left] < 128).any(), y0
    # --nrow other than one class per row: rows mix classes, so no row labels (title only).
    assert main(["sample", "mnist-digits-cond", *common, "--nrow", "5", "--out", str(mixed)]) == 0
    m = _pixels(mixed)
    assert m.shape[1] == max(5 * 30 + 2, viz.MIN_TITLE_PX)  # widened for the title alone
    top, left = m.shape[0] - (2 * 30 + 2), m.shape[1] - (5 * 30 + 2)
    assert (m[top:, :left] == 255).all()  # nothing written beside the rows


def _args(**kw):
    base = dict(n=20, classes=None, prompt=None, negative_prompt=None)
    return SimpleNamespace(**{**base, **kw})


def test_several_prompts_get_a_row_each(capsys):
    gen = SimpleNamespace(num_classes=None, class_names=None)
    args = _args(prompt=["a coat", "a bag", "a boot"], negative_prompt=["x", "y", "z"])
    classes, labels = sample_rows(args, gen)
    assert classes is None and labels == ["a coat", "a bag", "a boot"]
    assert (args.n, args.per_row) == (21, 7)
    assert args.prompt == ["a coat"] * 7 + ["a bag"] * 7 + ["a boot"] * 7
    assert args.negative_prompt == ["x"] * 7 + ["y"] * 7 + ["z"] * 7  # paired with its prompt
    assert "--prompt: 7 per prompt x 3 prompts = 21 samples (asked for 20)" in (
        capsys.readouterr().out
    )
    one = _args(prompt=["a coat"])
    assert sample_rows(one, gen) == (None, None) and one.n == 20 and one.per_row is None


def test_a_title_over_one_small_sample_stays_a_line_or_two(tmp_path):
    """One 28x28 sample at scale 2 is 64 px wide: its title gets a wider band, not ten
    lines of a word each."""
    path = viz.save_grid(_batch(1, 1), tmp_path / "one.png", nrow=8, scale=2,
                         title="fashion-mnist-cond · class Shirt · dpmpp_2m, 20 steps, "
                         "guidance 2, seed 0")
    picture = _pixels(path)
    assert picture.shape[1] == viz.MIN_TITLE_PX and picture.shape[0] < 150


def test_sample_bare_writes_the_sample_itself_for_img2img(tmp_path, capsys):
    from PIL import Image

    from difflab.cli import main

    out = tmp_path / "shirt.png"
    assert main(["sample", "fashion-mnist-cond", "--class", "shirt", "-n", "1", "--steps", "2",
                 "--bare", "--scale", "1", "--out", str(out)]) == 0
    assert Image.open(out).size == (28, 28)
    assert main(["img2img", "fashion-text", str(out), "--prompt", "a dress", "-n", "1",
                 "--steps", "2", "--out", str(tmp_path / "dress.png")]) == 0
