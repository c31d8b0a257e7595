"""torch.compile for long sampling jobs (difflab.pipeline.compiled): when `auto` compiles, and
that a compiled network draws what the eager one draws, falling back to it when the build
fails. Speed is measured in BENCHMARKS.md ("torch.compile for evaluation on a CPU"), not here."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_run import TINY, as_flags

from difflab.cli import main
from difflab.hardware import cpp_compiler
from difflab.pipeline import Generator
from difflab.pipeline.compiled import AUTO_MIN_IMAGE_STEPS, choose_compile

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
NO_COMPILER = "/nonexistent/g++"
needs_compiler = pytest.mark.skipif(cpp_compiler() is None, reason="no C++ compiler here")


def test_auto_compiles_long_fp32_cpu_jobs_only(monkeypatch):
    monkeypatch.setenv("CXX", sys.executable)  # a file that exists: "a compiler is found"
    big = AUTO_MIN_IMAGE_STEPS // 20
    assert choose_compile("auto", CPU, "fp32", big, 20).compile
    small = choose_compile("auto", CPU, "fp32", big - 1, 20)
    assert not small.compile and "too few" in small.why and f"{big - 1:,} images x 20" in small.why
    assert not choose_compile("auto", CPU, "bf16", 10**6, 20).compile
    assert "measured on CPUs only" in choose_compile("auto", CUDA, "fp32", 10**6, 20).why
    assert choose_compile("on", CPU, "fp32", 4, 1).compile  # asked for: obeyed
    assert "compile off" in choose_compile("off", CPU, "fp32", 10**6, 20).why
    with pytest.raises(ValueError, match="compile must be one of auto, on, off"):
        choose_compile("yes", CPU, "fp32", 4, 1)


def test_without_a_compiler_auto_stays_eager_and_on_is_refused(monkeypatch):
    monkeypatch.setenv("CXX", NO_COMPILER)
    assert cpp_compiler() is None
    eager = choose_compile("auto", CPU, "fp32", 10**6, 20)
    assert not eager.compile and "no C++ compiler found" in eager.why
    with pytest.raises(ValueError, match="compile on: torch.compile needs one on a CPU"):
        choose_compile("on", CPU, "fp32", 10**6, 20)


@pytest.fixture(scope="module")
def guided_run(tmp_path_factory) -> Path:
    """A tiny run with an autoguidance guide: both networks go through the compiler."""
    out = tmp_path_factory.mktemp("compiled") / "run"
    sets = [*TINY, "train.guide_at=0.5", "sample.autoguidance=2"]
    assert main(["train", "digits8", "--steps", "2", "--out", str(out), "--no-check",
                 "--no-report", *as_flags(sets)]) == 0
    return out / "last"


def draw(run: Path, **kw) -> np.ndarray:
    gen = Generator.from_checkpoint(run, device="cpu")
    # 5 images in batches of 4: the compiled shape, then a last batch of 1 drawn eagerly
    return gen.generate(5, batch_size=4, sampler="ddim", steps=3, seed=0, **kw).numpy()


@needs_compiler
def test_a_compiled_network_draws_the_eager_networks_images(guided_run):
    eager = draw(guided_run)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        compiled = draw(guided_run, compile=True)
    assert not [w for w in said if "torch.compile failed" in str(w.message)]  # no fall-back
    # fp32 kernels that differ in summation order: a pixel may round to the next level
    assert np.abs(eager.astype(int) - compiled.astype(int)).max() <= 1
    assert (eager == compiled).mean() > 0.99


def test_a_failed_build_samples_on_eagerly_and_says_why(guided_run, tmp_path):
    """A real failure: no compiler, and a cold kernel cache so nothing built before is reused."""
    out = tmp_path / "fallback.npy"
    code = ("import numpy as np, sys; sys.path.insert(0, 'tests');"
            "from test_compiled_sampling import draw;"
            f"np.save({str(out)!r}, draw({str(guided_run)!r}, compile=True))")
    env = {**os.environ, "CXX": NO_COMPILER, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch.compile failed, sampling with the eager network" in done.stderr
    assert np.array_equal(np.load(out), draw(guided_run))


@needs_compiler
def test_sample_says_when_it_compiles(guided_run, tmp_path, capsys):
    common = ["sample", str(guided_run), "-n", "5", "--batch-size", "4", "--sampler", "ddim",
              "--steps", "3", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "plain.npz")]) == 0
    assert "network" not in capsys.readouterr().out  # a few images: eager, nothing to say
    assert main([*common, "--compile", "on", "--out", str(tmp_path / "compiled.npz")]) == 0
    assert "sampling with the compiled network (compile on; 5 images x 3 steps)" in (
        capsys.readouterr().out)
    plain, compiled = (np.load(tmp_path / f"{n}.npz")["images"] for n in ("plain", "compiled"))
    assert np.abs(plain.astype(int) - compiled.astype(int)).max() <= 1
