"""Checkpoints: atomic folder writes with a manifest, a previous version to fall back on, no
pickles on load, clear errors for foreign weights. The fault-injection tests are in reliability/."""

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from difflab.checkpoints import store as ck
from difflab.training.ema import EMA


def small_state(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 2).state_dict()


def test_round_trip_with_training_state(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters())
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    rng = torch.get_rng_state()
    ck.save_checkpoint(
        tmp_path / "c",
        config={"kind": "x"},
        model=net.state_dict(),
        ema=net.state_dict(),
        optimizer=opt.state_dict(),
        state={"step": 7, "rng": ck.encode_bytes(rng)},
    )
    got = ck.load_checkpoint(tmp_path / "c", with_training_state=True)
    assert got.config["kind"] == "x" and got.state["step"] == 7 and got.has_manifest
    torch.testing.assert_close(got.model["weight"], net.weight.detach())
    assert torch.equal(ck.decode_bytes(got.state["rng"]), rng)
    assert got.optimizer["state"][0]["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["c"]  # no temporary folders left
    listed = json.loads((tmp_path / "c" / "manifest.json").read_text())["files"]
    on_disk = sorted(os.listdir(tmp_path / "c"))
    assert sorted([*listed, "manifest.json"]) == on_disk  # every file, weights too
    assert ck.is_difflab_checkpoint(tmp_path / "c")


def test_fp16_cast_for_shipping(tmp_path):
    ck.save_checkpoint(tmp_path / "c", config={}, model=small_state(), dtype=torch.float16)
    assert ck.load_checkpoint(tmp_path / "c").model["weight"].dtype == torch.float16


def test_overwrite_is_atomic_replacement(tmp_path):
    ck.save_checkpoint(tmp_path / "c", config={"v": 1}, model=small_state(0))
    ck.save_checkpoint(tmp_path / "c", config={"v": 2}, model=small_state(1))
    assert ck.load_checkpoint(tmp_path / "c").config["v"] == 2
    assert sorted(os.listdir(tmp_path)) == ["c"]


def test_keep_previous_retains_one_older_checkpoint(tmp_path):
    for v in (1, 2, 3):
        ck.save_checkpoint(tmp_path / "c", config={"v": v}, model=small_state(v),
                           keep_previous=True)
    assert sorted(os.listdir(tmp_path)) == ["c", "c.prev"]
    assert ck.load_checkpoint(tmp_path / "c.prev").config["v"] == 2


def test_crash_mid_write_keeps_previous(tmp_path, monkeypatch):
    ck.save_checkpoint(tmp_path / "c", config={"v": 1}, model=small_state(0))
    calls = []

    def full_after_one(path, data):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return write(path, data)

    write = ck._write_file
    monkeypatch.setattr(ck, "_write_file", full_after_one)
    with pytest.raises(ck.CheckpointError, match="No space left.*previous checkpoint is intact"):
        ck.save_checkpoint(tmp_path / "c", config={"v": 2}, model=small_state(1))
    assert ck.load_checkpoint(tmp_path / "c").config["v"] == 1
    assert sorted(os.listdir(tmp_path)) == ["c"]  # the temporary folder is gone


def test_a_missing_last_falls_back_to_its_previous_then_best(tmp_path):
    run = tmp_path / "run"
    for v in (1, 2):
        ck.save_checkpoint(run / "last", config={"v": v}, model=small_state(v), keep_previous=True)
    ck.save_checkpoint(run / "best", config={"v": 0}, model=small_state(0))
    shutil.rmtree(run / "last")  # as a crash between the two renames of a write leaves it
    with pytest.warns(ck.CheckpointWarning, match="using .*last.prev instead: .*last is missing"):
        assert ck.load_checkpoint(run / "last").config["v"] == 1
    (run / "last.prev" / "model.safetensors").write_bytes(b"damaged")
    damaged = "using .*best instead: .*last is missing.*last.prev.*does not match"
    with pytest.warns(ck.CheckpointWarning, match=damaged):
        assert ck.load_checkpoint(run / "last").config["v"] == 0
    with pytest.raises(ck.CheckpointError, match="not a folder"):
        ck.load_checkpoint(run / "last", fallback=False)


def test_debris_of_dead_writers_only_is_removed(tmp_path):
    ck.save_checkpoint(tmp_path / "last", config={}, model=small_state())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    host = ck._host()
    debris = tmp_path / f".last.tmp-{host}-{dead}-0123abcd"
    trash = tmp_path / f".best.del-{host}-{dead}-89abcdef"
    alive = tmp_path / f".last.tmp-{host}-1-0123abcd"  # pid 1 is always running
    other_host = tmp_path / f".last.tmp-elsewhere-{dead}-0123abcd"
    user = tmp_path / ".last.tmp-mine"  # not difflab's pattern: never touched
    for d in (debris, trash, alive, other_host, user):
        d.mkdir()
    with pytest.warns(ck.CheckpointWarning, match="interrupted checkpoint write"):
        ck.load_checkpoint(tmp_path / "last")
    left = set(os.listdir(tmp_path))
    assert debris.name not in left and trash.name not in left
    assert {alive.name, other_host.name, user.name, "last"} <= left


def test_never_replaces_a_folder_difflab_did_not_write(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(ck.CheckpointError, match="not a difflab checkpoint; refusing"):
        ck.save_checkpoint(tmp_path / "photos", config={}, model=small_state())
    assert (tmp_path / "photos" / "cat.jpg").read_bytes() == b"meow"
    assert not ck.is_difflab_checkpoint(tmp_path / "photos")
    assert not ck.is_difflab_checkpoint(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()  # an empty folder may be filled
    ck.save_checkpoint(tmp_path / "empty", config={}, model=small_state())
    assert ck.is_difflab_checkpoint(tmp_path / "empty")


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ck.CheckpointError, match="not a folder"):
        ck.load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ck.CheckpointError, match="no config.json"):
        ck.load_checkpoint(tmp_path / "empty")
    ck.save_checkpoint(tmp_path / "c", config={}, model=small_state())
    (tmp_path / "c" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ck.CheckpointError, match="model.safetensors does not match manifest"):
        ck.load_checkpoint(tmp_path / "c")
    (tmp_path / "c" / "manifest.json").unlink()  # without a manifest: the format's own check
    with pytest.raises(ck.CheckpointError, match="cannot read the weights"):
        ck.load_checkpoint(tmp_path / "c")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text(json.dumps({"foo": 1}))
    (tmp_path / "d" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ck.CheckpointError, match="not written by difflab"):
        ck.load_checkpoint(tmp_path / "d")
    (tmp_path / "d" / "config.json").write_text("[1, 2]")
    with pytest.raises(ck.CheckpointError, match="config.json must hold a JSON object"):
        ck.load_checkpoint(tmp_path / "d")


def test_export_is_atomic_and_leaves_no_previous(tmp_path):
    ck.save_checkpoint(tmp_path / "run" / "last", config={"v": 1}, model=small_state(0),
                       ema=small_state(1), state={"step": 3, "elapsed_seconds": 60.0})
    for _ in range(2):  # a second export replaces the first
        ck.export_for_inference(tmp_path / "run" / "last", tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["out", "run"]
    got = ck.load_checkpoint(tmp_path / "out")
    assert got.config["trained"] == {"step": 3, "train_minutes": 1.0, "weights": "ema"}
    assert torch.equal(got.model["weight"], small_state(1)["weight"])


def test_weights_from_another_model_are_refused():
    other = torch.nn.Linear(5, 2).state_dict()
    with pytest.raises(ck.CheckpointError, match="different model.*shape mismatch"):
        ck.load_weights_into(torch.nn.Linear(3, 2), other, "ckpt")
    with pytest.raises(ck.CheckpointError, match="missing"):
        ck.load_weights_into(torch.nn.Sequential(torch.nn.Linear(3, 2)), small_state(), "ckpt")


def test_ema_tracks_average():
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    ema = EMA(net, decay=0.9, warmup=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)
    assert float(ema.model.weight) == pytest.approx(0.1)
    ema.update(net)
    assert float(ema.model.weight) == pytest.approx(0.19)
    with pytest.raises(ValueError, match="decay"):
        EMA(net, decay=1.0)
    warm = EMA(net, decay=0.999)
    assert warm.current_decay() == pytest.approx(0.1)
    # It lists its tensors once: a loaded state goes on from the loaded values, and another
    # model of the same shape is averaged in from its own weights.
    ema.load_state_dict({"weight": torch.tensor([[0.5]])}, num_updates=2)
    ema.update(net)
    assert float(ema.model.weight) == pytest.approx(0.9 * 0.5 + 0.1 * 1.0)
    other = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(other.weight, -1.0)
    ema.update(other)
    assert float(ema.model.weight) == pytest.approx(0.9 * 0.55 - 0.1)


def test_shipped_models_carry_a_matching_manifest():
    """Their weights are checked on every load; a hand edit of a shipped config.json needs
    `checkpoint.write_manifest(folder)` after it."""
    from difflab.checkpoints.names import WEIGHTS_DIR

    for folder in sorted(p for p in WEIGHTS_DIR.iterdir() if p.is_dir()):
        got = ck.load_checkpoint(folder, fallback=False)
        assert got.has_manifest, f"{folder} has no manifest.json"


def test_a_failed_switch_puts_every_folder_back(tmp_path, monkeypatch):
    """ENOSPC can reach the renames too: the folders go back where they were."""
    for v in (1, 2):
        ck.save_checkpoint(tmp_path / "c", config={"v": v}, model=small_state(v),
                           keep_previous=True)
    replace, calls = os.replace, []

    def third_fails(src, dst):
        calls.append(src)
        if len(calls) == 3:  # .c.tmp-… -> c, after c.prev went aside and c became c.prev
            raise OSError(errno.ENOSPC, "No space left on device")
        return replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", third_fails)
    with pytest.raises(ck.CheckpointError, match="No space left"):
        ck.save_checkpoint(tmp_path / "c", config={"v": 3}, model=small_state(3),
                           keep_previous=True)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["c", "c.prev"]
    assert ck.load_checkpoint(tmp_path / "c").config["v"] == 2
    assert ck.load_checkpoint(tmp_path / "c.prev").config["v"] == 1
