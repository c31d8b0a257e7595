"""The conditioning contract every denoiser network shares (UNet, DiT): how ``t`` and ``cond``
may be given, checked once here so that both networks accept and refuse the same inputs with the
same messages. ``cond`` is None, a LongTensor of class labels, or a
:class:`TextCondition`, defined here so that every network imports it from one place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .blocks import zero_init


@dataclass(frozen=True)
class TextCondition:
    """Conditioning by a token sequence, read by the UNet's spatial transformers.

    ``tokens``: float ``(B, L, context_dim)``, e.g. a pretrained text encoder's token
    embeddings. ``mask``: optional bool ``(B, L)``, True for real tokens, False for
    padding (a tokenizer's ``attention_mask``); padded tokens have no effect on the output,
    and a row with no real token (the empty prompt of classifier-free guidance) means "no
    text". ``labels``: optional LongTensor ``(B,)`` of class labels for a class-conditional
    net (None: the null label).
    """

    tokens: Tensor
    mask: Tensor | None = None
    labels: Tensor | None = None


def time_batch(t: Tensor | float, batch: int, device: torch.device) -> Tensor:
    """``t`` as float32 ``(B,)``: a scalar or a one-element tensor is broadcast."""
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0 or t.shape == (1,):
        t = t.reshape(1).expand(batch)  # one time for the whole batch
    elif t.shape != (batch,):
        raise ValueError(f"t must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
    return t.float()


def class_labels(
    labels: Tensor | None, num_classes: int | None, batch: int, device: torch.device, owner: str
) -> Tensor | None:
    """Checked labels ``(B,)`` (None -> the null label ``num_classes``; None for an
    unconditional net)."""
    if num_classes is None:
        if labels is not None:
            raise ValueError(
                f"class labels were given but this {owner} is unconditional "
                f"({owner}Config.num_classes is None)"
            )
        return None
    if labels is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    if (
        not isinstance(labels, Tensor)
        or labels.shape != (batch,)
        or labels.dtype not in (torch.int64, torch.int32)
    ):
        got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, Tensor) else labels
        raise ValueError(f"cond must be an integer tensor of shape ({batch},), got {got}")
    on_cpu = labels.device.type == "cpu" and not torch.compiler.is_compiling()
    # The range check is free on CPU; on an accelerator it would force a sync.
    if on_cpu and labels.numel() and (labels.min() < 0 or labels.max() > num_classes):
        raise ValueError(f"cond labels must be in [0, {num_classes}] ({num_classes} = null label)")
    return labels


def text_tokens(
    cond: TextCondition, context_dim: int | None, batch: int, owner: str
) -> tuple[Tensor, Tensor | None]:
    """Checked ``(tokens (B, L, context_dim), bool mask (B, L) or None)`` of a
    :class:`TextCondition`."""
    if context_dim is None:
        raise ValueError(
            f"a TextCondition was given but this {owner} takes no text: "
            f"{owner}Config.context_dim is None (set it to the token width)"
        )
    tokens, mask = cond.tokens, cond.mask
    if tokens.ndim != 3 or tokens.shape[0] != batch or tokens.shape[-1] != context_dim:
        raise ValueError(
            f"TextCondition.tokens must be (B={batch}, L, context_dim={context_dim}), got "
            f"{tuple(tokens.shape)} ({owner}Config.context_dim = {context_dim})"
        )
    if not tokens.is_floating_point():
        raise ValueError(f"TextCondition.tokens must be a float tensor, got {tokens.dtype}")
    if mask is not None:
        if mask.shape != tokens.shape[:2]:
            raise ValueError(
                f"TextCondition.mask must have shape {tuple(tokens.shape[:2])} (B, L) "
                f"like its tokens, got {tuple(mask.shape)}"
            )
        if mask.is_floating_point():
            raise ValueError(
                f"TextCondition.mask must be bool (True = real token), got {mask.dtype}"
            )
        mask = mask.bool()
    return tokens, mask


class PooledText(nn.Module):
    """The text's pooled token, mapped to the width of the time embedding and added to it.

    Cross-attention reads the text per position; this gives every block the sentence as a
    whole, as the time embedding reaches every block. Imagen (Saharia et al. 2022, whose
    U-Net does this besides cross-attention) and SDXL (Podell et al. 2023, section 2.1)
    add a pooled text embedding to the time embedding in the same way. With a sentence
    encoder's pooled token (all-MiniLM-L6-v2's mean-pooled, normalised embedding, trained
    contrastively to bring paraphrases together), it is the path by which wording never
    seen in training still lands near the captions of the same meaning.

    The pooled token is the first of :class:`~difflab.models.unet.TextCondition`'s tokens
    (the contract of :mod:`difflab.models.text`); "no text" (mask False, or no
    TextCondition at all) is a zero vector. The last layer starts at zero, so adding this
    to a network leaves its initial output unchanged.
    """

    def __init__(self, context_dim: int, emb_dim: int) -> None:
        super().__init__()
        self.context_dim = context_dim
        self.mlp = nn.Sequential(
            nn.Linear(context_dim, emb_dim), nn.SiLU(), zero_init(nn.Linear(emb_dim, emb_dim))
        )

    def forward(self, tokens: Tensor | None, mask: Tensor | None, batch: int) -> Tensor:
        """``(B, emb_dim)`` from checked tokens ``(B, L, context_dim)`` and mask (or None)."""
        weight = self.mlp[0].weight
        if tokens is None:  # no text: the same as the null condition
            pooled = weight.new_zeros(batch, self.context_dim)
        else:
            pooled = tokens[:, 0]
            if mask is not None:
                pooled = pooled * mask[:, 0, None].to(pooled.dtype)
        return self.mlp(pooled.to(weight.dtype))
