"""Progress where long work happens: sampling, eval, export show it on stderr, `--quiet`
silences it, and the Python API stays quiet unless asked."""

from __future__ import annotations

import pytest

from difflab.cli import main
from difflab.pipeline import Generator


def _bar_lines(stderr: str) -> list[str]:
    """tqdm redraws with carriage returns: the states it drew, last one last."""
    return [s.strip() for s in stderr.replace("\r", "\n").splitlines() if s.strip()]


def test_sample_shows_steps_and_network_evaluations(tmp_path, capsys):
    out = tmp_path / "s.png"
    # A guided step evaluates the network twice (conditional and unconditional).
    assert main(["sample", "fashion-mnist-cond", "--class", "bag", "-n", "2", "--steps", "3",
                 "--guidance-interval", "0", "1e9", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    last = _bar_lines(captured.err)[-1]
    assert "sampling 2 images" in last and "3/3" in last
    assert "6 network evaluations" in last
    assert "network evaluations" not in captured.out  # the bar is on stderr only


def test_steps_outside_the_guidance_interval_evaluate_the_network_once(tmp_path, capsys):
    # The shipped model guides at noise levels (0.3, 3] only: 5 of its 20 steps.
    assert main(["sample", "fashion-mnist-cond", "--class", "bag", "-n", "1",
                 "--out", str(tmp_path / "s.png")]) == 0
    last = _bar_lines(capsys.readouterr().err)[-1]
    assert "20/20" in last and "25 network evaluations" in last
    # The shipped unconditional model calls its guide at 7 of its 13 noise levels, (0.09, 12].
    assert main(["sample", "fashion-mnist", "-n", "1", "--out", str(tmp_path / "u.png")]) == 0
    last = _bar_lines(capsys.readouterr().err)[-1]
    assert "13/13" in last and "20 network evaluations" in last


def test_sample_batches_are_named(tmp_path, capsys):
    assert main(["sample", "fashion-mnist", "-n", "3", "--batch-size", "2", "--steps", "2",
                 "--out", str(tmp_path / "s.npz")]) == 0
    lines = _bar_lines(capsys.readouterr().err)
    # Only the first and last states are drawn for sure (tqdm skips redraws within 0.1 s).
    assert lines[0].startswith("sampling batch 1/2 (2 images)")
    assert "batch 2/2 (1 image)" in lines[-1] and "4/4" in lines[-1]
    # one call per step and batch: the shipped model's guide is called only at noise levels
    # in (0.09, 12], and a 2-step draw has none there (80, then 0.006)
    assert "4 network evaluations" in lines[-1]


def test_quiet_sample_writes_nothing_to_stderr(tmp_path, capsys):
    assert main(["sample", "fashion-mnist", "-n", "2", "--steps", "2", "--quiet",
                 "--out", str(tmp_path / "s.png"), "--gif", str(tmp_path / "s.gif")]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "wrote 2 samples" in captured.out  # results still say where they went


def test_generator_is_quiet_unless_asked(capsys):
    gen = Generator.from_checkpoint("fashion-mnist", device="cpu")
    quiet = gen.generate(2, steps=2)
    assert capsys.readouterr().err == ""
    loud = gen.generate(2, steps=2, progress=True)
    assert "2 network evaluations" in _bar_lines(capsys.readouterr().err)[-1]
    assert (quiet == loud).all()  # watching does not change what is drawn
    assert not gen.net._forward_pre_hooks  # the counter is gone once the run ends


def test_progress_hook_is_removed_when_sampling_fails():
    gen = Generator.from_checkpoint("fashion-mnist", device="cpu")

    def fail(info):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        gen.generate(2, steps=2, progress=True, callback=fail)
    assert not gen.net._forward_pre_hooks


def _feature_net_or_skip():
    from difflab.metrics.features import feature_extractor

    try:
        feature_extractor("fashion_mnist", train=False, verbose=False)
    except FileNotFoundError:
        pytest.skip("no Fashion-MNIST feature network shipped or cached; this test does not "
                    "train one (run `difflab eval fashion-mnist` once to cache it)")


def test_eval_shows_progress_and_quiet_silences_it(tmp_path, capsys):
    _feature_net_or_skip()
    common = ["eval", "fashion-mnist", "--samples", "8", "--steps", "2", "--nll",
              "--nll-images", "4", "--nll-timesteps", "2", "--n-reference", "200"]
    assert main(common) == 0
    captured = capsys.readouterr()
    lines = _bar_lines(captured.err)
    sampling = [s for s in lines if s.startswith("sampling 8 images")]
    assert sampling and "2/2" in sampling[-1] and "network evaluations" in sampling[-1]
    assert any("features of 8 images" in s for s in lines)
    assert "difflab: sampling with the eager network (8 images x 2 steps: too few" in captured.err
    nll = [s for s in lines if s.startswith("NLL")]
    assert nll and "4/4" in nll[-1] and "network evaluations" in nll[-1]
    assert "FID" in captured.out
    assert main([*common, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "FID" in captured.out


def test_export_says_what_it_does(tmp_path, capsys):
    assert main(["export", "fashion-mnist", str(tmp_path / "a")]) == 0
    captured = capsys.readouterr()
    assert "exporting" in captured.err and "wrote" in captured.out
    assert main(["export", "fashion-mnist", str(tmp_path / "b"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
