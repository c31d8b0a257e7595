"""Tests for difflab.viz: fixed pixel mapping, grids, PNG/GIF files, figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from difflab import viz
from difflab.diffusion.process import DiscreteProcess, VEProcess, VPProcess

# ----------------------------------------------------------------------------- to_uint8


def test_to_uint8_endpoints_and_rounding():
    x = torch.tensor([-1.0, 0.0, 1.0, 0.9, -0.9])
    # 0 -> 127.5 rounds half up to 128 (documented); 0.9 -> 242.25 -> 242; -0.9 -> 12.75 -> 13
    assert viz.to_uint8(x).tolist() == [0, 128, 255, 242, 13]
    assert viz.to_uint8(x).dtype == torch.uint8


def test_to_uint8_clamps_out_of_range():
    x = torch.tensor([-5.0, -1.0001, 1.0001, 7.0, float("inf"), float("-inf")])
    assert viz.to_uint8(x).tolist() == [0, 0, 255, 255, 255, 0]


def test_to_uint8_does_not_rescale_per_image():
    # A nearly white, constant image must stay light grey: min-max rescaling would give 0 or 255.
    img = torch.full((2, 1, 8, 8), 0.9)
    out = viz.to_uint8(img)
    assert out.unique().tolist() == [242]
    # A dim image with a narrow range keeps its narrow range.
    dim = torch.linspace(-0.9, -0.7, 64).reshape(1, 1, 8, 8)
    out = viz.to_uint8(dim)
    assert out.min().item() == 13 and out.max().item() == 38


def test_to_uint8_other_dtypes_and_errors():
    assert viz.to_uint8(torch.tensor([0.5], dtype=torch.bfloat16)).tolist() == [191]
    u = torch.tensor([3, 200], dtype=torch.uint8)
    assert viz.to_uint8(u) is u
    with pytest.raises(ValueError, match="NaN"):
        viz.to_uint8(torch.tensor([0.0, float("nan")]))
    with pytest.raises(TypeError):
        viz.to_uint8(torch.tensor([1, 2]))


# ----------------------------------------------------------------------------- grids


def test_make_grid_shape_and_layout():
    imgs = torch.zeros(10, 3, 5, 7)  # value 0 -> pixel 128
    grid = viz.make_grid(imgs, nrow=4, padding=2, pad_value=9)
    # 3 rows of up to 4 images: H' = 3 * (5 + 2) + 2, W' = 4 * (7 + 2) + 2
    assert grid.shape == (23, 38, 3) and grid.dtype == np.uint8
    assert (grid[2:7, 2:9] == 128).all()  # first cell
    assert (grid[:2] == 9).all() and (grid[:, :2] == 9).all()  # outer padding
    assert (grid[16:21, 11:18] == 128).all()  # image 9: row 2, column 1
    assert (grid[16:21, 20:27] == 9).all()  # empty slot after the last image


def test_make_grid_places_each_image_in_order():
    imgs = torch.arange(6, dtype=torch.uint8).reshape(6, 1, 1, 1).expand(6, 1, 3, 3) * 40
    grid = viz.make_grid(imgs, nrow=3, padding=1, pad_value=255)
    assert grid.shape == (2 * 4 + 1, 3 * 4 + 1, 1)
    cells = [grid[1 + r * 4, 1 + c * 4, 0] for r in range(2) for c in range(3)]
    assert cells == [0, 40, 80, 120, 160, 200]


def test_make_grid_fewer_images_than_nrow_and_bad_input():
    assert viz.make_grid(torch.zeros(2, 1, 4, 4), nrow=8, padding=0).shape == (4, 8, 1)
    with pytest.raises(ValueError, match="N, C, H, W"):
        viz.make_grid(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="nrow"):
        viz.make_grid(torch.zeros(1, 1, 4, 4), nrow=0)


def test_save_grid_grey_png_roundtrip(tmp_path):
    imgs = torch.full((3, 1, 28, 28), 0.9)
    imgs[1] = -1.0
    path = viz.save_grid(imgs, tmp_path / "sub" / "grid.png", nrow=2, scale=3)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "L"
        w, h = 2 * 30 + 2, 2 * 30 + 2
        assert im.size == (3 * w, 3 * h)
        a = np.asarray(im)
    assert a[3 * 2, 3 * 2] == 242  # first image, top-left pixel, upscaled
    assert a[3 * 2 + 40, 3 * (2 + 30) + 40] == 0  # second image is black
    assert a[0, 0] == 255  # white padding
    assert set(np.unique(a)) <= {0, 242, 255}  # nearest upscale invents no values


def test_save_grid_rgb_png(tmp_path):
    imgs = torch.zeros(4, 3, 6, 6)
    imgs[:, 0] = 1.0
    imgs[:, 2] = -1.0
    path = viz.save_grid(imgs, tmp_path / "rgb.png", nrow=4, padding=0)
    with Image.open(path) as im:
        assert im.mode == "RGB" and im.size == (24, 6)
        assert im.getpixel((3, 3)) == (255, 128, 0)


def test_save_grid_rejects_bad_channels_and_scale(tmp_path):
    with pytest.raises(ValueError, match="channel"):
        viz.save_grid(torch.zeros(1, 2, 4, 4), tmp_path / "x.png")
    with pytest.raises(ValueError, match="scale"):
        viz.save_grid(torch.zeros(1, 1, 4, 4), tmp_path / "x.png", scale=0)
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


# ----------------------------------------------------------------------------- GIFs


@pytest.mark.parametrize(
    "n_total,n_frames",
    [(1000, 60), (1000, 7), (61, 60), (10, 60), (1, 5), (50, 1), (2, 2), (100, 99)],
)
def test_select_frames_properties(n_total, n_frames):
    idx = viz.select_frames(n_total, n_frames)
    assert idx[-1] == n_total - 1
    assert idx == sorted(set(idx))
    assert len(idx) == min(n_total, n_frames)
    assert all(0 <= i < n_total for i in idx)


def test_select_frames_denser_near_end():
    idx = np.array(viz.select_frames(1000, 60))
    assert idx[0] == 0
    gaps = np.diff(idx)
    assert gaps[:10].mean() > 4 * gaps[-10:].mean()
    assert (idx >= 800).sum() > 60 * 0.3  # a good share of frames in the last 20 % of steps
    with pytest.raises(ValueError):
        viz.select_frames(0)


def test_save_gif_frames_and_hold(tmp_path):
    g = torch.Generator().manual_seed(0)
    frames = [torch.rand(5, 1, 8, 8, generator=g) * 2 - 1 for _ in range(7)]
    path = viz.save_gif(
        frames, tmp_path / "rev.gif", nrow=3, duration_ms=40, hold_last_ms=1500, scale=2
    )
    with Image.open(path) as im:
        assert im.format == "GIF"
        assert im.size == (2 * (3 * 10 + 2), 2 * (2 * 10 + 2))
        durations, pixels = [], []
        for frame in ImageSequence.Iterator(im):
            durations.append(frame.info["duration"])
            pixels.append(np.asarray(frame.convert("L")))
    assert len(durations) == 7
    assert durations[:-1] == [40] * 6 and durations[-1] == 1500
    # grey levels survive the palette: the last frame shows the last batch as to_uint8 does
    expected = viz.make_grid(frames[-1], nrow=3)[:, :, 0].repeat(2, 0).repeat(2, 1)
    assert np.abs(pixels[-1].astype(int) - expected).max() <= 1


def test_save_gif_thins_long_lists(tmp_path):
    frames = [torch.full((2, 1, 4, 4), i, dtype=torch.uint8) for i in range(200)]
    path = viz.save_gif(frames, tmp_path / "long.gif", max_frames=25)
    with Image.open(path) as im:
        assert im.n_frames == 25
        im.seek(im.n_frames - 1)
        assert np.asarray(im.convert("L"))[3, 3] == 199  # the final sample is the last frame
        assert im.info["duration"] == 1500
    with pytest.raises(ValueError, match="20 ms"):
        viz.save_gif(frames[:3], tmp_path / "fast.gif", duration_ms=5)


def test_frame_recorder_keeps_every_nth_and_last():
    rec = viz.FrameRecorder(every=4)
    for i in range(10):
        rec({"x": torch.full((1, 1, 2, 2), i / 10), "i": i})
    frames = rec.finish()
    assert [f.dtype for f in frames] == [torch.uint8] * 4
    assert [int(f[0, 0, 0, 0]) for f in frames] == [
        int(viz.to_uint8(torch.tensor(i / 10))) for i in (0, 4, 8, 9)
    ]


# ----------------------------------------------------------------------------- figures


def _png(path):
    assert path.exists() and path.stat().st_size > 5_000
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_forward_process_grid_discrete(tmp_path):
    process = DiscreteProcess.from_schedule("linear", 1000)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 1, 16, 16, generator=g) * 2 - 1
    out = viz.forward_process_grid(process, images, tmp_path / "fwd.png", generator=g)
    a = _png(out)
    assert a.shape[0] > 300 and a.shape[1] > 500  # 3 rows x 5 columns of panels


def test_forward_process_grid_shows_clean_image_unscaled(tmp_path):
    # Fraction 0 is x_0 itself; a constant 0.0 image must be drawn as grey 128 (imshow would
    # min-max normalise it to black without pinned vmin/vmax).
    process = DiscreteProcess.from_schedule("cosine", 100)
    out = viz.forward_process_grid(
        process, torch.zeros(1, 1, 32, 32), tmp_path / "f0.png", fractions=(0.0,)
    )
    a = _png(out)
    grey = (a == 128).all(axis=2).sum()
    assert grey > 0.2 * a.shape[0] * a.shape[1]


def test_forward_process_grid_noises_latents_and_shows_them_decoded(tmp_path):
    """A latent model's x_t lives in latent space: noise (4, 4, 4) latents with the process,
    then decode each column; the clean column is the decoded x_0 exactly."""
    process = DiscreteProcess.from_schedule("cosine", 100)
    latents = torch.zeros(2, 4, 4, 4)
    seen = []

    def decode(z):
        seen.append(z.clone())
        return torch.nn.functional.interpolate(z[:, :1], scale_factor=4)  # (N, 1, 16, 16)

    out = viz.forward_process_grid(process, latents, tmp_path / "lat.png", decode=decode,
                                   fractions=(0.0, 1.0), generator=torch.Generator())
    assert [tuple(z.shape) for z in seen] == [(2, 4, 4, 4)] * 2
    assert torch.equal(seen[0], latents) and seen[1].std() > 0.5  # x_0, then nearly noise
    a = _png(out)
    grey = (a == 128).all(axis=2).sum()  # the decoded clean zeros, drawn as mid-grey
    assert grey > 0.1 * a.shape[0] * a.shape[1]


def test_forward_process_grid_continuous_and_rgb(tmp_path):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 12, 12, generator=g) * 2 - 1
    for i, process in enumerate((VPProcess(), VEProcess(sigma=25.0))):
        _png(viz.forward_process_grid(process, images, tmp_path / f"c{i}.png", generator=g))
    with pytest.raises(ValueError, match="fractions"):
        viz.forward_process_grid(VPProcess(), images, tmp_path / "bad.png", fractions=(1.5,))


def test_plot_schedules(tmp_path):
    a = _png(viz.plot_schedules(tmp_path / "sched.png", T=200))
    assert a.shape[1] > 800
    with pytest.raises(ValueError, match="allowed"):
        viz.plot_schedules(tmp_path / "bad.png", names=["nope"])


def test_plot_loss_from_jsonl_with_lr(tmp_path):
    rng = np.random.default_rng(0)
    metrics = tmp_path / "metrics.jsonl"
    with metrics.open("w") as f:
        for step in range(0, 2000, 10):
            row = {
                "step": step,
                "loss": float(0.05 + np.exp(-step / 300) + 0.02 * rng.random()),
                "lr": 2e-3 * min(1.0, step / 200),
            }
            f.write(json.dumps(row) + "\n")
        f.write(json.dumps({"step": 2000, "fid": 12.3}) + "\n")  # an eval row without loss
        f.write('{"step": 2010, "lo')  # a line still being written
    _png(viz.plot_loss(metrics, tmp_path / "loss.png"))


def test_plot_loss_from_list_and_errors(tmp_path):
    rows = [{"loss": v} for v in (1.0, 0.5, float("nan"), 0.25, 0.2)]
    _png(viz.plot_loss(rows, tmp_path / "loss.png"))
    with pytest.raises(ValueError, match="keys seen"):
        viz.plot_loss([{"step": 1, "lr": 0.1}], tmp_path / "none.png")


def test_damaged_metrics_rows_are_skipped_with_one_warning(tmp_path):
    """A damaged row mid-file (not JSON, not an object, a logged number that is not one, bytes
    that are not UTF-8) costs that row, counted in one warning, not the run's report."""
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"step": 1, "loss": 1}\nnot json\n[1]\n{"step": 2, "loss": null}\n'
                    b'{"step": "3", "loss": 1}\n{"step": 4, "loss": 0.5}\n\xff\xfe\n'
                    b'{"step": 5, "loss": 0.25}\n{"step": 6, "lo')
    with pytest.warns(UserWarning, match=r"bad.jsonl: skipped 5 damaged row\(s\) \(line 2, 3, 4, "
                      r"5, 7\)"):
        rows = viz.read_metrics(bad)
    assert [r["step"] for r in rows] == [1, 4, 5]
    with pytest.warns(UserWarning):
        _png(viz.plot_loss(bad, tmp_path / "bad.png"))


def test_ema_is_bias_corrected():
    out = viz._ema(np.array([2.0, 2.0, 2.0]), 0.9)
    np.testing.assert_allclose(out, [2.0, 2.0, 2.0])


def test_plot_points_2d(tmp_path):
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(500, 2, generator=g)
    samples = torch.randn(300, 2, generator=g)
    samples[0] = torch.tensor([1e6, 1e6])
    samples[1] = float("nan")
    _png(viz.plot_points_2d(samples, tmp_path / "pts.png", reference=ref, title="toy"))
    _png(viz.plot_points_2d(samples.numpy()[2:], tmp_path / "pts2.png"))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        viz.plot_points_2d(torch.zeros(5, 3), tmp_path / "bad.png")


def test_every_picture_carries_difflabs_mark_and_a_users_does_not(tmp_path):
    """What lets a later command replace only difflab's own files (difflab.ownership)."""
    from difflab.ownership import written_by_difflab
    from difflab.toy1d import plot_toy1d

    frames = [torch.zeros(2, 1, 8, 8)] * 3
    written = [
        viz.save_grid(torch.zeros(2, 1, 8, 8), tmp_path / "grid.png"),
        viz.save_gif(frames, tmp_path / "reverse.gif"),
        viz.plot_schedules(tmp_path / "schedules.png", T=50),
        plot_toy1d(tmp_path / "toy1d.png"),
    ]
    assert all(written_by_difflab(p) for p in written)
    Image.new("L", (8, 8)).save(tmp_path / "users.png")
    Image.new("L", (8, 8)).save(tmp_path / "users.gif")
    (tmp_path / "text.png").write_text("not a picture")
    for name in ("users.png", "users.gif", "text.png", "missing.png"):
        assert not written_by_difflab(tmp_path / name)
