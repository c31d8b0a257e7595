"""The command line driven as a user would: train, sample (PNG, NPZ, GIF), info, viz, errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_run import TINY as TINY_RUN
from tiny_run import as_flags

from difflab.checkpoints.store import load_checkpoint
from difflab.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = as_flags([*TINY_RUN[:4], "train.batch_size=16", "data.limit=200",
                 "train.sample_every=3", "sample.steps=5"])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "digits8", "--out", str(out), "--steps", "6", *TINY]) == 0
    return out


def test_train_writes_the_report(run_dir):
    for name in (
        "forward_process.png",
        "samples.png",
        "reverse_process.gif",
        "loss.png",
        "command.sh",
        "metrics.jsonl",
        "last/model.safetensors",
        "samples/step_0000003.png",
    ):
        assert (run_dir / name).is_file(), name
    grid = Image.open(run_dir / "samples.png")
    assert grid.mode == "L"
    gif = Image.open(run_dir / "reverse_process.gif")
    assert gif.n_frames > 2
    assert "difflab train digits8" in (run_dir / "command.sh").read_text()


def test_sample_png_npz_gif(run_dir, tmp_path, capsys):
    ck = str(run_dir / "last")
    assert (
        main(
            [
                "sample",
                ck,
                "-n",
                "6",
                "--steps",
                "4",
                "--out",
                str(tmp_path / "s.png"),
                "--gif",
                str(tmp_path / "s.gif"),
            ]
        )
        == 0
    )
    assert Image.open(tmp_path / "s.png").size[0] > 8
    assert (tmp_path / "s.gif").is_file()
    # a GIF named as anything else (the grid's own name among them) is refused before work
    for gif in ("s.png", "s.txt"):
        assert main(["sample", ck, "-n", "2", "--steps", "2", "--out", str(tmp_path / "s.png"),
                     "--gif", str(tmp_path / gif)]) == 2
    assert Image.open(tmp_path / "s.png").format == "PNG" and not (tmp_path / "s.txt").exists()
    # an .npz --out writes no grid, so no GIF of one: refused, not silently left out
    assert main(["sample", ck, "-n", "2", "--steps", "2", "--out", str(tmp_path / "s.npz"),
                 "--gif", str(tmp_path / "g.gif")]) == 2
    assert "an .npz --out writes no grid" in capsys.readouterr().err
    assert not (tmp_path / "s.npz").exists() and not (tmp_path / "g.gif").exists()
    assert main(["sample", ck, "-n", "2", "--steps", "2", "--out", str(tmp_path / "s.npz"),
                 "--bare"]) == 2  # the same for --bare: said, not silently ignored
    assert "an .npz --out holds the samples alone already" in capsys.readouterr().err
    assert (
        main(
            [
                "sample",
                ck,
                "-n",
                "5",
                "--sampler",
                "dpmpp_2m",
                "--steps",
                "4",
                "--batch-size",
                "2",
                "--out",
                str(tmp_path / "s.npz"),
            ]
        )
        == 0
    )
    data = np.load(tmp_path / "s.npz")
    assert data["images"].shape == (5, 1, 8, 8) and data["images"].dtype == np.uint8
    assert "labels" not in data
    # Same seed, different batch size: the same images.
    assert (
        main(
            [
                "sample",
                ck,
                "-n",
                "5",
                "--sampler",
                "dpmpp_2m",
                "--steps",
                "4",
                "--batch-size",
                "5",
                "--out",
                str(tmp_path / "t.npz"),
            ]
        )
        == 0
    )
    assert np.array_equal(np.load(tmp_path / "t.npz")["images"], data["images"])


def test_info(run_dir, capsys):
    assert main(["info", str(run_dir / "last")]) == 0
    out = capsys.readouterr().out
    assert "pixel-diffusion" in out and "M parameters" in out and "step 6" in out
    from difflab.checkpoints.names import shipped_models

    assert main(["info"]) == 0  # without a name: the shipped models
    listed = capsys.readouterr().out.splitlines()
    assert [line.strip() for line in listed[1:]] == shipped_models() and shipped_models()


def test_viz_commands(tmp_path, capsys):
    for what in ("schedules", "forward", "toy1d"):
        target = tmp_path / f"{what}.png"
        config = ["--config", "digits8"] if what == "forward" else []
        assert main(["viz", what, "--out", str(target), *config]) == 0
        assert target.stat().st_size > 1000
        # --timesteps changes every picture (it was once read by schedules only)
        other = tmp_path / f"{what}_t50.png"
        assert main(["viz", what, "--out", str(other), *config, "--timesteps", "50"]) == 0
        assert other.read_bytes() != target.read_bytes(), what
    # a flag a picture does not read is refused, not ignored
    for what, flag in (("schedules", ["--set", "diffusion.schedule=linear"]),
                       ("schedules", ["--seed", "1"]), ("toy1d", ["--config", "nonexist"])):
        assert main(["viz", what, "--out", str(tmp_path / "x.png"), *flag]) == 2
        assert (f"viz {what} draws the same picture whatever {flag[0]} says: drop it"
                in capsys.readouterr().err)


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "difflab.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_bad_flags_name_allowed_values(run_dir):
    p = run_cli("sample", str(run_dir / "last"), "--sampler", "dpm")
    assert p.returncode != 0 and "allowed:" in p.stderr and "dpmpp_2m" in p.stderr
    p = run_cli("sample", str(run_dir / "last"), "--steps", "0")
    assert p.returncode != 0 and "must be >= 1" in p.stderr
    p = run_cli("sample", str(run_dir / "last"), "--out", "x.jpg")
    assert p.returncode != 0 and ".png or .npz" in p.stderr
    p = run_cli("sample", str(run_dir / "last"), "--class", "7")
    assert p.returncode != 0 and "unconditional" in p.stderr
    p = run_cli("sample", "no/such/dir")
    assert p.returncode != 0 and "not found" in p.stderr
    p = run_cli("train", "digits8", "--set", "train.lr=fast")
    assert p.returncode == 2 and "train.lr must be a number" in p.stderr
    p = run_cli("train", "nosuchconfig")
    assert p.returncode != 0 and "fashion_mnist" in p.stderr


def test_train_init_from_starts_a_new_run_from_a_checkpoints_weights(run_dir, tmp_path):
    out = tmp_path / "more"
    assert main(["train", "digits8", "--out", str(out), "--steps", "2", "--no-report",
                 "--init-from", str(run_dir), *TINY]) == 0  # the run folder means its last/
    ck = load_checkpoint(out / "last", with_training_state=True)
    assert ck.state["step"] == 2 and ck.state["init_from"]["step"] == 6
    p = run_cli("train", "digits8", "--out", str(out), "--resume",
                "--init-from", str(run_dir / "last"))
    assert p.returncode != 0 and "give one" in p.stderr and "Traceback" not in p.stderr
    p = run_cli("train", "digits8", "--out", str(tmp_path / "x"), "--init-from", "no/such/dir")
    assert p.returncode != 0 and "not found" in p.stderr and "Traceback" not in p.stderr


def test_a_run_folder_means_its_newest_checkpoint(run_dir, tmp_path):
    from difflab.checkpoints.names import resolve_checkpoint

    assert resolve_checkpoint(run_dir) == run_dir / "last"
    assert resolve_checkpoint(run_dir / "best") == run_dir / "best"
    outs = [tmp_path / "folder.npz", tmp_path / "last.npz"]
    for source, out in zip((run_dir, run_dir / "last"), outs, strict=True):
        assert main(["sample", str(source), "-n", "2", "--steps", "3", "--seed", "1",
                     "--out", str(out)]) == 0
    a, b = (np.load(o)["images"] for o in outs)
    assert np.array_equal(a, b)
    empty = tmp_path / "empty"
    empty.mkdir()
    p = run_cli("sample", str(empty), "-n", "1")
    assert p.returncode != 0 and "Traceback" not in p.stderr


def test_the_budget_flags_replace_the_configs_budget(tmp_path):
    """`--steps N` trains N steps even where the config says a few minutes (before, the
    config's minutes stopped it first); both flags together stop at whichever comes first."""
    from difflab.cli.train import budget_overrides
    from difflab.config import load_config

    text = (ROOT / "configs" / "digits8.toml").read_text()
    config = tmp_path / "short.toml"
    config.write_text(text.replace("[train]\n", "[train]\nminutes = 0.00001\n", 1))
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out), "--steps", "3", "--no-report",
                 *TINY]) == 0
    assert load_checkpoint(out / "last", with_training_state=True).state["step"] == 3
    cfg = load_config(config, budget_overrides(None, 3))
    assert (cfg.train.minutes, cfg.train.max_steps, cfg.train.epochs) == (None, 3, None)
    cfg = load_config(config, budget_overrides(5.0, None))
    assert (cfg.train.minutes, cfg.train.max_steps) == (5.0, None)  # the config's 600 steps too
    cfg = load_config(config, budget_overrides(5.0, 7))
    assert (cfg.train.minutes, cfg.train.max_steps) == (5.0, 7)
    cfg = load_config(config, [*budget_overrides(None, 3), "train.max_steps=9"])
    assert cfg.train.max_steps == 9  # an explicit --set still wins
    assert load_config(config, budget_overrides(None, None)).train.minutes == 0.00001


@pytest.mark.parametrize("flags", [["--steps", "5", "--set", "train.max_steps=9"],
                                   ["--minutes", "1", "--set", " train.minutes = 2"]])
def test_a_budget_flag_and_a_set_of_its_key_are_refused_as_two_budgets(flags, tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run"), *flags]) == 2
    flag, key = flags[0], flags[3].split("=")[0].strip()
    assert capsys.readouterr().err == (
        f"difflab: error: {flag} and --set {key} both set the budget: give one of them\n")
    assert not (tmp_path / "run").exists()


def test_steps_beyond_T_is_refused(run_dir):
    p = run_cli("sample", str(run_dir / "last"), "--steps", "5000", "-n", "1")
    assert p.returncode == 2 and "steps" in p.stderr


def test_export_fp16_is_small_and_samples_the_same(run_dir, tmp_path):
    out = tmp_path / "shipped"
    assert (
        main(
            [
                "export",
                str(run_dir / "last"),
                str(out),
                "--fp16",
                "--command-line",
                "difflab train digits8",
            ]
        )
        == 0
    )
    full = sum(f.stat().st_size for f in (run_dir / "last").iterdir())
    small = sum(f.stat().st_size for f in out.iterdir())
    assert small < full / 3
    files = sorted(p.name for p in out.iterdir())
    assert files == ["config.json", "manifest.json", "model.safetensors"]
    # its record names the machine that trained it (the run's own record), not this one
    trained_on = json.loads((run_dir / "last" / "config.json").read_text())["trained_on"]
    hardware = json.loads((out / "config.json").read_text())["trained"]["hardware"]
    assert hardware.startswith(trained_on["cpu"] + ", ") and "CPU threads" not in hardware
    assert (
        main(["sample", str(out), "-n", "4", "--steps", "5", "--out", str(tmp_path / "a.npz")]) == 0
    )
    assert (
        main(
            [
                "sample",
                str(run_dir / "last"),
                "-n",
                "4",
                "--steps",
                "5",
                "--out",
                str(tmp_path / "b.npz"),
            ]
        )
        == 0
    )
    a, b = np.load(tmp_path / "a.npz")["images"], np.load(tmp_path / "b.npz")["images"]
    # fp16 rounding of the EMA weights moves pixels by at most a few levels.
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 3
    # an export exported again keeps its record of how it was trained (it holds no state)
    again = tmp_path / "again"
    assert main(["export", str(out), str(again), "--quiet"]) == 0
    first, second = (json.loads((f / "config.json").read_text())["trained"] for f in (out, again))
    assert second == first and first["step"] and first["weights"] == "ema"


def test_eval_checkpoint_and_npz(run_dir, tmp_path, capsys):
    report = tmp_path / "r.json"
    assert (
        main(
            [
                "eval",
                str(run_dir / "last"),
                "--samples",
                "60",
                "--steps",
                "4",
                "--json",
                str(report),
                "--quiet",
                "--compile",
                "off",
            ]
        )
        == 0
    )
    import json

    r = json.loads(report.read_text())
    assert r["fid"] > 0 and "digits CNN features" in r["feature_space"]
    assert r["sampling"]["compiled"] is False
    npz = tmp_path / "s.npz"
    assert (
        main(["sample", str(run_dir / "last"), "-n", "60", "--steps", "4", "--out", str(npz)]) == 0
    )
    assert main(["eval", "--images", str(npz), "--dataset", "digits", "--quiet"]) == 0
    said = capsys.readouterr()
    assert "FID" in said.out and "warning" not in said.err
    assert main(["eval", "--images", str(npz), "--dataset", "digits",
                 "--n-reference", "100"]) == 0
    assert ("difflab: warning: FID against 100 reference images is biased upward and noisy"
            in capsys.readouterr().err)
    p = run_cli("eval", "--images", str(npz))
    assert p.returncode != 0 and "--dataset" in p.stderr
    assert main(["eval", "--images", str(npz), "--dataset", "digits", "--compile", "on"]) == 2
    assert "--compile goes with drawing a checkpoint's samples" in capsys.readouterr().err


def test_resume_says_where_it_goes_on_and_refuses_a_spent_budget(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "digits8", "--out", str(out), *TINY]
    assert main([*base, "--steps", "2", "--no-report"]) == 0
    capsys.readouterr()
    assert main([*base, "--steps", "2", "--resume"]) == 2  # the whole run's budget: spent
    assert "at step 2 already and --steps 2 is the whole run's" in capsys.readouterr().err
    assert main([*base, "--resume"]) == 2  # no budget flag: the run's own budget, spent
    said = capsys.readouterr().err
    assert "at step 2 already and its own budget of 2 steps: give --minutes or --steps" in said
    assert main([*base, "--steps", "3", "--resume"]) == 0
    said = capsys.readouterr().out
    assert f"difflab: resuming {out / 'last'} at step 2 (" in said
    assert "settings the run did not have" not in said  # nothing changed: an exact resume
    command = (out / "command.sh").read_text()  # the one command that trains the whole run
    assert "--resume" not in command and "--steps 3" in command and "was resumed" in command
    assert "trains all of it, exactly" in command and "budget is time" not in command
    assert "refuses while this run is there" in command
    assert main([*base, "--minutes", "0.05", "--resume"]) == 0  # now a time budget
    command = (out / "command.sh").read_text()
    assert "trains all of it in one go" in command and "exactly." not in command
    assert "Its budget is time (train.minutes): a rerun stops near step" in command


def test_command_sh_of_an_overwrite_refuses_as_its_header_says(tmp_path, capsys):
    """--overwrite said what to do with the folder, not how to train: the recorded command
    leaves it out, so running command.sh refuses while the run is there."""
    out = tmp_path / "run"
    base = ["train", "digits8", "--out", str(out), *TINY, "--steps", "1"]
    assert main([*base, "--no-report"]) == 0
    assert main([*base, "--overwrite"]) == 0
    command = (out / "command.sh").read_text()
    assert "refuses while this run is there" in command and "--overwrite" not in command.split(
        "\n")[-2]
    capsys.readouterr()
    done = subprocess.run(["sh", str(out / "command.sh")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "already holds a run" in done.stderr


def test_a_resume_without_a_config_reads_the_runs_own(tmp_path, capsys):
    """A run on custom settings resumes without its --set flags again: with no config named,
    --resume reads the run's config.json; it can also be named, and then --out defaults to
    its folder. command.sh names that config."""
    out = tmp_path / "custom"
    assert main(["train", "digits8", "--out", str(out), "--steps", "2", "--no-report",
                 *TINY]) == 0
    assert main(["train", "--out", str(out), "--resume", "--steps", "3"]) == 0
    assert load_checkpoint(out / "last", with_training_state=True).state["step"] == 3
    command = (out / "command.sh").read_text()
    assert f"train {out / 'config.json'} --out {out} --steps 3" in command
    assert main(["train", str(out / "config.json"), "--resume", "--steps", "4",
                 "--no-report"]) == 0
    assert load_checkpoint(out / "last", with_training_state=True).state["step"] == 4
    (tmp_path / "bad.json").write_text("{not json")
    capsys.readouterr()
    assert main(["train", str(tmp_path / "bad.json"), "--out", str(tmp_path / "x")]) == 2
    assert "bad.json is not valid JSON" in capsys.readouterr().err


def test_a_very_long_prompt_is_quoted_short(tmp_path, capsys):
    """A 600-word prompt: the warnings and the grid's title quote its first 60 characters."""
    from PIL import Image

    from difflab.data.captions import quote_prompt

    long = " ".join(["a very warm and cosy winter coat with a hood"] * 60)
    assert quote_prompt(long) == repr(long[:60].rstrip() + "…")
    assert quote_prompt("a tee") == "'a tee'"
    out = tmp_path / "long.png"
    assert main(["sample", "fashion-text", "--prompt", long, "-n", "2", "--steps", "2",
                 "--out", str(out)]) == 0
    said = capsys.readouterr()
    assert long[:200] not in said.out + said.err
    assert Image.open(out).height < 300  # the title is one short line over the two samples
    # Read by the caption bank and by sampling, but warned about once.
    assert said.err.count("tokens, more than max_tokens") == 1
    # The shapes grammar quotes it short too, as the phrase it could not read.
    assert main(["sample", "shapes-text", "--prompt", long, "-n", "1", "--steps", "1",
                 "--out", str(tmp_path / "shapes.png")]) == 0
    said = capsys.readouterr()
    assert long[:200] not in said.out + said.err and "outside what this model" in said.err
    assert max(len(line) for line in said.err.splitlines()) < 1000


def test_a_checkpoint_from_elsewhere_with_odd_json_is_refused_in_one_line(tmp_path, capsys):
    """Untrusted config.json: class names that are not one string per class, and JSON nested
    deeper than the parser recurses, each get one line naming the file, not a traceback."""
    import json
    import shutil

    from difflab.checkpoints.store import is_difflab_checkpoint, peek_config, write_manifest

    out = tmp_path / "cond"
    assert main(["train", "digits8", "--out", str(out), "--steps", "1", "--no-report",
                 "--no-check", *TINY, "--set", "model.overrides.num_classes=10"]) == 0
    cases = {"ints": list(range(10)), "few": ["zero"], "text": "0123456789"}
    for name, names in cases.items():
        ck = tmp_path / name
        shutil.copytree(out / "last", ck)
        config = json.loads((ck / "config.json").read_text())
        (ck / "config.json").write_text(json.dumps({**config, "class_names": names}))
        write_manifest(ck)
        capsys.readouterr()
        assert main(["sample", str(ck), "-n", "1", "--steps", "2", "--class", "3",
                     "--out", str(tmp_path / f"{name}.png")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "'class_names'" in err, err
        assert "one name per class" in err or "list of strings" in err
    deep = tmp_path / "deep"
    shutil.copytree(out / "last", deep)
    (deep / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    write_manifest(deep)
    assert is_difflab_checkpoint(deep)  # its manifest says so; the config's depth must not raise
    assert peek_config(deep) is None
    capsys.readouterr()
    assert main(["info", str(deep)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("config.json is not valid JSON: nested too deeply"), err
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    assert main(["train", str(tmp_path / "deep.json"), "--out", str(tmp_path / "y")]) == 2
    assert "nests its values too deeply" in capsys.readouterr().err


def test_a_prompt_that_is_not_utf8_is_refused_in_one_line(capsys):
    """Bytes that are not UTF-8 reach Python as unpaired surrogates (and a lone "\\ud800" can
    come in JSON to the web app): no tokenizer reads them, so they are refused, on the command
    line before any model loads and in the API (the web app's path) alike."""
    from difflab.argtypes import check_text

    bad = b"a \xed\xa0\x80 shirt".decode("utf-8", errors="surrogateescape")
    assert main(["sample", "fashion-text", "--prompt", bad, "-n", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not valid text" in err and "UTF-8" in err
    for text in ("a \ud800 shirt", bad):
        with pytest.raises(ValueError, match="prompt .* is not valid text"):
            check_text(text, "prompt")
    with pytest.raises(ValueError, match="prompt must be text, got list"):
        check_text(["a shirt"], "prompt")
    assert check_text("一件红色的连衣裙 👗", "prompt") == "一件红色的连衣裙 👗"


def test_python_m_difflab_is_the_difflab_command():
    done = subprocess.run([sys.executable, "-m", "difflab", "info", "no-such-model"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("difflab: error: checkpoint 'no-such-model' not found")


def test_version_names_difflab_torch_and_python():
    """`difflab --version`, as a bug report wants it: one line, status 0."""
    import platform
    from importlib import metadata

    import difflab

    done = subprocess.run([sys.executable, "-m", "difflab", "--version"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (f"difflab {difflab.__version__} (torch {metadata.version('torch')}, "
                           f"Python {platform.python_version()})\n")


def test_a_resume_says_which_train_settings_it_changes(tmp_path, capsys):
    """A resume with a [train] setting other than the run's goes on with it, and says so:
    the learning rate jumping silently would pass for an exact resume."""
    out = tmp_path / "run"
    base = ["train", "digits8", "--out", str(out), *TINY, "--no-report"]
    assert main([*base, "--steps", "2"]) == 0
    capsys.readouterr()
    assert main([*base, "--steps", "3", "--resume", "--set", "train.lr=0.01"]) == 0
    said = capsys.readouterr().out
    recorded = load_checkpoint(out / "last.prev").config["run"]["train"]["lr"]
    assert (f"resuming with settings the run did not have: train.lr {recorded!r} -> "
            "0.01 (it goes on with these)") in said


def test_a_resume_that_changes_what_the_network_learns_is_refused(tmp_path, capsys):
    """A preset named on resume (the README's form) that differs from the run in [diffusion]
    would train eps-weights towards v under the run's name: refused in one line naming each
    change, and the run is untouched; the run's own config resumes it; [data] is said."""
    out = tmp_path / "run"
    base = ["train", "digits8", "--out", str(out), *TINY, "--no-report"]
    started = ["--set", "diffusion.parameterization=eps", "--set", "diffusion.schedule=linear"]
    assert main([*base, "--steps", "2", *started]) == 0
    before = (out / "last" / "manifest.json").read_bytes()
    capsys.readouterr()
    assert main([*base, "--steps", "3", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "changes what the run in" in err
    assert "diffusion.parameterization 'eps' -> 'v'" in err
    assert "diffusion.schedule 'linear' -> 'cosine'" in err and "--init-from" in err
    assert (out / "last" / "manifest.json").read_bytes() == before
    own = ["train", "--out", str(out), "--steps", "3", "--resume", "--no-report"]
    assert main([*own, "--set", "data.on_bad_image=error"]) == 0
    said = capsys.readouterr().out
    assert "settings the run did not have: data.on_bad_image 'skip' -> 'error'" in said
    assert load_checkpoint(out / "last").config["run"]["diffusion"]["parameterization"] == "eps"


def test_a_mistyped_flag_is_refused_by_its_command_with_the_nearest_flag(capsys):
    assert main(["train", "--minuts", "1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "difflab: error: unrecognized arguments: --minuts (did you mean --minutes?) "
        "(see difflab train --help)")
    assert main(["sample", "fashion-mnist", "--seeed=3"]) == 2
    assert "--seeed=3 (did you mean --seed?) (see difflab sample --help)" in (
        capsys.readouterr().err)
    assert main(["info", "x", "--zzzz"]) == 2  # nothing near: no guess
    assert capsys.readouterr().err.strip() == (
        "difflab: error: unrecognized arguments: --zzzz (see difflab info --help)")


def test_nearest_captions_without_a_caption_bank_is_refused_before_anything_runs(capsys):
    """A per-token text model has no caption bank: the flag is refused in one line that names
    it, before the lines that say what would run."""
    assert main(["sample", "shapes-text", "--prompt", "a red circle left of a blue square",
                 "--nearest-captions", "4", "-n", "1", "--steps", "2"]) == 2
    said = capsys.readouterr()
    assert said.out == ""
    assert ("--nearest-captions reads prompts through a caption bank (a text model trained "
            "with text.tokens = 'pooled'); shapes-text has none: drop the flag") in said.err


def test_more_nearest_captions_than_the_bank_holds_are_refused_before_anything_runs(capsys):
    from difflab.pipeline import Generator

    bank = len(Generator.from_checkpoint("fashion-text").caption_bank.texts)
    assert main(["sample", "fashion-text", "--prompt", "a shirt", "--nearest-captions",
                 str(bank + 1), "-n", "1"]) == 2
    said = capsys.readouterr()
    assert said.out == ""
    assert said.err == (f"difflab: error: nearest captions k={bank + 1} is out of range: "
                        f"allowed 1..{bank} (the captions in the bank), or 0: off\n")


def test_a_budget_that_ends_before_the_first_step_says_so_and_draws_nothing(tmp_path, capsys):
    """A budget smaller than choosing how to run (pictures of 256 px take 20-40 s a step on a
    laptop CPU): one line that says so and what to raise, no report of an untrained model."""
    run = tmp_path / "run"
    assert main(["train", "digits8", "--minutes", "0.0005", "--out", str(run)]) == 1
    err = capsys.readouterr().err
    assert "the budget ran out before the first step" in err and "add --resume" in err
    assert not (run / "samples.png").exists() and not (run / "best").exists()
    # and what it says works: the run goes on from there
    assert main(["train", "digits8", "--steps", "2", "--resume", "--out", str(run),
                 "--no-report"]) == 0
    assert json.loads((run / "last" / "state.json").read_text())["step"] == 2


def test_class_all_is_alone_and_any_case_and_a_negative_index_is_out_of_range(capsys):
    assert main(["sample", "mnist-digits-cond", "--class", "3", "--class", "all", "-n",
                 "2"]) == 2
    assert "--class all draws every class: give it alone" in capsys.readouterr().err
    assert main(["sample", "mnist-digits-cond", "--class", "-1", "-n", "1"]) == 2
    assert "class index -1 is out of range: allowed 0..9" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["sample", "img2img"])
def test_a_class_out_of_range_is_refused_before_a_line_says_what_runs(command, tmp_path, capsys):
    image = tmp_path / "in.png"
    Image.new("L", (28, 28)).save(image)
    edit = [str(image)] if command == "img2img" else []
    assert main([command, "mnist-digits-cond", *edit, "--class", "10", "-n", "1",
                 "--out", str(tmp_path / "x.png")]) == 2
    said = capsys.readouterr()
    assert "sampling" not in said.out
    assert said.err == "difflab: error: class index 10 is out of range: allowed 0..9\n"


def test_an_output_in_a_missing_folder_says_it_creates_it(tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "x.png"
    assert main(["sample", "mnist-digits-cond", "--class", "3", "-n", "1", "--steps", "2",
                 "--out", str(out)]) == 0
    assert f"difflab: --out: creating the folder {out.parent}" in capsys.readouterr().out
    assert out.is_file()


def test_a_class_for_a_text_model_is_refused_before_anything_runs(capsys, tmp_path):
    """shapes-text takes prompts: --class gets one line, for sample, img2img and inpaint
    alike, before any line says what would run (it was an internal error)."""
    picture = tmp_path / "p.png"
    Image.new("RGB", (32, 32)).save(picture)
    mask = tmp_path / "m.png"
    Image.new("L", (32, 32), 255).save(mask)
    for command in (["sample", "shapes-text"], ["img2img", "shapes-text", str(picture)],
                    ["inpaint", "shapes-text", str(picture), str(mask)]):
        assert main([*command, "--class", "3", "-n", "1", "--steps", "2",
                     "--out", str(tmp_path / "x.png")]) == 2
        said = capsys.readouterr()
        assert "steps" not in said.out  # img2img says its strength first, and nothing more
        assert said.err.strip() == ("difflab: error: shapes-text is text-conditional: it "
                                    "takes a --prompt, not a --class; drop --class")


def test_geneval_of_a_model_outside_the_shapes_world_is_refused_before_sampling(capsys):
    assert main(["eval", "mnist-digits-cond", "--geneval", "--images-per-prompt", "1"]) == 2
    said = capsys.readouterr()
    assert "GenEval scores a text-to-image model of the shapes world" in said.err
    assert "trained on mnist and takes no text" in said.err
    assert "%" not in said.err  # no sampling bar ran first


def test_a_text_models_npz_holds_its_prompts_and_geneval_scores_it(tmp_path, capsys):
    """`sample --out F.npz` of a text model saves one prompt per image, so the file is what
    `eval --images F.npz --geneval` reads."""
    out = tmp_path / "s.npz"
    assert main(["sample", "shapes-text", "--prompt", "a red circle", "--prompt",
                 "two blue squares", "-n", "2", "--steps", "2", "--out", str(out)]) == 0
    with np.load(out, allow_pickle=False) as f:
        assert f["prompts"].tolist() == ["a red circle", "two blue squares"]
        assert f["images"].shape == (2, 3, 32, 32)
    capsys.readouterr()
    assert main(["eval", "--images", str(out), "--geneval"]) == 0
    assert "2 images" in capsys.readouterr().out


def test_more_prompts_than_edits_is_refused_before_anything_runs(tmp_path, capsys):
    """img2img -n 1 with three prompts drew the first and dropped two after saying how each
    was read; now refused in one line (and the library refuses a longer list than n)."""
    picture = tmp_path / "p.png"
    Image.new("L", (28, 28)).save(picture)
    assert main(["img2img", "fashion-text", str(picture), "--prompt", "a coat", "--prompt",
                 "a bag", "--prompt", "a sandal", "-n", "1", "--out",
                 str(tmp_path / "x.png")]) == 2
    said = capsys.readouterr()
    assert said.out == ""
    assert said.err.strip() == ("difflab: error: 3 --prompt values and -n 1: the results take "
                                "them in turn, so 2 would not be drawn; give -n 3 or more")
    from difflab.pipeline import Generator
    with pytest.raises(ValueError, match="3 prompts for 2 samples: the samples take them in "
                                         "turn; draw at least 3"):
        Generator.from_checkpoint("fashion-text").generate(2, prompt=["a", "b", "c"], steps=1)
