"""The score-based write-up's 1-D experiment: forward spread sigma^2 T, reverse paths back to x0."""

from __future__ import annotations

import math

import pytest
import torch

from difflab.toy1d import forward_trajectories, plot_toy1d, reverse_trajectories

N_PATHS = 4000  # the variance estimate then has a relative standard error of ~2.2 %


def test_forward_endpoint_variance_is_sigma_squared_T():
    gen = torch.Generator().manual_seed(0)
    x0, sigma, T = 0.3, 2.0, 1.5
    t, x = forward_trajectories(x0, sigma, N_PATHS, 200, T, gen)
    assert t.shape == (201,) and x.shape == (N_PATHS, 201)
    assert float(t[0]) == 0.0 and float(t[-1]) == pytest.approx(T)
    assert torch.all(x[:, 0] == x0)
    end = x[:, -1]
    assert float(end.mean()) == pytest.approx(x0, abs=4 * sigma * math.sqrt(T / N_PATHS))
    assert float(end.var()) == pytest.approx(sigma**2 * T, rel=0.1)
    # Brownian motion: the spread at mid-time is half of it.
    assert float(x[:, 100].var()) == pytest.approx(sigma**2 * T / 2, rel=0.1)


def test_reverse_paths_return_to_x0():
    gen = torch.Generator().manual_seed(1)
    x0, sigma, T, n_steps = -0.7, 2.0, 1.5, 200
    t, x = reverse_trajectories(x0, sigma, N_PATHS, n_steps, T, gen)
    assert float(t[0]) == pytest.approx(T) and float(t[-1]) == 0.0
    # Start spread sigma^2 T, and the reverse marginals match the forward ones on the way.
    assert float(x[:, 0].var()) == pytest.approx(sigma**2 * T, rel=0.1)
    assert float(x[:, n_steps // 2].var()) == pytest.approx(sigma**2 * T / 2, rel=0.1)
    end = x[:, -1]
    end_std = sigma * math.sqrt(T / n_steps)  # only the last step's own noise is left
    assert abs(float(end.mean()) - x0) < 4 * end_std / math.sqrt(N_PATHS)
    assert float(end.std()) == pytest.approx(end_std, rel=0.1)
    assert float(end.std()) < 0.1 * sigma * math.sqrt(T)


def test_same_seed_same_paths():
    a = reverse_trajectories(0.0, 1.0, 3, 50, 1.0, torch.Generator().manual_seed(5))[1]
    b = reverse_trajectories(0.0, 1.0, 3, 50, 1.0, torch.Generator().manual_seed(5))[1]
    assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs", [{"sigma": 0.0}, {"T": -1.0}, {"n_paths": 0}, {"n_steps": 2.5}])
def test_bad_arguments_raise(kwargs):
    args = {"x0": 0.0, "sigma": 1.0, "n_paths": 2, "n_steps": 10, "T": 1.0} | kwargs
    with pytest.raises(ValueError):
        forward_trajectories(**args)
    with pytest.raises(ValueError):
        reverse_trajectories(**args)


def test_plot_writes_png(tmp_path):
    out = plot_toy1d(tmp_path / "sub" / "toy1d.png", sigma=1.5, n_paths=3, n_steps=100, seed=2)
    assert out == tmp_path / "sub" / "toy1d.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
