"""Denoisers: what samplers call. A denoiser maps (x_t, t) to a `Prediction` of x_0 and eps.

A network may be trained to predict eps, x_0, v or the score; `ModelDenoiser` converts its
output once, here, so samplers never branch on the parameterization.
Wrappers add behaviour around any denoiser, and all of them live here: `ThresholdedDenoiser`
clips x_0 (static, or the dynamic thresholding of Saharia et al. 2022), `GuidedDenoiser` is
classifier-free guidance, and `InpaintingDenoiser` pins the known region of an image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

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


@runtime_checkable
class OwnNetworkProcess(Protocol):
    """A process that fixes what its network predicts and how it is trained, so a run's
    parameterization does not apply: EDM's preconditioned network (difflab.diffusion.edm) and
    flow matching's velocity (difflab.diffusion.flow). It gives its network's sampling-time
    denoiser and its per-sample training loss itself."""

    def denoiser(self, net: torch.nn.Module, cond=None) -> Denoiser: ...

    def training_loss(
        self, net: torch.nn.Module, x0: Tensor, cond=None, generator: torch.Generator | None = None
    ) -> Tensor: ...


def network_denoiser(
    net: torch.nn.Module, process: NoiseProcess, parameterization: str = "eps", cond=None
) -> Denoiser:
    """The denoiser of a network trained under `process`: the process' own where it fixes its
    network's output (`OwnNetworkProcess`; `parameterization` is then unused), else a
    `ModelDenoiser` in `parameterization`. Every sampling path builds its denoiser here."""
    if isinstance(process, OwnNetworkProcess):
        return process.denoiser(net, cond)
    return ModelDenoiser(net, process, parameterization, cond=cond)


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


class GuidedDenoiser:
    """Classifier-free guidance around any denoiser (Ho & Salimans 2022, eq. 6):
    eps~ = eps(x, t, null) + w (eps(x, t, c) - eps(x, t, null)).

    Both x0 and eps are affine in the network output at fixed (x, t), so the same combination
    applies to the x0 prediction and every sampler gets guidance without knowing about it.
    w = 1 is the plain conditional model, w = 0 the unconditional one.

    `interval` = (low, high) guides only at noise levels sigma in (low, high] and gives the
    plain conditional prediction elsewhere, without calling the unconditional branch
    (Kynkaenniemi et al. 2024, "Applying guidance in a limited interval"). sigma is the noise
    level of Karras et al. 2022, sigma_t / alpha_t (`NoiseProcess.sigma_ve`), so one interval
    means the same thing under every process. Guidance at the highest noise levels pulls
    every sample toward the same coarse layout; leaving it out there keeps what guidance does
    to an image's details at a fraction of its cost to diversity (FID)."""

    def __init__(
        self,
        conditional: Denoiser,
        unconditional: Denoiser,
        scale: float,
        interval: tuple[float, float] | None = None,
    ):
        if scale < 0:
            raise ValueError(f"guidance scale must be >= 0, got {scale}")
        if interval is not None:
            interval = check_guidance_interval(interval)
        self.cond, self.uncond, self.scale = conditional, unconditional, float(scale)
        self.interval = interval
        self.process = conditional.process

    def __call__(self, x: Tensor, t: Tensor) -> Prediction:
        c = self.cond(x, t)
        if self.scale == 1.0:
            return c
        w = self.scale_at(x, t)
        if w is None:  # no sample of the batch is inside the interval
            return c
        u = self.uncond(x, t)
        return Prediction(u.x0 + w * (c.x0 - u.x0), u.eps + w * (c.eps - u.eps))

    def scale_at(self, x: Tensor, t: Tensor) -> float | Tensor | None:
        """The guidance scale at (x, t): the scale, or per sample the scale inside the
        interval and 1 outside it; None when every sample is outside."""
        if self.interval is None:
            return self.scale
        low, high = self.interval
        sigma = self.process.sigma_ve(as_time(t, x.shape[0], x.device))
        inside = (sigma > low) & (sigma <= high)
        if not bool(inside.any()):
            return None
        if bool(inside.all()):
            return self.scale
        return expand_like(torch.where(inside, self.scale, 1.0), x)


def check_guidance_interval(interval) -> tuple[float, float]:
    """(low, high) as floats, or ValueError naming what is allowed: two noise levels
    0 <= low < high (high may be inf)."""
    try:
        low, high = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(
            f"a guidance interval is two noise levels (low, high), got {interval!r}"
        ) from None
    if not 0 <= low < high:  # also refuses NaN
        raise ValueError(
            f"a guidance interval needs noise levels 0 <= low < high, got ({low:g}, {high:g})"
        )
    return low, high


class InpaintingDenoiser:
    """Keep the known region: x0 = mask * x0_model + (1 - mask) * x0_known at every call.

    Every sampler in difflab steps from the x0 (and matching eps) prediction, so pinning x0
    outside the mask pins the known region of the whole trajectory to the forward process
    of the known image, for any sampler (the replacement method of Song et al. 2021, app. G,
    applied to x0). eps is recomputed from x_t and the new x0 so the pair stays consistent.
    """

    def __init__(self, denoiser: Denoiser, known: Tensor, mask: Tensor):
        self.inner, self.known, self.mask = denoiser, known, mask
        self.process = denoiser.process

    def __call__(self, x: Tensor, t: Tensor) -> Prediction:
        pred = self.inner(x, t)
        x0 = self.mask * pred.x0 + (1 - self.mask) * self.known.to(pred.x0.dtype)
        return Prediction(x0, self.process.eps_from_x0(x, t, x0))
