"""Post-hoc EMA (EDM2, Karras et al. 2024): the power EMA's exact profile, the least-squares
rebuild from snapshots, and the run that keeps them, resumes them and exports a rebuilt average."""

import math

import numpy as np
import pytest
import torch
from tiny_run import tiny_config

from difflab.checkpoints.store import CheckpointError, load_checkpoint
from difflab.cli import main
from difflab.training.ema import PowerEMA
from difflab.training.posthoc_ema import (
    MAX_SIGMA_REL,
    gamma_to_sigma_rel,
    profile,
    profile_sigma_rel,
    sigma_rel_to_gamma,
    solve_coefficients,
)
from difflab.training.posthoc_snapshots import SNAPSHOT_DIR, rebuild, snapshot_name
from difflab.training.trainer import Trainer


def test_lengths_and_exponents_match_edm2():
    # EDM2 sec. 3: sigma_rel 0.10 and 0.05 are gamma 6.94 and 16.97
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    assert gamma_to_sigma_rel(0.0) == pytest.approx(MAX_SIGMA_REL)  # the uniform average
    for s in (0.01, 0.08, 0.2):
        assert gamma_to_sigma_rel(sigma_rel_to_gamma(s)) == pytest.approx(s, rel=1e-12)
    for bad in (0.0, -0.1, 0.3):
        with pytest.raises(ValueError, match="EMA length"):
            sigma_rel_to_gamma(bad)


class _Steps(torch.nn.Module):
    """One float64 weight per training step, so the EMA's value is its profile."""

    def __init__(self, n):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))


@pytest.mark.parametrize("sigma_rel", [0.05, 0.1, 0.2])
def test_the_power_ema_weighs_each_step_by_the_closed_form_profile(sigma_rel):
    steps, net = 300, _Steps(300)
    ema = PowerEMA(net, sigma_rel)
    for s in range(steps):  # the weights at step s+1 are the unit vector e_s
        with torch.no_grad():
            net.w.zero_()
            net.w[s] = 1.0
        ema.update(net)
    want = profile(ema.gamma, steps, steps)
    np.testing.assert_allclose(ema.model.w.numpy(), want, atol=1e-12)
    assert want.sum() == pytest.approx(1.0)
    # the discrete profile's length approaches the continuous one's
    assert profile_sigma_rel(want, steps) == pytest.approx(sigma_rel, rel=0.02)


def _snapshots(lengths, every, end):
    return [(sigma_rel_to_gamma(s), t) for t in range(every, end + 1, every) for s in lengths]


def test_a_tracked_average_is_rebuilt_exactly_and_one_between_closely():
    snaps = _snapshots((0.05, 0.1), 500, 10_000)
    coeffs, error = solve_coefficients(snaps, sigma_rel_to_gamma(0.1), 10_000)
    assert error < 1e-9
    assert coeffs[snaps.index((sigma_rel_to_gamma(0.1), 10_000))] == pytest.approx(1.0)
    for target in (0.06, 0.08, 0.13):
        coeffs, error = solve_coefficients(snaps, sigma_rel_to_gamma(target), 10_000)
        length = 10_000
        combined = sum(c * profile(g, t, length) for c, (g, t) in zip(coeffs, snaps, strict=True))
        assert error < 0.05, target
        assert profile_sigma_rel(combined, length) == pytest.approx(target, rel=0.05)
    # a length far outside what the snapshots span fits badly, and says so
    _, error = solve_coefficients(_snapshots((0.05, 0.1), 2_500, 10_000),
                                  sigma_rel_to_gamma(0.01), 10_000)
    assert error > 0.3


def _train(out, steps, lengths="[0.05, 0.1]", resume=False, extra=()):
    cfg = tiny_config(f"train.max_steps={steps}", f"train.posthoc_ema={lengths}",
                      "train.posthoc_every=2", *extra)
    tr = Trainer(cfg, out, device="cpu", quiet=True)
    if resume:
        tr.resume()
    tr.train()
    return tr


def _params(weights):
    return torch.cat([weights[k].flatten().double() for k in sorted(weights)
                      if weights[k].is_floating_point()])


def test_a_run_keeps_snapshots_and_a_rebuilt_average_matches_one_tracked_directly(tmp_path):
    _train(tmp_path / "run", 16)
    names = sorted(p.name for p in (tmp_path / "run" / SNAPSHOT_DIR).iterdir())
    assert names == sorted(snapshot_name(t, s) for t in range(2, 17, 2) for s in (0.05, 0.1))
    tracked = load_checkpoint(tmp_path / "run" / SNAPSHOT_DIR / snapshot_name(16, 0.1)).model
    rebuilt, record = rebuild(tmp_path / "run" / "last", 0.1)
    assert record["snapshots"] == 16 and record["step"] == 16 and record["fit_error"] < 1e-9
    torch.testing.assert_close(_params(rebuilt), _params(tracked))
    # the same run tracking 0.07 itself: the rebuilt 0.07 is closer to it than either input
    _train(tmp_path / "truth", 16, lengths="[0.07]")
    truth = _params(load_checkpoint(tmp_path / "truth" / SNAPSHOT_DIR / snapshot_name(16, 0.07))
                    .model)
    rebuilt = _params(rebuild(tmp_path / "run" / "last", 0.07)[0])
    neighbours = [_params(load_checkpoint(tmp_path / "run" / SNAPSHOT_DIR / snapshot_name(16, s))
                          .model) for s in (0.05, 0.1)]
    miss = (rebuilt - truth).norm()
    assert miss < 0.5 * min((n - truth).norm() for n in neighbours)


def test_the_power_emas_resume_exactly_and_refuse_other_lengths(tmp_path):
    straight = _train(tmp_path / "a", 8)
    _train(tmp_path / "b", 4)
    resumed = _train(tmp_path / "b", 8, resume=True)
    for a, b in zip(straight.posthoc, resumed.posthoc, strict=True):
        assert a.num_updates == b.num_updates == 8
        for x, y in zip(a.model.parameters(), b.model.parameters(), strict=True):
            assert torch.equal(x, y)
    with pytest.raises(CheckpointError, match="post-hoc EMAs of lengths"):
        _train(tmp_path / "b", 10, lengths="[0.05]", resume=True)


def test_ema_length_samples_the_power_ema_and_resumes_it_exactly(tmp_path, capsys):
    # train.ema_length makes the sampled EMA the power EMA that train.posthoc_ema tracks
    straight = _train(tmp_path / "a", 8, lengths="[0.1]", extra=["train.ema_length=0.1"])
    assert isinstance(straight.ema, PowerEMA) and straight.ema.sigma_rel == 0.1
    tracked = straight.posthoc[0]
    for x, y in zip(straight.ema.model.parameters(), tracked.model.parameters(), strict=True):
        assert torch.equal(x, y)
    sampled = load_checkpoint(tmp_path / "a" / "last").ema
    torch.testing.assert_close(_params(sampled), _params(tracked.state_dict()), rtol=0, atol=0)
    _train(tmp_path / "b", 4, lengths="[0.1]", extra=["train.ema_length=0.1"])
    resumed = _train(tmp_path / "b", 8, lengths="[0.1]", resume=True,
                     extra=["train.ema_length=0.1"])
    assert resumed.ema.num_updates == 8
    assert main(["info", str(tmp_path / "b" / "last")]) == 0
    assert "weights      a power EMA of length 0.1 (train.ema_length)" in capsys.readouterr().out
    for x, y in zip(straight.ema.model.parameters(), resumed.ema.model.parameters(),
                    strict=True):
        assert torch.equal(x, y)


def test_export_writes_a_rebuilt_average_and_leaves_the_power_emas_behind(tmp_path, capsys):
    _train(tmp_path / "run", 8, extra=["train.guide_at=0.5", "sample.autoguidance=2"])
    out = tmp_path / "export"
    assert main(["export", str(tmp_path / "run" / "last"), str(out), "--ema-length", "0.1",
                 "--guide-ema-length", "0.05", "--quiet"]) == 0
    ck = load_checkpoint(out, with_training_state=True)
    assert not any(name.startswith("posthoc_ema") for name in ck.components)
    assert set(ck.components) == {"guide"}
    snapshot = load_checkpoint(tmp_path / "run" / SNAPSHOT_DIR / snapshot_name(8, 0.1)).model
    torch.testing.assert_close(_params(ck.model), _params(snapshot))
    guide_step = load_checkpoint(tmp_path / "run" / "last", with_training_state=True
                                 ).state["guide_step"]
    guide = load_checkpoint(tmp_path / "run" / SNAPSHOT_DIR / snapshot_name(guide_step, 0.05))
    torch.testing.assert_close(_params(ck.components["guide"]), _params(guide.model))
    trained = ck.config["trained"]
    assert trained["posthoc_ema"]["sigma_rel"] == 0.1
    assert trained["guide_posthoc_ema"]["step"] == guide_step
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "weights      the post-hoc EMA of length 0.1 at step 8, rebuilt from" in info
    assert f"guide        the post-hoc EMA of length 0.05 at step {guide_step}," in info
    # a plain export keeps the run's own EMA and its guide
    plain = tmp_path / "plain"
    assert main(["export", str(tmp_path / "run" / "last"), str(plain), "--quiet"]) == 0
    run = load_checkpoint(tmp_path / "run" / "last")
    torch.testing.assert_close(_params(load_checkpoint(plain).model), _params(run.ema))


def test_export_asks_for_snapshots_a_run_did_not_keep_in_one_line(tmp_path, capsys):
    cfg = tiny_config("train.max_steps=2")
    Trainer(cfg, tmp_path / "run", device="cpu", quiet=True).train()
    code = main(["export", str(tmp_path / "run" / "last"), str(tmp_path / "x"),
                 "--ema-length", "0.08", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "train.posthoc_ema" in err and len(err.splitlines()) == 1
    for bad in ("0.5", "nan", "0"):  # refused as the flags are read, before any work
        code = main(["export", str(tmp_path / "run" / "last"), str(tmp_path / "x"),
                     "--ema-length", bad])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "argument --ema-length: must be" in err and "exporting" not in err
    for flag, bad, said in (("--command-line", "x\x01y", "one line of printable text"),
                            ("--hardware", " ", "argument --hardware: the value is empty")):
        assert main(["export", str(tmp_path / "run" / "last"), str(tmp_path / "x"),
                     flag, bad]) == 2
        assert said in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert math.isfinite(MAX_SIGMA_REL)


def test_overwrite_removes_the_snapshots_and_keeps_a_users_file_beside_them(tmp_path, capsys):
    from tiny_run import TINY, as_flags

    run = tmp_path / "run"
    _train(run, 4)
    mine = run / SNAPSHOT_DIR / "notes.txt"
    mine.write_text("mine")
    assert rebuild(run / "last", 0.1)[1]["snapshots"] == 4  # the user's file is not read
    code = main(["train", "digits8", "--out", str(run), "--overwrite", "--steps", "1",
                 "--no-report", *as_flags(TINY)])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (run / SNAPSHOT_DIR).iterdir()) == ["notes.txt"]
    assert mine.read_text() == "mine"
