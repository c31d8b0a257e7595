"""Nothing lost, nothing trusted blindly: `export` and `train --out` never replace what they
were not asked to, and every flag and config value is range-checked before any work, with one
`difflab: error:` line naming it (exit status 2) and no traceback.

The fuzz tests use hypothesis with fixed seeds (derandomize) and only values the checks must
refuse, so that no example starts real training or sampling.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from difflab import argtypes
from difflab.checkpoints.names import WEIGHTS_DIR
from difflab.cli import main
from difflab.config import CHOICES, RANGES, ConfigError, RunConfig, load_config
from difflab.viz import save_grid

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = WEIGHTS_DIR / "fashion-mnist"
FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure reproduces
    suppress_health_check=[
        HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much
    ],
)


# ---------------------------------------------------------------------------- helpers
def snapshot(folder: Path) -> dict[str, str]:
    """Every path under `folder` with the sha256 of its bytes (or 'dir' / 'link -> target')."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink():
            out[rel] = f"link -> {p.readlink()}"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def one_error_line(err: str) -> str:
    """stderr must be exactly one `difflab: error:` line, no traceback; returns it."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("difflab: error: "), err
    assert "internal error" not in lines[0], err
    return lines[0]


def refused(argv: list[str], capsys) -> str:
    """Run `difflab ARGV`: it must fail with exit status 2 and one error line (returned)."""
    capsys.readouterr()
    assert main(argv) == 2
    return one_error_line(capsys.readouterr().err)


def fake_run(folder: Path) -> Path:
    """A run folder as `difflab train` leaves it (checkpoints copied from a shipped model),
    with a file of the user's beside it."""
    folder.mkdir(parents=True)
    shutil.copytree(SHIPPED, folder / "last")
    shutil.copytree(SHIPPED, folder / "best")
    save_grid(torch.zeros(1, 1, 4, 4), folder / "samples" / "step_0000003.png")
    (folder / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    (folder / "config.json").write_text(json.dumps({"data": {}, "model": {}, "train": {}}))
    save_grid(torch.zeros(1, 1, 4, 4), folder / "samples.png")
    (folder / "notes.txt").write_text("the user's own notes")
    return folder


# ---------------------------------------------------------------------------- export
def test_export_refuses_a_folder_of_unrelated_files(tmp_path, capsys, tally):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "thesis.tex").write_text("years of work")
    (dest / "data.bin").write_bytes(bytes(range(256)))
    before = snapshot(tmp_path)
    for force in ([], ["--force"]):
        line = refused(["export", str(SHIPPED), str(dest), "--quiet", *force], capsys)
        assert "not a difflab checkpoint" in line and str(dest) in line
    assert snapshot(tmp_path) == before  # byte-identical
    tally("cli_guards", export_cases=2)


def test_export_refuses_the_run_the_source_and_its_parents_even_with_force(tmp_path, capsys,
                                                                            tally):
    run = fake_run(tmp_path / "run")
    before = snapshot(tmp_path)
    cases = [
        (run, "holds the checkpoint being exported"),  # export run/last run
        (run / "last", "is the checkpoint being exported"),
        (tmp_path, "holds the checkpoint being exported"),  # a parent further up
        (run / "last" / "inner", "inside the checkpoint being exported"),
    ]
    for dest, why in cases:
        for force in ([], ["--force"]):
            line = refused(["export", str(run / "last"), str(dest), "--quiet", *force], capsys)
            assert why in line, line
    assert snapshot(tmp_path) == before
    tally("cli_guards", export_cases=2 * len(cases))


def test_export_replaces_an_earlier_export_only_with_force(tmp_path, capsys, tally):
    dest = tmp_path / "model"
    assert main(["export", str(SHIPPED), str(dest), "--quiet", "--hardware", "first"]) == 0
    first = snapshot(dest)
    line = refused(["export", str(SHIPPED), str(dest), "--quiet", "--hardware", "second"], capsys)
    assert "already holds a difflab checkpoint" in line and "--force" in line
    assert snapshot(dest) == first
    assert main(["export", str(SHIPPED), str(dest), "--quiet", "--force",
                 "--hardware", "second"]) == 0
    config = json.loads((dest / "config.json").read_text())
    assert config["trained"]["hardware"] == "second"
    # A checkpoint with a file of the user's in it, or a training checkpoint (resumable),
    # is not replaced even with --force: either would be lost.
    (dest / "notes.txt").write_text("mine")
    kept = snapshot(dest)
    line = refused(["export", str(SHIPPED), str(dest), "--quiet", "--force"], capsys)
    assert "notes.txt" in line and snapshot(dest) == kept
    (dest / "notes.txt").unlink()
    (dest / "state.json").write_text("{}")
    line = refused(["export", str(SHIPPED), str(dest), "--quiet", "--force"], capsys)
    assert "training checkpoint" in line
    # A file where the folder would go.
    (tmp_path / "file").write_text("x")
    line = refused(["export", str(SHIPPED), str(tmp_path / "file"), "--quiet"], capsys)
    assert "is not a folder" in line and (tmp_path / "file").read_text() == "x"
    tally("cli_guards", export_cases=5)


def test_export_into_a_new_or_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    for dest in (tmp_path / "empty", tmp_path / "new" / "model"):
        assert main(["export", str(SHIPPED), str(dest), "--quiet"]) == 0
        assert (dest / "model.safetensors").is_file()


# ---------------------------------------------------------------------------- train --out
def test_train_refuses_an_existing_run_without_resume_or_overwrite(tmp_path, capsys, tally):
    run = fake_run(tmp_path / "run")
    before = snapshot(tmp_path)
    line = refused(["train", "digits8", "--out", str(run), "--steps", "1"], capsys)
    assert "already holds a run" in line and "--resume" in line and "--overwrite" in line
    line = refused(["train", "digits8", "--out", str(run), "--resume", "--overwrite"], capsys)
    assert "give one" in line
    line = refused(["train", "digits8", "--out", str(run / "last"), "--steps", "1"], capsys)
    assert "is a checkpoint folder" in line
    line = refused(["train", "digits8", "--out", str(run / "notes.txt")], capsys)
    assert "is a file" in line
    line = refused(["train", "digits8", "--out", str(tmp_path / "nothing"), "--resume"], capsys)
    assert "no checkpoint" in line
    assert snapshot(tmp_path) == before
    tally("cli_guards", train_out_cases=5)


def test_overwrite_removes_only_what_difflab_wrote(tmp_path, capsys, tally):
    from tiny_run import TINY, as_flags

    run = fake_run(tmp_path / "run")
    (run / "samples" / "my_drawing.png").write_bytes(b"mine")
    # A last/ that difflab did not write: --overwrite refuses, and removes nothing at all.
    shutil.rmtree(run / "best")
    (run / "best").mkdir()
    (run / "best" / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)
    line = refused(["train", "digits8", "--out", str(run), "--overwrite", "--steps", "1"],
                   capsys)
    assert "not a difflab checkpoint" in line and str(run / "best") in line
    assert snapshot(tmp_path) == before
    shutil.rmtree(run / "best")
    shutil.copytree(SHIPPED, run / "best")
    # Now every piece is difflab's: a real (tiny) run replaces them, the user's files stay.
    code = main(["train", "digits8", "--out", str(run), "--overwrite", "--steps", "1",
                 "--no-report", *as_flags(TINY)])
    assert code == 0, capsys.readouterr().err
    assert (run / "notes.txt").read_text() == "the user's own notes"
    assert (run / "samples" / "my_drawing.png").read_bytes() == b"mine"
    assert not (run / "samples" / "step_0000003.png").exists()
    assert not (run / "samples.png").exists()  # the old report's, not rewritten (--no-report)
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 1 and "loss" in rows[0]  # the new run's log, not appended
    assert "removed" in capsys.readouterr().out
    tally("cli_guards", train_out_cases=2)


def test_an_overwrite_that_cannot_start_leaves_the_old_run_whole(tmp_path, capsys):
    """--overwrite removes the old run only once the new one has its data and network: a new
    run that cannot start (more batch than images here; a mistyped data.root alike) leaves
    every file as it was."""
    from tiny_run import TINY, as_flags

    run = fake_run(tmp_path / "run")
    before = snapshot(tmp_path)
    line = refused(["train", "digits8", "--out", str(run), "--overwrite", "--steps", "1",
                    *as_flags(TINY), "--set", "data.limit=20", "--set", "train.batch_size=32"],
                   capsys)
    assert "fewer than train.batch_size" in line
    assert snapshot(tmp_path) == before


def test_what_a_user_put_in_a_checkpoint_folder_is_kept_when_it_is_replaced(tmp_path, capsys):
    """Files a user put in last/ or best/ (not in the checkpoint's manifest) move to
    kept_from_NAME/ when training rotates the checkpoint away or --overwrite replaces it, and
    a warning says so; difflab's own files go as before."""
    from tiny_run import TINY, as_flags

    run = tmp_path / "run"
    base = ["train", "digits8", "--out", str(run), *as_flags(TINY), "--no-report",
            "--set", "train.checkpoint_every=1"]
    assert main([*base, "--steps", "1"]) == 0
    (run / "last" / "NOTES.txt").write_text("my notes about step 1")
    capsys.readouterr()
    assert main([*base, "--steps", "3", "--resume"]) == 0  # last/ -> last.prev/ -> deleted
    err = capsys.readouterr().err
    assert (run / "kept_from_last" / "NOTES.txt").read_text() == "my notes about step 1"
    assert "NOTES.txt, which difflab did not write; moved to" in err
    assert "difflab: warning:" in err and "Traceback" not in err
    (run / "best" / "keep.txt").write_text("mine")
    assert main([*base, "--steps", "1", "--overwrite"]) == 0
    assert (run / "kept_from_best" / "keep.txt").read_text() == "mine"
    assert (run / "kept_from_last" / "NOTES.txt").is_file()  # a new run leaves it alone
    assert not any(p.name.startswith(".") for p in run.iterdir())  # no debris left


@pytest.mark.parametrize("name, mine", [
    ("samples.png", b"\x89PNG my own picture"),
    ("loss.png", b"not even a picture"),
    ("command.sh", b"#!/bin/sh\necho my own script\n"),
    ("metrics.jsonl", b"my notes, not JSON\n"),
])
def test_a_users_file_with_a_run_files_name_is_never_replaced(tmp_path, capsys, tally, name,
                                                               mine):
    """A folder holding only a file of the user's that shares a name with one a run writes:
    neither a new run nor --overwrite may replace or remove it, and --resume does not take it
    for a run that stopped before its first checkpoint."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / name).write_bytes(mine)
    before = snapshot(tmp_path)
    for flags in ([], ["--overwrite"], ["--resume"]):
        line = refused(["train", "digits8", "--out", str(folder), "--steps", "1", *flags],
                       capsys)
        assert str(folder / name) in line and "leaves it alone" in line
        assert snapshot(tmp_path) == before
    tally("cli_guards", train_out_cases=3)


def test_every_file_of_the_users_in_the_way_is_named_at_once(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text('{"my": "settings"}')
    (folder / "samples.png").write_bytes(b"\x89PNG my picture")
    before = snapshot(tmp_path)
    line = refused(["train", "digits8", "--out", str(folder), "--overwrite"], capsys)
    assert "config.json, samples.png in " in line and "leaves them alone" in line
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_a_whole_runs_pictures_from_before_they_were_marked(tmp_path,
                                                                              capsys):
    from PIL import Image
    from tiny_run import TINY, as_flags

    run = fake_run(tmp_path / "run")
    for name in ("samples.png", "samples/step_0000003.png"):
        Image.new("L", (8, 8)).save(run / name)  # a picture, without difflab's mark
    code = main(["train", "digits8", "--out", str(run), "--overwrite", "--steps", "1",
                 "--no-report", *as_flags(TINY)])
    assert code == 0, capsys.readouterr().err
    assert not (run / "samples.png").exists() and not (run / "samples").exists()
    assert (run / "notes.txt").read_text() == "the user's own notes"


def test_an_unmarked_picture_beside_a_run_that_marks_its_own_is_the_users(tmp_path, capsys):
    """Unmarked pictures are trusted only beside a run from before difflab marked them. A
    run that marks its pictures (its state says so, or one of its pictures carries the mark)
    cannot have written an unmarked one: a user's picture dropped there is never replaced."""
    from PIL import Image
    from tiny_run import TINY, as_flags

    run = tmp_path / "run"
    assert main(["train", "digits8", "--out", str(run), "--steps", "1", "--no-report",
                 *as_flags(TINY)]) == 0, capsys.readouterr().err
    Image.new("RGB", (30, 20), "red").save(run / "samples.png")  # the user's own picture
    before = snapshot(tmp_path)
    line = refused(["train", "digits8", "--out", str(run), "--overwrite", "--steps", "1"],
                   capsys)
    assert str(run / "samples.png") in line and "leaves it alone" in line
    assert snapshot(tmp_path) == before
    # a run without the state's word, whose sample grids carry the mark: the same
    older = fake_run(tmp_path / "older")
    Image.new("L", (8, 8)).save(older / "samples.png")  # unmarked, beside marked grids
    before = snapshot(tmp_path)
    line = refused(["train", "digits8", "--out", str(older), "--overwrite", "--steps", "1"],
                   capsys)
    assert str(older / "samples.png") in line
    assert snapshot(tmp_path) == before


def test_sample_replaces_its_own_picture_but_never_the_users(tmp_path, capsys, tally):
    """Rerunning a command rewrites what difflab wrote; a user's file at --out stays."""
    from difflab.ownership import written_by_difflab

    mine, ours = tmp_path / "photo.png", tmp_path / "grid.png"
    mine.write_bytes(b"\x89PNG a holiday photo")
    before = snapshot(tmp_path)
    for out in (mine, tmp_path / "photo.npz"):
        if out.suffix == ".npz":
            out.write_bytes(b"my arrays")
            before = snapshot(tmp_path)
        argv = ["sample", str(SHIPPED), "-n", "2", "--steps", "1", "--out", str(out)]
        line = refused(argv, capsys)
        assert str(out) in line and "did not write it" in line
        assert snapshot(tmp_path) == before
    for out in (ours, ours, tmp_path / "draws.npz", tmp_path / "draws.npz"):  # twice each
        argv = ["sample", str(SHIPPED), "-n", "2", "--steps", "1", "--out", str(out)]
        assert main(argv) == 0, capsys.readouterr().err
        assert written_by_difflab(out)
    tally("cli_guards", sample_out_cases=4)


def test_an_output_folder_that_cannot_be_written_is_refused_before_sampling(tmp_path, capsys):
    """A folder the process may not write in (here /sys, which not even root may, or a
    read-only folder for other users) is named before any sampling, not after it; a
    successful run leaves no trace of the check."""
    if os.geteuid() == 0:
        locked = Path("/sys")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
    for out in (locked / "x.png", locked / "new" / "x.png"):
        line = refused(["sample", str(SHIPPED), "-n", "2", "--out", str(out)], capsys)
        assert f"cannot write in {locked} (permission denied)" in line
    assert main(["sample", str(SHIPPED), "-n", "2", "--steps", "1",
                 "--out", str(tmp_path / "ok.png")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "locked") == ["ok.png"]


# ---------------------------------------------------------------------------- config fuzz
def config_keys(cls: type = RunConfig, prefix: str = "") -> dict[str, object]:
    """Every leaf key of the run config ("train.lr", ...) and its default value."""
    keys = {}
    for f in dataclasses.fields(cls):
        default = getattr(cls(), f.name)
        if dataclasses.is_dataclass(default):
            keys.update(config_keys(type(default), f"{prefix}{f.name}."))
        else:
            keys[f"{prefix}{f.name}"] = default
    return keys


KEYS = sorted(config_keys())
HOSTILE = [
    "nan", "inf", "-inf", "+inf", "-1", "0", "-0.0", "1e9", "1e308", "-1e308", "1e999",
    "99999999999999999999999999", "-99999999999999999999", "0.5", "1.0", "2", "true", "false",
    '""', '"none"', "none", "[]", "[nan, 1]", "[0.9, 1.5]", "[-1, 0.5]", "[1, 2, 3]", "{}",
    "{a = 1}", "abc", "'quoted'", "[[1]]", "1_000", "0x10", "1e-320", "3.5e38",
]  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(HOSTILE),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.text(max_size=12),
)


def config_values(cfg: RunConfig) -> dict[str, object]:
    flat = {}
    for section in dataclasses.fields(cfg):
        for f in dataclasses.fields(getattr(cfg, section.name)):
            flat[f"{section.name}.{f.name}"] = getattr(getattr(cfg, section.name), f.name)
    return flat


def in_range(key: str, value: object) -> bool:
    numbers = value if isinstance(value, tuple) else (value,)
    for v in numbers:
        if isinstance(v, float) and not math.isfinite(v):
            return False
        if key in RANGES and isinstance(v, int | float) and not isinstance(v, bool):
            if v not in RANGES[key]:
                return False
    return key not in CHOICES or value in CHOICES[key]


def edges(key: str) -> list[str]:
    """Values at and just beside the bounds of a key's range: where off-by-one and open vs
    closed mistakes live."""
    allowed = RANGES.get(key)
    if allowed is None:
        return ["0"]
    out = []
    for bound in (allowed.low, allowed.high):
        if bound is not None:
            out += [repr(bound), repr(float(bound)), str(int(bound) + 1), str(int(bound) - 1),
                    repr(math.nextafter(bound, math.inf)), repr(math.nextafter(bound, -math.inf))]
    return out


@FUZZ
@given(data=st.data())
def test_fuzzed_config_values_load_in_range_or_name_the_key(data, tally):
    key = data.draw(st.sampled_from(KEYS))
    text = data.draw(st.one_of(VALUES, st.sampled_from(edges(key))))
    try:
        cfg = load_config(None, [f"{key}={text}"])
    except ConfigError as e:
        assert key in str(e), (key, text, str(e))
        tally("fuzz_config", cases=1, refused=1)
        return
    except Exception as e:  # any other exception is a failure to validate
        tally("fuzz_config", cases=1, other_exceptions=1)
        raise AssertionError(f"{key}={text}: {type(e).__name__}: {e}") from e
    bad = {k: v for k, v in config_values(cfg).items() if not in_range(k, v)}
    assert not bad, (key, text, bad)
    tally("fuzz_config", cases=1, loaded=1)


def test_every_key_with_every_hostile_value(tally):
    """The same property, exhaustively over KEYS x HOSTILE (2,310 loads at the time of
    writing; before the ranges, 224 of them loaded a value out of range without a word)."""
    for key in KEYS:
        for text in HOSTILE:
            try:
                cfg = load_config(None, [f"{key}={text}"])
            except ConfigError as e:
                assert key in str(e), (key, text, str(e))
                tally("fuzz_config", cases=1, refused=1)
                continue
            bad = {k: v for k, v in config_values(cfg).items() if not in_range(k, v)}
            assert not bad, (key, text, bad)
            tally("fuzz_config", cases=1, loaded=1)


def test_every_numeric_key_has_a_range():
    """A new numeric config key gets an entry in RANGES (or is listed here with why not)."""
    unchecked = {
        "train.ema_warmup", "train.compile", "data.hflip", "data.folder_labels",
        "data.download", "diffusion.zero_terminal_snr", "sample.relation_regions",  # booleans
        "data.channels",  # DataConfig allows 1 or 3 only
    }  # fmt: skip
    numeric = [
        k for k, v in config_keys().items()
        if isinstance(v, int | float | tuple) or v is None and k not in CHOICES
    ]  # fmt: skip
    strings = {"data.root", "data.label_column", "data.classes", "latent.autoencoder",
               "text.encoder"}
    missing = [k for k in numeric if k not in RANGES and k not in unchecked | strings]
    assert not missing, f"numeric keys without a range in difflab.config.RANGES: {missing}"


# ---------------------------------------------------------------------------- CLI fuzz
def outside(r: argtypes.Range, whole: bool) -> st.SearchStrategy[str]:
    """Strings an argparse type with range `r` must refuse."""
    bad: list[st.SearchStrategy[str]] = [
        st.sampled_from(["nan", "inf", "-inf", "", "abc", "1e", "--", "0x1", "½", "1,5"]),
    ]
    if r.low is not None:
        low = st.floats(max_value=r.low, allow_nan=False, allow_infinity=False)
        if whole:
            bad.append(st.integers(max_value=int(r.low) - 1).map(str))
            bad.append(st.floats(allow_nan=False, allow_infinity=False).filter(
                lambda x: x != int(x)).map(repr))  # 1.5 is no whole number
        else:
            bad.append((low if r.low_open else low.filter(lambda x: x < r.low)).map(repr))
    if r.high is not None:
        if whole:
            bad.append(st.integers(min_value=int(r.high) + 1).map(str))
        else:
            high = st.floats(min_value=r.high, allow_nan=False, allow_infinity=False)
            bad.append((high if r.high_open else high.filter(lambda x: x > r.high)).map(repr))
    return st.one_of(bad)


# (command and its positional arguments, flag, range, whole number?)
FLAGS = [
    (("sample", "fashion-mnist"), "--guidance", argtypes.Range(0, argtypes.MAX_GUIDANCE), False),
    (("sample", "fashion-mnist"), "--eta", argtypes.Range(0, 1), False),
    (("sample", "fashion-mnist"), "--steps", argtypes.Range(1, argtypes.MAX_STEPS), True),
    (("sample", "fashion-mnist"), "-n", argtypes.Range(1, argtypes.MAX_SAMPLES), True),
    (("sample", "fashion-mnist"), "--seed", argtypes.Range(0, argtypes.MAX_SEED), True),
    (("sample", "fashion-mnist"), "--batch-size", argtypes.Range(1, argtypes.MAX_BATCH), True),
    (("sample", "fashion-mnist"), "--scale", argtypes.Range(1, argtypes.MAX_SCALE), True),
    (("sample", "fashion-mnist"), "--nrow", argtypes.Range(1, argtypes.MAX_GRID), True),
    (("sample", "fashion-mnist"), "--nearest-captions", argtypes.Range(0, 100_000), True),
    (("img2img", "fashion-mnist", "x.png"), "--strength", argtypes.Range(0, 1), False),
    (("train", "digits8"), "--minutes", argtypes.Range(0, 10**7, low_open=True), False),
    (("train", "digits8"), "--steps", argtypes.Range(1, 10**9), True),
    (("eval", "fashion-mnist"), "--samples", argtypes.Range(4, argtypes.MAX_SAMPLES), True),
    (("eval", "fashion-mnist"), "--guidance", argtypes.Range(0, argtypes.MAX_GUIDANCE), False),
    (("eval", "fashion-mnist"), "--nll-timesteps", argtypes.Range(1, argtypes.MAX_STEPS), True),
    (("viz", "schedules"), "--timesteps", argtypes.Range(2, argtypes.MAX_STEPS), True),
]


@FUZZ
@given(data=st.data())
def test_fuzzed_flags_are_refused_in_one_line(data, capsys, tmp_path, monkeypatch, tally):
    monkeypatch.chdir(tmp_path)  # whatever happened, nothing is written where the tests run
    command, flag, allowed, whole = data.draw(st.sampled_from(FLAGS))
    value = data.draw(outside(allowed, whole))
    line = refused([*command, f"{flag}={value}"], capsys)
    assert flag in line, line
    assert list(tmp_path.iterdir()) == []
    tally("fuzz_cli", cases=1, refused=1)


@FUZZ
@given(key=st.sampled_from(KEYS), text=VALUES)
def test_fuzzed_train_settings_are_refused_before_any_work(key, text, capsys, tmp_path,
                                                          monkeypatch, tally):
    """`difflab train --set KEY=VALUE` with a value load_config refuses: exit status 2, one
    line naming the key, nothing written. (Values it accepts would train: not run here.)"""
    try:
        load_config(ROOT / "configs" / "digits8.toml", [f"{key}={text}"])
    except ConfigError:
        pass
    else:
        assume(False)
    monkeypatch.chdir(tmp_path)
    line = refused(["train", "digits8", "--set", f"{key}={text}", "--out", "run"], capsys)
    assert key in line, line
    assert not (tmp_path / "run").exists()
    tally("fuzz_cli", cases=1, refused=1)


@pytest.mark.parametrize(
    "argv, says",
    [
        (["sample", "fashion-mnist", "--guidance", "inf"], "--guidance"),
        (["sample", "fashion-mnist", "--guidance", "1e9"], "<= 50"),
        (["train", "digits8", "--set", "train.grad_clip=-1"], "train.grad_clip must be > 0"),
        (["train", "digits8", "--set", "train.lr=nan"], "train.lr must be a finite number"),
        (["train", "digits8", "--set", "train.ema_decay=1"], "train.ema_decay must be"),
        (["train", "digits8", "--set", "train.betas=[0.9, 1.0]"], "train.betas must each"),
        (["train", "digits8", "--set", "diffusion.timesteps=1"], "diffusion.timesteps"),
        (["train", "digits8", "--set", "sample.sampler=fast"], "sample.sampler"),
        (["train", "digits8", "--set", "sample.steps=5000"], "diffusion.timesteps"),
        (["train", "digits8", "--set", "model.preset=huge"], "model.preset"),
        (["train", "digits8", "--minutes", "inf"], "--minutes"),
        (["sample", "fashion-mnist", "--device", "banana"], "--device"),
        (["sample", "fashion-mnist", "-n", "20000"], "PNG grid holds at most"),
        (["sample", "fashion-mnist", "-n", "10000", "--scale", "16"], "megapixels"),
        (["sample", "fashion-mnist", "-n", "5000", "--scale", "4", "--gif", "g.gif"], "the GIF"),
        (["sample", "fashion-mnist", "--guidance=--"], "expected one argument"),
        (["sample", "fashion-mnist", "--out", "samples.jpg"], ".png or .npz"),
        (["train", "digits8", "--set", "model.overrides.base_channels=100000"], "2048"),
        (["train", "digits8", "--set", "train.seed=-1"], "train.seed"),
        (["sample", "fashion-mnist", "--sampler", "dpm"], "dpmpp_2m"),
        (["eval", "fashion-mnist", "--sampler", "dpm"], "dpmpp_2m"),
        (["nosuchcommand"], "invalid choice"),
        (["sample"], "required"),
    ],
)
def test_bad_values_named(argv, says, capsys, tmp_path, monkeypatch, tally):
    monkeypatch.chdir(tmp_path)
    assert says in refused(argv, capsys)
    assert list(tmp_path.iterdir()) == []
    tally("cli_guards", named_value_cases=1)


def test_debug_shows_the_traceback(capsys, monkeypatch):
    """--debug (before or after the command) and DIFFLAB_DEBUG re-raise what is not a plain
    usage error, so a bug can be seen whole."""
    argv = ["train", "digits8", "--set", "train.lr=nan"]
    with pytest.raises(ConfigError):
        main(["--debug", *argv])
    with pytest.raises(ConfigError):
        main([*argv, "--debug"])
    monkeypatch.setenv("DIFFLAB_DEBUG", "1")
    with pytest.raises(ConfigError):
        main(argv)
    monkeypatch.setenv("DIFFLAB_DEBUG", "0")
    assert main(argv) == 2


def test_interrupt_is_one_line_and_130(monkeypatch, capsys):
    from difflab.cli import info

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(info, "cmd_info", interrupted)
    assert main(["info", "fashion-mnist"]) == 130
    assert capsys.readouterr().err.strip() == "difflab: interrupted"


def test_a_bug_is_reported_as_one(monkeypatch, capsys):
    """An exception that is no user's doing says so (exit status 1), still in one line."""
    from difflab.cli import info

    def buggy(args):
        return {}["missing"]

    monkeypatch.setattr(info, "cmd_info", buggy)
    assert main(["info", "fashion-mnist"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error, KeyError" in err and "--debug" in err


def test_a_users_own_samples_folder_is_not_taken_for_a_run(tmp_path, capsys):
    """samples/ is a name a run writes, but one that holds no sample grid of difflab's is the
    user's: it is named as such, not called a run that stopped before its first checkpoint."""
    folder = tmp_path / "mine"
    (folder / "samples").mkdir(parents=True)
    (folder / "samples" / "x.png").write_bytes(b"\x89PNG my own")
    before = snapshot(tmp_path)
    for flags in ([], ["--overwrite"], ["--resume"]):
        line = refused(["train", "digits8", "--out", str(folder), "--steps", "1", *flags],
                       capsys)
        assert f"{folder / 'samples'} is not the folder of sample grids difflab writes" in line
        assert "stopped before its first checkpoint" not in line
        assert snapshot(tmp_path) == before


def test_an_overwrite_it_may_not_carry_out_is_refused_before_anything_goes(tmp_path, capsys,
                                                                             monkeypatch):
    """A folder of the old run the user may not write in (root passes every permission check,
    so the check's answer is set here): one line naming that folder, nothing removed."""
    import difflab.cli.runs as runs

    run = fake_run(tmp_path / "run")
    before = snapshot(tmp_path)
    real_access = os.access
    monkeypatch.setattr(runs.os, "access",
                        lambda p, mode: Path(p).name != "best" and real_access(p, mode))
    line = refused(["train", "digits8", "--out", str(run), "--overwrite", "--steps", "1"],
                   capsys)
    assert f"cannot remove what the old run wrote in {run / 'best'}: permission denied" in line
    assert snapshot(tmp_path) == before
