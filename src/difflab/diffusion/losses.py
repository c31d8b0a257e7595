"""Training objectives: regress the network onto eps, x0 or v with an L1, L2 or Huber loss.

The simple objective of Ho et al. (2020, eq. 14) is L2 on eps at a uniformly drawn t. The
same expectation can be written on x0 or v = alpha eps - sigma x0 (Salimans & Ho 2022), and
optionally weighted by Min-SNR-gamma (Hang et al. 2023), which caps the weight of low-noise
steps so that they do not dominate training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from difflab.diffusion.process import NoiseProcess, as_time

Tensor = torch.Tensor

LOSS_TYPES = ("l2", "l1", "huber")
TARGETS = ("eps", "x0", "v", "score")


def training_target(
    process: NoiseProcess, parameterization: str, x0: Tensor, eps: Tensor, t: Tensor
) -> Tensor:
    """What the network should output at (x_t, t) for this parameterization."""
    if parameterization == "eps":
        return eps
    if parameterization == "x0":
        return x0
    if parameterization == "v":
        return process.v_target(x0, t, eps)
    if parameterization == "score":
        # Denoising score matching (Vincent 2011): grad log q(x_t | x_0) = -eps / sigma.
        _, s = process.coefficients(t, x0)
        return -eps / s
    raise ValueError(
        f"unknown parameterization {parameterization!r}; allowed: {', '.join(TARGETS)}"
    )


def elementwise_loss(
    pred: Tensor, target: Tensor, loss_type: str, huber_delta: float = 1.0
) -> Tensor:
    """Per-sample mean over all but the batch dimension."""
    if loss_type == "l2":
        err = F.mse_loss(pred, target, reduction="none")
    elif loss_type == "l1":
        err = F.l1_loss(pred, target, reduction="none")
    elif loss_type == "huber":
        err = F.huber_loss(pred, target, reduction="none", delta=huber_delta)
    else:
        raise ValueError(f"unknown loss {loss_type!r}; allowed: {', '.join(LOSS_TYPES)}")
    return err.flatten(1).mean(1)


def min_snr_weight(process: NoiseProcess, t: Tensor, parameterization: str, gamma: float) -> Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023, eq. 6 and its eps / v variants)."""
    snr = torch.exp(process.log_snr(as_time(t)))
    capped = snr.clamp(max=gamma)
    if parameterization == "eps":
        return capped / snr
    if parameterization == "v":
        return capped / (snr + 1)
    if parameterization == "x0":
        return capped
    # score-matching weights are lambda(t) = sigma^2 (Song et al. 2021, eq. 7), not Min-SNR.
    raise ValueError("Min-SNR weighting applies to eps, x0 and v targets, not to score")


def diffusion_loss(
    net_out: Tensor,
    process: NoiseProcess,
    parameterization: str,
    x0: Tensor,
    eps: Tensor,
    t: Tensor,
    *,
    loss_type: str = "l2",
    snr_gamma: float | None = None,
    huber_delta: float = 1.0,
) -> Tensor:
    """The scalar training loss for one batch, given the net's output at x_t = q_sample(x0, t, eps).

    For the score target the loss is weighted by sigma^2, the "likelihood-free" weighting of
    Song et al. (2021, eq. 7) that makes || s sigma + eps ||^2 of the write-up.
    """
    target = training_target(process, parameterization, x0, eps, t)
    if parameterization == "score":
        _, s = process.coefficients(t, x0)
        per_sample = elementwise_loss(net_out.float() * s, target * s, loss_type, huber_delta)
    else:
        per_sample = elementwise_loss(net_out.float(), target, loss_type, huber_delta)
    if snr_gamma is not None:
        per_sample = per_sample * min_snr_weight(process, t, parameterization, snr_gamma).to(
            per_sample
        )
    return per_sample.mean()
