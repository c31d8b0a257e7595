"""Trainable transformer layers over a frozen text encoder's token states.

A frozen sentence encoder (all-MiniLM-L6-v2) was trained to bring paraphrases together, not
to keep "red" with "circle" and "blue" with "square" in "a red circle left of a blue
square": its word-piece states mix the whole sentence. Imagen (Saharia et al. 2022, section
4.4) found the text encoder's capacity to matter more for image-text alignment than the
image network's. These layers are the cheapest form of that lever on a CPU budget: a few
self-attention layers over the ~20 tokens of a caption, trained with the denoiser, so that
each token can gather the words it belongs with before the spatial transformers read it.
Their cost is per caption, not per pixel (a 32x32 map has 50x more positions to attend from).
Measured on the shapes world at equal steps they lose to the frozen states, most on
compositions no training caption holds (BENCHMARKS.md, "Three levers for binding"): layers
trained on the training captions learn to re-read the combinations those hold. Off by default.

``TextRefiner(tokens (B, L, context_dim), mask (B, L) or None) -> (B, L, width)``: an
optional linear map to ``width``, then ``depth`` pre-norm layers (masked self-attention,
GEGLU feed-forward; Vaswani et al. 2017) and a final LayerNorm. Padded tokens are never
attended to, so a caption's states do not depend on how much padding its batch has.
"""

from __future__ import annotations

from torch import Tensor, nn

from .attention import TokenLayer


class TextRefiner(nn.Module):
    """``depth`` trainable transformer layers that re-read the text tokens (module doc)."""

    def __init__(
        self, context_dim: int, width: int, depth: int, head_dim: int, ff_mult: int = 4
    ) -> None:
        super().__init__()
        if depth < 1 or width % head_dim:
            raise ValueError(
                f"TextRefiner needs depth >= 1 and a width ({width}) that the head width "
                f"({head_dim}) divides; got depth {depth}"
            )
        self.proj_in = nn.Linear(context_dim, width) if width != context_dim else nn.Identity()
        self.layers = nn.ModuleList(
            TokenLayer(width, width // head_dim, ff_mult, gated=True) for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(width)

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        x = self.proj_in(tokens)
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm_out(x)
