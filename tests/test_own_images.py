"""A user's own folder of pictures, through the command line: what is read and said, classes
from sub-folders, and that a run neither writes into the data nor loses it on resume
(docs/own_images.md)."""

import json
import os
import re
import warnings

import numpy as np
import pytest
from PIL import Image

from difflab.cli import main
from difflab.data import load_image_folder

FAST = ["--steps", "1", "--no-report", "--no-check", "--set", "train.batch_size=4",
        "--set", "data.image_size=16"]


def picture(path, size, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    w, h = size
    array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(array).convert(mode).save(path)


@pytest.fixture
def pets(tmp_path):
    """Two class folders of mixed sizes and modes."""
    root = tmp_path / "pets"
    for c, name in enumerate(("cats", "dogs")):
        (root / name).mkdir(parents=True)
        for i in range(4):
            picture(root / name / f"{i}.png", (20 + 4 * i, 18), ("RGB", "RGBA")[i % 2], c * 10 + i)
    return root


def folder_args(root, *more):
    return ["--set", "data.name=image_folder", "--set", f"data.root={root.as_posix()!r}",
            *FAST, *more]


def test_a_conditional_preset_takes_as_many_classes_as_the_folders_or_is_told(
        pets, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "fashion_mnist_cond", *folder_args(pets), "--set", "data.folder_labels=true",
            "--out", str(run)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "names 2 classes (cats, dogs) and the network takes 10" in err
    assert "add --set model.overrides.num_classes=2" in err and not (run / "last").exists()
    assert main([*args, "--set", "model.overrides.num_classes=2"]) == 0
    out = tmp_path / "dogs.png"
    assert main(["sample", str(run / "last"), "--class", "dogs", "-n", "2", "--steps", "2",
                 "--out", str(out)]) == 0
    assert Image.open(out).size[0] >= 16


def test_an_unconditional_run_says_it_leaves_the_folder_labels_unused(pets, tmp_path, capsys):
    assert main(["train", "fashion_mnist", *folder_args(pets), "--set", "data.folder_labels=true",
                 "--out", str(tmp_path / "run")]) == 0
    said = capsys.readouterr().out
    assert "data.folder_labels gives 2 classes (cats, dogs); this model is unconditional" in said


def test_the_run_says_what_loading_did(pets, tmp_path, capsys):
    (pets / "cats" / "phone.heic").write_bytes(b"\0" * 10)  # a kind Pillow cannot read here
    picture(pets / "dogs" / "still.gif", (16, 16), "P", 5)  # GIF and TIFF are read
    picture(pets / "dogs" / "scan.tif", (16, 16), "L", 6)
    assert main(["train", "fashion_mnist", *folder_args(pets), "--out",
                 str(tmp_path / "run")]) == 0
    said = capsys.readouterr().out
    assert "10 images (3, 16, 16)" in said
    assert "8 of 10 images resized to 16 on the shorter side and 8 centre-cropped to 16x16" in said
    assert "converted to RGB: 1 L, 1 P, 4 RGBA" in said
    assert "not read: 1 .heic file(s)" in said


def test_a_run_folder_inside_the_data_is_refused_and_the_data_left_as_it_was(pets, capsys):
    before = sorted(p.relative_to(pets) for p in pets.rglob("*"))
    os.utime(pets, (1, 1))
    assert main(["train", "fashion_mnist", *folder_args(pets), "--out",
                 str(pets / "run")]) == 2
    assert "is inside data.root" in capsys.readouterr().err
    assert sorted(p.relative_to(pets) for p in pets.rglob("*")) == before
    assert pets.stat().st_mtime == 1  # refused before anything was made in it, even for a time


def test_a_relative_data_root_is_recorded_whole_so_a_resume_from_elsewhere_finds_it(
        pets, tmp_path, monkeypatch):
    monkeypatch.chdir(pets.parent)
    run = tmp_path / "run"
    assert main(["train", "fashion_mnist", "--set", "data.name=image_folder", "--set",
                 "data.root='pets'", *FAST, "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["data"]["root"] == str(pets)
    monkeypatch.chdir(tmp_path.parent)
    assert main(["train", "--resume", "--out", str(run), "--steps", "2", "--no-report",
                 "--no-check"]) == 0


def test_mixed_sizes_are_refused_from_the_headers_before_decoding(tmp_path, monkeypatch):
    picture(tmp_path / "a.png", (20, 20))
    picture(tmp_path / "b.png", (30, 20))
    from difflab.data import image_folder

    def no_decoding(*_):
        raise AssertionError("decoded before the sizes were checked")

    monkeypatch.setattr(image_folder, "_decode", no_decoding)
    with pytest.raises(ValueError, match=r"2 different sizes \(a.png 20x20, b.png 30x20\)"):
        load_image_folder(tmp_path)
    os.remove(tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"are 30x20 \(b.png\), not square"):
        load_image_folder(tmp_path)


def test_a_resume_at_another_image_size_names_the_image_settings(pets, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "fashion_mnist", *folder_args(pets), "--out", str(run)]) == 0
    assert main(["train", "--resume", "--out", str(run), "--set", "data.image_size=24",
                 "--steps", "2", "--no-report", "--no-check"]) == 2
    err = capsys.readouterr().err
    assert "image_size: 16 vs 24" in err
    assert "the network follows the images: give data.image_size and data.channels" in err


def test_the_notes_count_the_kept_classes_and_name_what_is_left_out(pets):
    from difflab.config import DataConfig
    from difflab.data import load_dataset
    from difflab.data.image_folder import BadImageWarning

    (pets / "fish").mkdir()
    (pets / "fish" / "a.jpg").write_bytes(b"")  # a class folder of nothing readable
    (pets / "cats" / "phone.heic").write_bytes(b"\0")
    (pets / "dogs" / "phone.heic").write_bytes(b"\0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        every = load_image_folder(pets, image_size=16, folder_labels=True)
    said = [str(w.message) for w in caught if w.category is BadImageWarning]
    assert any(re.search(r"class folder\(s\) fish .* hold no readable", m) for m in said)
    assert every.class_names == ("cats", "dogs")  # fish left out, not an empty class
    cats = load_dataset(DataConfig(name="image_folder", root=str(pets), image_size=16,
                                   folder_labels=True, classes=["cats"]))
    assert len(cats) == 4 and cats.class_names == ("cats",)
    assert cats.notes[0] == ("4 of 4 images resized to 16 on the shorter side and 4 "
                             "centre-cropped to 16x16")
    assert cats.notes[-1].startswith("not read: 1 .heic file(s)")  # the dogs' one not counted


def test_a_folder_of_pictures_it_cannot_decode_says_which(tmp_path):
    from difflab.data.base import DatasetNotFoundError

    for i in range(3):
        (tmp_path / f"IMG_{i}.HEIC").write_bytes(b"\0")
    with pytest.raises(DatasetNotFoundError, match=r"it holds 3 \.heic file\(s\), kinds this "
                                                   r"build cannot decode; convert them"):
        load_image_folder(tmp_path)


def test_pictures_only_cropped_are_not_counted_as_resized(tmp_path):
    for i in range(2):
        picture(tmp_path / f"{i}.png", (24, 16), seed=i)
    data = load_image_folder(tmp_path, image_size=16)
    assert data.notes == ("2 of 2 images centre-cropped to 16x16",)


def test_without_out_a_run_on_ones_own_folder_is_named_after_it_and_resumes_there(
        pets, tmp_path, monkeypatch, capsys):
    """Not runs/fashion_mnist: the README's main job has that folder, and a second run there
    would be refused (or, with --overwrite, would replace it)."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "fashion_mnist", *folder_args(pets)]) == 0
    assert "the run goes to runs/pets" in capsys.readouterr().out
    assert (tmp_path / "runs" / "pets" / "last").is_dir()
    assert not (tmp_path / "runs" / "fashion_mnist").exists()
    assert main(["train", "fashion_mnist", *folder_args(pets), "--resume", "--steps", "2"]) == 0
    assert json.loads((tmp_path / "runs" / "pets" / "last" / "state.json").read_text()
                      )["step"] == 2


def test_overwrite_without_a_config_starts_the_run_again_from_its_own(pets, tmp_path, capsys):
    """`difflab train --out RUN --overwrite` names no config: like --resume, it takes the run's
    own config.json (the user's folder), never the default preset's Fashion-MNIST."""
    run = tmp_path / "run"
    assert main(["train", "fashion_mnist", *folder_args(pets), "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--overwrite", "--steps", "2", "--no-report",
                 "--no-check"]) == 0
    said = capsys.readouterr().out
    assert f"--overwrite without a config: {run} starts again from its own config.json" in said
    assert "fashion_mnist/train" not in said
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["name"] == "image_folder"
    assert json.loads((run / "last" / "state.json").read_text())["step"] == 2
