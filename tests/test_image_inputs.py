"""Generator.img2img / inpaint take images in every usual layout and dtype, and each form of one
picture gives bit-identical results; bad input is refused with the real mismatch named.

Shipped `fashion-text` (latent, 28x28 grey) and `fashion-mnist` (pixel) at n = 1-3, 2-3 steps.
"""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.metrics.features import metric_split
from difflab.pipeline import Generator, as_image_tensor, as_mask_tensor

SHAPE = (1, 28, 28)
EDIT = dict(strength=0.5, steps=3, seed=0)


@pytest.fixture(scope="module")
def text_gen():
    return Generator.from_checkpoint("fashion-text", device="cpu")


@pytest.fixture(scope="module")
def pixel_gen():
    return Generator.from_checkpoint("fashion-mnist", device="cpu")


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    """A real test image, uint8 (28, 28): the canonical form is (1, 1, 28, 28) uint8."""
    return metric_split("fashion_mnist", "test").images[0, 0].numpy()


def forms(u: np.ndarray, tmp: Path) -> dict:
    """Every accepted form of the grey picture u (28, 28) uint8."""
    rgb = np.stack([u] * 3, axis=-1)  # grey as RGB: its luma is u again, exactly
    Image.fromarray(u).save(tmp / "grey.png")
    Image.fromarray(rgb).save(tmp / "rgb.png")
    t = torch.from_numpy(u)
    return {
        "numpy (H, W) uint8": u,
        "numpy (1, H, W)": u[None],
        "numpy (H, W, 1)": u[:, :, None],
        "numpy (1, 1, H, W)": u[None, None],
        "numpy (1, H, W, 1)": u[None, :, :, None],
        "numpy (H, W, 3) RGB": rgb,
        "numpy (1, 3, H, W) RGB": rgb.transpose(2, 0, 1)[None],
        "numpy int64": u.astype(np.int64),
        "numpy float64 0..1": u / 255.0,
        "numpy float32 0..1": (u / 255.0).astype(np.float32),
        "torch (H, W) uint8": t,
        "torch (1, H, W) uint8": t[None],
        "torch float32 0..1": t.float() / 255,
        "torch float32 -1..1": t.float() / 127.5 - 1,
        "torch float64 -1..1 (H, W, 1)": (t.double() / 127.5 - 1)[:, :, None],
        "PIL L": Image.fromarray(u),
        "PIL RGB": Image.fromarray(rgb),
        "path grey PNG": tmp / "grey.png",
        "path RGB PNG (str)": str(tmp / "rgb.png"),
        "list [PIL]": [Image.fromarray(u)],
    }


def test_every_form_converts_to_the_same_pixels(picture, tmp_path):
    canonical = torch.from_numpy(picture)[None, None]
    for name, form in forms(picture, tmp_path).items():
        x = as_image_tensor(form, SHAPE)
        assert x.dtype == torch.uint8 and x.shape == (1, 1, 28, 28), name
        assert torch.equal(x, canonical), name


def test_every_form_gives_bit_identical_img2img(text_gen, picture, tmp_path):
    canonical = text_gen.img2img(torch.from_numpy(picture)[None, None], "a dress", **EDIT)
    assert canonical.shape == (1, 1, 28, 28)
    for name, form in forms(picture, tmp_path).items():
        assert torch.equal(text_gen.img2img(form, "a dress", **EDIT), canonical), name


def test_batches_in_every_layout(text_gen, picture):
    data = metric_split("fashion_mnist", "test").images[:3]  # (3, 1, 28, 28)
    canonical = text_gen.img2img(data, "a bag", **EDIT)
    assert canonical.shape == (3, 1, 28, 28)
    grey = data[:, 0].numpy()  # (3, 28, 28): three grey images for a grey model
    for name, form in {
        "(N, H, W) numpy": grey,
        "(N, H, W, 1) torch": data.permute(0, 2, 3, 1),
        "(N, H, W) float 0..1": grey / 255.0,
        "list of (H, W)": list(grey),
        "(N, H, W, 3) RGB": np.repeat(grey[..., None], 3, axis=-1),
    }.items():
        assert torch.equal(text_gen.img2img(form, "a bag", **EDIT), canonical), name
    # One image drawn n times = the batch of it repeated (sample i keeps its own noise).
    one = text_gen.img2img(picture, "a bag", n=2, **EDIT)
    same = text_gen.img2img(np.stack([picture] * 2), "a bag", **EDIT)
    assert torch.equal(one, same)


def test_mask_forms_and_pixel_model_inpainting(pixel_gen, picture, tmp_path):
    bool_mask = np.zeros((28, 28), dtype=bool)
    bool_mask[:, 14:] = True
    Image.fromarray(bool_mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    canonical = pixel_gen.inpaint(picture, bool_mask, n=2, steps=2, seed=0)
    assert canonical.shape == (2, 1, 28, 28)
    keep = ~torch.from_numpy(bool_mask)
    assert torch.equal(canonical[:, 0][:, keep], torch.from_numpy(picture)[keep].expand(2, -1))
    for name, mask in {
        "0/1 uint8": bool_mask.astype(np.uint8),
        "0/255 uint8": bool_mask.astype(np.uint8) * 255,
        "float 0/1": bool_mask.astype(np.float32),
        "torch bool (1, 1, H, W)": torch.from_numpy(bool_mask)[None, None],
        "(H, W, 1)": bool_mask[:, :, None],
        "PIL": Image.fromarray(bool_mask.astype(np.uint8) * 255),
        "path": tmp_path / "mask.png",
    }.items():
        out = pixel_gen.inpaint(Image.fromarray(picture), mask, n=2, steps=2, seed=0)
        assert torch.equal(out, canonical), name


def test_latent_inpainting_with_a_mask_per_image(text_gen):
    data = metric_split("fashion_mnist", "test").images[:2]
    masks = np.zeros((2, 28, 28), dtype=np.uint8)
    masks[0, :14], masks[1, :, :14] = 255, 255
    out = text_gen.inpaint(data, masks, "a sandal", steps=2, seed=0, batch_size=1)
    assert out.shape == (2, 1, 28, 28)
    for i in range(2):
        keep = torch.from_numpy(masks[i] == 0)
        assert torch.equal(out[i, 0][keep], data[i, 0][keep])


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((32, 32), np.uint8), "image is 32x32 but the model draws 28x28; resize it"),
        (np.zeros((2, 32, 32), np.uint8), r"image batch \(2 images\) is 32x32 but the model"),
        (np.zeros((28, 28, 4), np.uint8), r"image has 4 channels \(RGBA\?\)"),
        (np.zeros((2, 28, 28, 2), np.uint8), r"2 channels \(grey \+ alpha\?\)"),
        (np.full((28, 28), 255.0), r"floats in \[255, 255\].*cast to uint8"),
        (np.full((28, 28), 1.5), r"float images must be in \[0, 1\]"),
        (np.full((28, 28), np.nan, np.float32), "NaN"),
        (np.zeros((28, 28), bool), "dtype bool"),
        (np.full((28, 28), 300, np.int32), "holds 300..300; pixels are 0..255"),
        (np.zeros((0, 28, 28), np.uint8), "empty"),
        (np.zeros((2, 2, 2, 2, 2), np.uint8), "has shape"),
    ],
)
def test_bad_images_name_the_mismatch(bad, message):
    with pytest.raises(ValueError, match=message):
        as_image_tensor(bad, SHAPE)


def test_bad_masks_and_counts_name_the_mismatch(text_gen, picture, tmp_path):
    with pytest.raises(ValueError, match="mask is 27x28, image 28x28"):
        as_mask_tensor(np.zeros((28, 27), bool), SHAPE)
    with pytest.raises(ValueError, match="3 channels"):
        as_mask_tensor(np.zeros((28, 28, 3), np.uint8), SHAPE)
    with pytest.raises(ValueError, match="3 masks for 2 images"):
        text_gen.inpaint(np.stack([picture] * 2), np.ones((3, 28, 28), bool), "a bag", steps=2)
    with pytest.raises(ValueError, match="n=3 but 2 images were given"):
        text_gen.img2img(np.stack([picture] * 2), "a bag", n=3, **EDIT)
    with pytest.raises(ValueError, match="cannot read image"):
        text_gen.img2img(tmp_path / "missing.png", "a bag", **EDIT)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read mask"):
        text_gen.inpaint(picture, tmp_path / "text.png", "a bag", steps=2)


def test_cli_and_api_share_the_measured_default_strength(picture, tmp_path, capsys):
    import inspect

    from difflab import cli, pipeline

    default = pipeline.DEFAULT_IMG2IMG_STRENGTH
    assert inspect.signature(Generator.img2img).parameters["strength"].default == default
    Image.fromarray(picture).save(tmp_path / "in.png")
    args = ["img2img", "fashion-text", str(tmp_path / "in.png"), "--prompt", "a dress",
            "--steps", "2", "-n", "1", "--out", str(tmp_path / "out.png")]  # fmt: skip
    assert cli.main(args) == 0
    assert f"strength {default:g} (the default" in capsys.readouterr().out
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "big.png")
    args[2] = str(tmp_path / "big.png")
    assert cli.main(args) == 2
    assert "image is 32x32 but the model draws 28x28" in capsys.readouterr().err


def test_cli_refuses_a_wrong_size_before_the_model_loads(picture, tmp_path, capsys):
    """The size is read from the checkpoint's config.json: a checkpoint whose weights are
    broken still answers with the picture's size, so nothing was loaded before the check."""
    import shutil

    from difflab import cli
    from difflab.checkpoints.names import resolve_checkpoint

    broken = tmp_path / "broken"
    shutil.copytree(resolve_checkpoint("fashion-text"), broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "big.png")
    Image.fromarray(picture).save(tmp_path / "in.png")
    for args, told in (
        (["img2img", str(broken), str(tmp_path / "big.png")],
         "image is 32x32 but the model draws 28x28"),
        (["inpaint", str(broken), str(tmp_path / "in.png"), str(tmp_path / "big.png")],
         "mask is 32x32, image 28x28"),
    ):
        assert cli.main([*args, "--prompt", "a dress", "--out", str(tmp_path / "o.png")]) == 2
        err = capsys.readouterr().err
        assert told in err and "Traceback" not in err
    # With a right-size picture the broken weights are what is told.
    assert cli.main(["img2img", str(broken), str(tmp_path / "in.png"), "--prompt", "a dress",
                     "--out", str(tmp_path / "o.png")]) == 2
    assert "model.safetensors" in capsys.readouterr().err


def test_the_early_size_check_reads_config_json_as_safely_as_a_load(tmp_path):
    """A config.json that is a FIFO would block a plain read forever: the early check reads it
    as a load does (regular files only), so the command ends with the load's one line."""
    import os
    import subprocess
    import sys

    folder = tmp_path / "odd"
    folder.mkdir()
    os.mkfifo(folder / "config.json")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "big.png")
    p = subprocess.run([sys.executable, "-m", "difflab.cli", "img2img", str(folder),
                        str(tmp_path / "big.png"), "--prompt", "a dress",
                        "--out", str(tmp_path / "o.png")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]


def test_cli_resize_fits_a_picture_and_its_mask_as_training_pictures_are(picture, tmp_path,
                                                                          capsys):
    """A photo of another size is refused with the way out; --resize fits it (and the mask,
    by nearest neighbour) to the model's size exactly as a training picture is cut."""
    from difflab import cli
    from difflab.data.transforms import pil_to_array

    big = np.kron(picture, np.ones((2, 2), np.uint8))[:, :50]  # 56x50, not square
    Image.fromarray(big).save(tmp_path / "photo.png")
    mask = np.zeros_like(big)
    mask[:, 25:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    base = ["--prompt", "a dress", "--steps", "2", "-n", "1", "--out", str(tmp_path / "o.png")]
    assert cli.main(["img2img", "fashion-text", str(tmp_path / "photo.png"), *base]) == 2
    assert "image is 50x56 but the model draws 28x28; add --resize" in capsys.readouterr().err
    assert cli.main(["img2img", "fashion-text", str(tmp_path / "photo.png"), "--resize",
                     *base]) == 0
    said = capsys.readouterr().out
    assert "--resize: image 50x56 -> 28x28 (shorter side resized, centre cropped)" in said
    assert "grey" not in said  # a grey picture for a grey model: nothing converted
    Image.fromarray(np.stack([big] * 3, -1)).save(tmp_path / "colour.png")
    assert cli.main(["img2img", "fashion-text", str(tmp_path / "colour.png"), "--resize",
                     *base]) == 0
    assert "difflab: image colour -> grey (the model's)" in capsys.readouterr().out
    # said without --resize too: a picture of the model's size is converted all the same
    Image.fromarray(np.stack([picture] * 3, -1)).save(tmp_path / "colour28.png")
    assert cli.main(["img2img", "fashion-text", str(tmp_path / "colour28.png"), *base]) == 0
    assert "difflab: image colour -> grey (the model's)" in capsys.readouterr().out
    assert cli.main(["inpaint", "fashion-text", str(tmp_path / "photo.png"),
                     str(tmp_path / "mask.png"), "--resize", *base]) == 0
    said = capsys.readouterr().out
    assert "--resize: mask 50x56 -> 28x28" in said
    # a mask of another size than its picture is refused, fitted or not
    Image.fromarray(mask[:, :40]).save(tmp_path / "narrow.png")
    assert cli.main(["inpaint", "fashion-text", str(tmp_path / "photo.png"),
                     str(tmp_path / "narrow.png"), "--resize", *base]) == 2
    assert "mask is 40x56, image 50x56; they must be the same size" in capsys.readouterr().err
    # the same cut as training (data.transforms.pil_to_array at the model's size), palette
    # pictures included, whose colours are converted before the resize
    from difflab.cli.edit import _fit_image

    Image.fromarray(big).convert("P").save(tmp_path / "palette.png")
    for name in ("photo.png", "palette.png"):
        with Image.open(tmp_path / name) as photo:
            assert np.array_equal(_fit_image(photo, (1, 28, 28)), pil_to_array(photo, 1, 28))


def test_a_transparent_picture_is_flattened_on_white_and_says_so(tmp_path):
    """A light cut-out on a transparent background (a product PNG) is flattened on white, as
    training pictures are, which makes it vanish for a model of light-on-black pictures: a
    warning says so; an RGBA picture that is fully opaque says nothing."""
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[8:20, 8:20] = 255  # an opaque white square; the rest transparent
    with pytest.warns(UserWarning, match="transparent pixels; they are flattened on white"):
        x = as_image_tensor(Image.fromarray(rgba, "RGBA"), (1, 28, 28))
    assert int(x.min()) == 255
    rgba[..., 3] = 255
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert int(as_image_tensor(Image.fromarray(rgba, "RGBA"), (1, 28, 28)).min()) == 0


def test_a_float_picture_in_zero_to_one_is_scaled_as_a_float_array_is(tmp_path):
    """A mode-F TIFF holding 0..1 reads as the float array of the same values does (0.86 ->
    219), not clamped to 0..255 as if it held pixels (0.86 -> 1)."""
    f = np.zeros((28, 28), np.float32)
    f[4:24, 7:21] = 0.86
    Image.fromarray(f, mode="F").save(tmp_path / "f.tiff")
    from_file = as_image_tensor(tmp_path / "f.tiff", (1, 28, 28))
    assert torch.equal(from_file, as_image_tensor(f, (1, 28, 28)))
    assert int(from_file.max()) == 219
    Image.fromarray(f * 255, mode="F").save(tmp_path / "g.tiff")  # 0..255 floats: as before
    assert torch.equal(as_image_tensor(tmp_path / "g.tiff", (1, 28, 28)), from_file)


def test_a_mask_redraws_what_is_at_least_half_white(tmp_path):
    """A JPEG mask's near-black noise keeps its pixels, a soft edge counts from its middle,
    and a mask with nothing half-way to white is refused (non-zero was the rule before, and
    a saved JPEG redrew pixels meant to be kept)."""
    clean = np.zeros((28, 28), dtype=bool)
    clean[:, 14:] = True
    noisy = np.where(clean, 252, 0).astype(np.uint8) + np.random.default_rng(0).integers(
        0, 4, (28, 28), dtype=np.uint8)
    Image.fromarray(noisy).save(tmp_path / "mask.jpg", quality=50)
    for mask in (noisy, tmp_path / "mask.jpg", Image.open(tmp_path / "mask.jpg")):
        assert torch.equal(as_mask_tensor(mask, SHAPE)[0, 0], torch.from_numpy(clean))
    soft = np.linspace(0, 1, 28, dtype=np.float32)[None].repeat(28, 0)  # a ramp to white
    assert as_mask_tensor(soft, SHAPE)[0, 0, 0].tolist() == (soft[0] >= 0.5).tolist()
    assert as_mask_tensor(soft * 255, SHAPE)[0, 0, 0].tolist() == (soft[0] >= 0.5).tolist()
    with pytest.raises(ValueError, match="marks nothing to redraw"):
        as_mask_tensor(np.full((28, 28), 100, np.uint8), SHAPE)


def test_an_edit_with_bare_is_the_image_itself_and_can_be_edited_again(picture, tmp_path):
    """img2img --bare -n 1 --scale 1 writes the result at the model's size, so it feeds the
    next edit (it wrote a padded grid before and had no --bare)."""
    from difflab import cli

    Image.fromarray(picture).save(tmp_path / "in.png")
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    base = ["--prompt", "a dress", "--steps", "2", "-n", "1", "--scale", "1", "--bare"]
    assert cli.main(["img2img", "fashion-text", str(tmp_path / "in.png"), *base,
                     "--out", str(first)]) == 0
    assert Image.open(first).size == (28, 28)
    assert cli.main(["img2img", "fashion-text", str(first), *base, "--out", str(second)]) == 0
    assert Image.open(second).size == (28, 28)
