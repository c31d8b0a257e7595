"""What a new user plausibly passes the Python API (and the command line) by mistake -- a
wrong type, an empty list or name, a file of their own where samples go -- is refused with an
error that names the argument and what is allowed, not an error from deep inside torch, and
nothing of theirs is replaced. Found by a trial that copied the docs' examples (2026-12-07).
"""

from __future__ import annotations

import numpy as np
import pytest

from difflab.checkpoints.names import WEIGHTS_DIR, resolve_checkpoint
from difflab.cli import main
from difflab.diffusion.oracles import GaussianMixtureOracle, gaussian_oracle
from difflab.diffusion.process import DiscreteProcess
from difflab.pipeline import Generator
from difflab.samplers import sample

FAST = {"sampler": "ddim", "steps": 2}


@pytest.fixture(scope="module")
def clothes() -> Generator:
    return Generator.from_checkpoint("fashion-mnist")


@pytest.fixture(scope="module")
def digits() -> Generator:
    return Generator.from_checkpoint("mnist-digits-cond")


def test_sampling_arguments_of_the_wrong_kind_are_named(clothes, digits):
    with pytest.raises(ValueError, match=r"^classes is an empty list; give at least one"):
        digits.generate(2, classes=[], **FAST)
    with pytest.raises(ValueError, match=r"^the number of images must be a whole number "
                                         r"\(an int\), got str '4'$"):
        clothes.generate("4", **FAST)
    with pytest.raises(ValueError, match=r"^precision must be one of fp32, bf16 .* got 'fp16'"):
        clothes.generate(2, precision="fp16", **FAST)
    with pytest.raises(ValueError, match=r"^callback must be a function of one dict .* int 5"):
        clothes.generate(2, callback=5, **FAST)
    with pytest.raises(ValueError, match=r"^autoguidance must be a finite number .* got -1"):
        clothes.generate(2, autoguidance=-1, **FAST)
    with pytest.raises(ValueError, match=r"^strength must be a number in \[0, 1\] .* '0.5'"):
        clothes.generate(2, strength="0.5", **FAST)
    with pytest.raises(ValueError, match=r"^strength must be a number in \[0, 1\] .* 1.5"):
        clothes.img2img(np.zeros((28, 28), np.uint8), strength=1.5, **FAST)


def test_a_prompt_that_is_not_text_is_named():
    gen = Generator.from_checkpoint("fashion-text")
    with pytest.raises(ValueError, match=r"^prompt must be a string or a list of strings, got "
                                         r"int 3$"):
        gen.generate(2, prompt=3, **FAST)
    with pytest.raises(ValueError, match=r"^negative_prompt must be a string or a list"):
        gen.generate(2, prompt="a coat", negative_prompt={"a": 1}, **FAST)


def test_samples_to_npz_never_replace_a_file_difflab_did_not_write(clothes, tmp_path):
    mine = tmp_path / "keep.py"
    mine.write_text("print('mine')\n")
    with pytest.raises(ValueError, match=r"keep.py: samples are written as an .npz file"):
        clothes.generate_to_npz(mine, 1, **FAST)
    theirs = tmp_path / "theirs.npz"
    np.savez(theirs, images=np.zeros((1, 1, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"theirs.npz exists and difflab did not write it"):
        clothes.generate_to_npz(theirs, 1, **FAST)
    twin = tmp_path / "twin.images.npy"
    np.save(twin, np.arange(3))
    with pytest.raises(ValueError, match=r"twin.images.npy exists, and the samples stream"):
        clothes.generate_to_npz(tmp_path / "twin.npz", 1, **FAST)
    with pytest.raises(ValueError, match=r"the folder .*nowhere does not exist; make it first"):
        clothes.generate_to_npz(tmp_path / "nowhere" / "s.npz", 1, **FAST)
    assert mine.read_text() == "print('mine')\n"
    assert np.load(twin).tolist() == [0, 1, 2] and len(np.load(theirs)["images"]) == 1
    # its own file it replaces: a rerun is common
    ours = clothes.generate_to_npz(tmp_path / "ours.npz", 1, **FAST)
    assert clothes.generate_to_npz(ours, 2, **FAST) == ours
    assert np.load(ours)["images"].shape == (2, 1, 28, 28)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "keep.py", "ours.npz", "theirs.npz", "twin.images.npy"]


def test_the_oracle_example_with_a_wrong_shape_or_value_is_named():
    process = DiscreteProcess.from_schedule("cosine", T=1000)
    oracle = gaussian_oracle(process, mean=0.3, std=0.5, dim=16)
    with pytest.raises(ValueError, match=r"^this oracle's data has 16 dimensions: give x of "
                                         r"shape \(N, 16\) with N >= 1, got \(10, 8\)$"):
        sample(oracle, (10, 8), sampler="deis", steps=4)
    for shape in (16, (0, 16), (-1, 16), "16", ()):
        with pytest.raises(ValueError, match=r"^shape must be a tuple of whole numbers >= 1"):
            sample(oracle, shape, sampler="deis", steps=4)
    with pytest.raises(ValueError, match=r"^dim must be a whole number >= 1, got '16'$"):
        gaussian_oracle(process, mean=0.3, std=0.5, dim="16")
    for std in (-0.5, 0.0, float("nan")):
        with pytest.raises(ValueError, match=r"^a component's std must be a finite number > 0"):
            gaussian_oracle(process, mean=0.3, std=std, dim=4)
    with pytest.raises(ValueError, match=r"std must be a finite number > 0"):
        GaussianMixtureOracle(process, [[0.0, 1.0]], [-1.0])
    assert sample(oracle, (8, 16), sampler="deis", steps=4).shape == (8, 16)


def test_an_empty_or_wrong_checkpoint_name_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^the checkpoint's name is empty; give a "
                                                r"checkpoint folder or one of the shipped"):
        resolve_checkpoint("")
    with pytest.raises(TypeError, match=r"^a checkpoint is a folder or a shipped model's name "
                                        r"\(a str or a path\), got NoneType None$"):
        Generator.from_checkpoint(None)
    weights = WEIGHTS_DIR / "fashion-mnist" / "model.safetensors"
    with pytest.raises(FileNotFoundError, match=r"is a file; a checkpoint is a folder"):
        Generator.from_checkpoint(weights)


@pytest.mark.parametrize("argv, said", [
    (["sample", "", "--out", "{tmp}/s.png"], "the checkpoint's name is empty"),
    (["info", ""], "the checkpoint's name is empty"),
    (["sample", "fashion-mnist", "-n", "1", "--out", ""], "argument --out: the value is empty"),
    (["sample", "fashion-mnist", "-n", "1", "--gif", ""], "argument --gif: the value is empty"),
    (["eval", "fashion-mnist", "--json", " "], "argument --json: the value is empty"),
    (["train", "digits8", "--init-from", ""], "argument --init-from: the value is empty"),
    (["train", "digits8", "--out", ""], "argument --out: the value is empty"),
    (["viz", "forward", "--config", ""], "argument --config: the value is empty"),
    (["sample", "fashion-text", "--prompt", ""], "argument --prompt: the value is empty"),
    (["sample", "fashion-text", "--prompt", "a", ""], "unrecognized arguments: ''"),
    (["export", "fashion-mnist", ""], "the destination folder's name is empty"),
    (["img2img", "fashion-mnist", "", "--out", "{tmp}/e.png"], "the image's file name is empty"),
    (["train", ""], "config '' is empty; give a TOML file or one of the presets"),
])
def test_an_empty_name_on_the_command_line_is_one_line(argv, said, tmp_path, capsys):
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and said in err, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, said", [
    (["sample", "fashion-mnist", "-n", "1", "--out", "{tmp}/s.npz", "--nrow", "2"],
     "--nrow lays out the PNG grid, and an .npz --out writes no grid"),
    (["sample", "fashion-mnist", "-n", "1", "--out", "{tmp}/s.npz", "--scale", "1"],
     "--scale lays out the PNG grid"),
    (["eval", "--images", "{tmp}/none.npz", "--dataset", "digits", "--sampler", "heun"],
     "--sampler shapes how a checkpoint's samples are drawn; --images are drawn already"),
    (["eval", "--images", "{tmp}/none.npz", "--dataset", "digits", "--autoguidance", "2"],
     "--autoguidance shapes how"),
    (["eval", "fashion-mnist", "--nll-timesteps", "2"], "--nll-timesteps sets the NLL's "
     "estimate: it goes with --nll"),
    (["eval", "fashion-mnist", "--negative-prompt", "a bag"], "--negative-prompt steers the "
     "prompts of --geneval's samples"),
])
def test_a_flag_the_command_would_not_read_is_refused(argv, said, tmp_path, capsys):
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and said in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_export_through_a_file_is_refused_before_it_starts(tmp_path, capsys):
    (tmp_path / "afile").write_text("mine\n")
    assert main(["export", "fashion-mnist", str(tmp_path / "afile" / "sub")]) == 2
    out, err = capsys.readouterr()
    assert "afile is a file, not a folder; give a new folder" in err and "exporting" not in out
    assert (tmp_path / "afile").read_text() == "mine\n"


def test_img2img_at_strength_0_says_nothing_is_sampled(tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.full((28, 28), 90, np.uint8)).save(tmp_path / "in.png")
    assert main(["img2img", "fashion-mnist", str(tmp_path / "in.png"), "--strength", "0",
                 "-n", "1", "--bare", "--scale", "1", "--out", str(tmp_path / "e.png")]) == 0
    out = capsys.readouterr().out
    assert "strength 0 keeps the image" in out and "sampling with" not in out
    kept = np.asarray(Image.open(tmp_path / "e.png").convert("L"))
    assert kept.shape == (28, 28) and (kept == 90).all()


def test_no_clip_on_a_latent_model_is_refused(tmp_path, capsys):
    assert main(["sample", "fashion-text", "--prompt", "a shoe", "-n", "1", "--no-clip",
                 "--out", str(tmp_path / "s.png")]) == 2
    assert "fashion-text is a latent model, whose samples are never clipped" in \
        capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_viz_forward_refuses_a_setting_it_does_not_read(tmp_path, capsys):
    assert main(["viz", "forward", "--config", "digits8", "--set", "train.lr=1",
                 "--out", str(tmp_path / "f.png")]) == 2
    assert "--set train.lr=1: viz forward reads a config's [data] and [diffusion] only" in \
        capsys.readouterr().err
    assert main(["viz", "forward", "--config", "digits8", "--set", "diffusion.schedule=linear",
                 "--out", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "f.png").is_file()
