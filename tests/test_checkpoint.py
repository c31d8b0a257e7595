"""Checkpoints: atomic folder writes, no pickles on load, clear errors for foreign weights."""

import json
import os

import pytest
import torch

from difflab.training import checkpoint as ck
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
    assert got.config["kind"] == "x" and got.state["step"] == 7
    torch.testing.assert_close(got.model["weight"], net.weight.detach())
    assert torch.equal(ck.decode_bytes(got.state["rng"]), rng)
    assert got.optimizer["state"][0]["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["c"]  # no temporary folders left


def test_fp16_cast_for_shipping(tmp_path):
    ck.save_checkpoint(tmp_path / "c", config={}, model=small_state(), dtype=torch.float16)
    assert ck.load_checkpoint(tmp_path / "c").model["weight"].dtype == torch.float16


def test_overwrite_is_atomic_replacement(tmp_path):
    ck.save_checkpoint(tmp_path / "c", config={"v": 1}, model=small_state(0))
    ck.save_checkpoint(tmp_path / "c", config={"v": 2}, model=small_state(1))
    assert ck.load_checkpoint(tmp_path / "c").config["v"] == 2
    assert sorted(os.listdir(tmp_path)) == ["c"]


def test_crash_mid_write_keeps_previous(tmp_path, monkeypatch):
    ck.save_checkpoint(tmp_path / "c", config={"v": 1}, model=small_state(0))

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(OSError):
        ck.save_checkpoint(tmp_path / "c", config={"v": 2}, model=small_state(1))
    assert ck.load_checkpoint(tmp_path / "c").config["v"] == 1


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ck.CheckpointError, match="not a folder"):
        ck.load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ck.CheckpointError, match="no config.json"):
        ck.load_checkpoint(tmp_path / "empty")
    ck.save_checkpoint(tmp_path / "c", config={}, model=small_state())
    (tmp_path / "c" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ck.CheckpointError, match="cannot read the weights"):
        ck.load_checkpoint(tmp_path / "c")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text(json.dumps({"foo": 1}))
    (tmp_path / "d" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ck.CheckpointError, match="not written by difflab"):
        ck.load_checkpoint(tmp_path / "d")


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
