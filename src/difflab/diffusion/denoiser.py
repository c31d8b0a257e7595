"""Denoisers: what samplers call. A denoiser maps (x_t, t) to a `Prediction` of x_0 and eps.

A network may be trained to predict eps, x_0, v or the score; `ModelDenoiser` converts its
output once, here, so samplers never branch on the parameterization.
Wrappers add behaviour around any denoiser: `ThresholdedDenoiser` clips x_0 (static, or the
dynamic thresholding of Saharia et al. 2022), and classifier-free guidance lives in
`difflab.guidance`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from difflab.diffusion.process import NoiseProcess, as_time, expand_like

Tensor = torch.Tensor

PARAMETERIZATIONS = ("eps", "x0", "v", "score")


@dataclass
class Prediction:
    """The denoiser's belief about the clean image and the noise, at one (x_t, t)."""

    x0: Tensor
    eps: Tensor


class Denoiser(Protocol):
    process: NoiseProcess

    def __call__(self, x: Tensor, t: Tensor) -> Prediction: ...


def prediction_from_output(
    process: NoiseProcess, x: Tensor, t: Tensor, out: Tensor, parameterization: str
) -> Prediction:
    """Convert a network output in the given parameterization to (x0, eps)."""
    if parameterization == "eps":
        return Prediction(process.x0_from_eps(x, t, out), out)
    if parameterization == "x0":
        return Prediction(out, process.eps_from_x0(x, t, out))
    if parameterization == "v":
        x0, eps = process.x0_eps_from_v(x, t, out)
        return Prediction(x0, eps)
    if parameterization == "score":
        # score = -eps / sigma (Song et al. 2021; Vincent 2011).
        _, s = process.coefficients(t, x)
        eps = -s * out
        return Prediction(process.x0_from_eps(x, t, eps), eps)
    raise ValueError(
        f"unknown parameterization {parameterization!r}; allowed: {', '.join(PARAMETERIZATIONS)}"
    )


def scale_network_output(
    process: NoiseProcess, out: Tensor, t: Tensor, parameterization: str
) -> Tensor:
    """Score networks divide their raw output by the marginal std sigma(t), so the network
    itself only has to predict -eps (Song et al. 2021's ScoreNet; the score-based write-up).
    Other parameterizations are used as they come. Training and sampling both call this."""
    if parameterization != "score":
        return out
    t = as_time(t, out.shape[0], out.device)
    return out / expand_like(process.sigma(t).to(out.device), out)


class ModelDenoiser:
    """Wrap a network `net(x, t, cond=None)` trained in some parameterization as a denoiser.

    The net sees t as float32 in its own units (step index for discrete processes, t in
    [0, 1] for continuous ones); `cond` (class labels, text tokens) is bound at construction so
    samplers stay unaware of conditioning.
    """

    def __init__(
        self, net: torch.nn.Module, process: NoiseProcess, parameterization: str = "eps", cond=None
    ):
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"unknown parameterization {parameterization!r}; "
                f"allowed: {', '.join(PARAMETERIZATIONS)}"
            )
        self.net, self.process, self.parameterization = net, process, parameterization
        self.cond = cond

    def __call__(self, x: Tensor, t: Tensor) -> Prediction:
        t = as_time(t, x.shape[0], x.device)
        out = self.net(x, t.float(), self.cond).to(x.dtype)
        out = scale_network_output(self.process, out, t, self.parameterization)
        return prediction_from_output(self.process, x, t, out, self.parameterization)


class ThresholdedDenoiser:
    """Clip the x0 prediction and recompute eps to match (Ho et al. 2020; Saharia et al. 2022).

    mode='static' clips to [-1, 1]. mode='dynamic' clips each sample to [-s, s] with s its
    `percentile` absolute pixel value (at least 1) and divides by s (Imagen, sec. 2.3).
    """

    def __init__(self, denoiser: Denoiser, mode: str = "static", percentile: float = 0.995):
        if mode not in ("static", "dynamic"):
            raise ValueError(f"unknown thresholding {mode!r}; allowed: static, dynamic")
        self.inner, self.mode, self.percentile = denoiser, mode, percentile
        self.process = denoiser.process

    def __call__(self, x: Tensor, t: Tensor) -> Prediction:
        pred = self.inner(x, t)
        x0 = pred.x0
        if self.mode == "static":
            x0 = x0.clamp(-1, 1)
        else:
            s = torch.quantile(x0.reshape(x0.shape[0], -1).abs().float(), self.percentile, dim=1)
            s = expand_like(s.clamp(min=1.0).to(x0.dtype), x0)
            x0 = x0.clamp(-s, s) / s
        return Prediction(x0, self.process.eps_from_x0(x, t, x0))
