"""Reading a prompt through the training captions: retrieval in the sentence encoder's space.

A text-to-image model trained on a few thousand captions has learned what *their*
embeddings mean. A prompt worded another way lands between them, where the network was never
trained, and the network's answer there is a guess: the shipped Fashion-MNIST model follows
its training captions 100 % of the time but held-out paraphrases 78 %, while simply naming
the class of the nearest training caption in MiniLM's space is right 89 % of the time.

So the prompt is read through the captions: its sentence embedding ``q`` is replaced by

    q' = normalize( sum_i w_i e_i ),   w = softmax(cos(q, e_i) / temperature) over the
                                        k training captions e_i nearest to q,

a point on the manifold the network was trained on, pulled to where the prompt's meaning is.
``k = 1`` is "use the nearest caption"; a larger k with a small temperature is the same when
one caption is clearly nearest and a similarity-weighted blend when several tie. Conditioning
on retrieved neighbours' embeddings is what kNN-Diffusion (Sheynin et al. 2022, sec. 3) and
retrieval-augmented diffusion (Blattmann et al. 2022) do with CLIP; here the database is the
training captions themselves, so every prompt is mapped to something the model has learned.
It needs a model that reads the sentence embedding alone (``text.tokens = "pooled"``): a
blend of per-token states is not a sentence.

    bank = CaptionBank.build(captions, encoder)      # once, at training: saved in checkpoints
    q = encoder.encode(["footwear for running"]).tokens[:, 0]
    bank.project(q, k=16)                            # (1, 384): where the model should look
    bank.nearest(q, k=3)                             # which captions it is read as
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

COMPONENT = "caption_bank"  # the checkpoint component (caption_bank.safetensors) holding it


@dataclass
class CaptionBank:
    """The training captions (``texts``) and their unit sentence embeddings ``(N, D)``."""

    texts: list[str]
    embeddings: Tensor

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or len(self.texts) != len(self.embeddings):
            raise ValueError(
                f"CaptionBank: need one embedding row per caption, got {len(self.texts)} "
                f"captions and embeddings of shape {tuple(self.embeddings.shape)}"
            )
        if not self.texts:
            raise ValueError("CaptionBank: no captions")
        # Stored as float16 in exported checkpoints; compare in float32, as unit vectors.
        self.embeddings = F.normalize(self.embeddings.float(), dim=-1)

    @classmethod
    def build(cls, texts: Sequence[str], encoder) -> CaptionBank:
        """Encode ``texts`` with a pretrained encoder that hands over the sentence embedding
        (``tokens="pooled"``)."""
        if getattr(encoder, "tokens", None) != "pooled":
            raise ValueError(
                "a caption bank needs an encoder that gives the sentence embedding alone "
                "(text.tokens = 'pooled'), since prompts are blended as sentence embeddings"
            )
        texts = list(texts)
        rows = [encoder.encode(texts[i : i + 256]).tokens[:, 0] for i in range(0, len(texts), 256)]
        return cls(texts, torch.cat(rows).cpu())

    @property
    def width(self) -> int:
        return self.embeddings.shape[1]

    def _similarities(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(self.texts):
            raise ValueError(
                f"nearest captions k={k!r} is out of range: allowed 1..{len(self.texts)} "
                "(the captions in the bank)"
            )
        if queries.ndim != 2 or queries.shape[1] != self.width:
            raise ValueError(
                f"queries must be (B, {self.width}) sentence embeddings, got "
                f"{tuple(queries.shape)}"
            )
        bank = self.embeddings.to(queries.device)
        sims = F.normalize(queries.float(), dim=-1) @ bank.T  # (B, N) cosine similarities
        return sims.topk(k, dim=1)  # values and indices, most similar first

    def nearest(self, queries: Tensor, k: int = 1) -> list[list[tuple[str, float]]]:
        """The ``k`` most similar captions of each query, with their cosine similarity."""
        values, indices = self._similarities(queries, k)
        return [
            [(self.texts[i], float(v)) for v, i in zip(row_v, row_i, strict=True)]
            for row_v, row_i in zip(values.tolist(), indices.tolist(), strict=True)
        ]

    def project(self, queries: Tensor, k: int, temperature: float = 0.05) -> Tensor:
        """``(B, D)`` queries -> the normalised softmax(similarity / temperature)-weighted mean
        of their ``k`` nearest caption embeddings (see the module docstring)."""
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        values, indices = self._similarities(queries, k)
        weights = torch.softmax(values / temperature, dim=1)  # (B, k)
        bank = self.embeddings.to(queries.device)
        blend = (weights[..., None] * bank[indices]).sum(dim=1)  # (B, D)
        return F.normalize(blend, dim=-1).to(queries.dtype)

    # ------------------------------------------------------------------ saving
    def state_dict(self) -> dict[str, Tensor]:
        """Tensors for a checkpoint component: the embeddings, and the captions as UTF-8
        bytes joined by newlines (safetensors holds tensors only; captions have no newline)."""
        if any("\n" in t for t in self.texts):
            raise ValueError("CaptionBank: captions must not contain newlines")
        data = "\n".join(self.texts).encode("utf-8")
        return {
            "embeddings": self.embeddings,
            "texts_utf8": torch.frombuffer(bytearray(data), dtype=torch.uint8).clone(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor], source: str = "checkpoint") -> CaptionBank:
        if set(state) != {"embeddings", "texts_utf8"}:
            raise ValueError(
                f"{source}: {COMPONENT} must hold 'embeddings' and 'texts_utf8', got "
                f"{sorted(state)}"
            )
        texts = bytes(state["texts_utf8"].tolist()).decode("utf-8").split("\n")
        return cls(texts, state["embeddings"])


def add_to_checkpoint(path: str | Path) -> Path:
    """Give a text-to-image checkpoint saved before caption banks existed its bank: the
    captions of its dataset (:func:`difflab.data.captions.caption_table`) encoded by its
    text encoder, valid while the caption text in this code is what the model was trained
    on. Rewrites the folder atomically, in the dtype its weights already have; returns it."""
    from difflab.data.captions import caption_table
    from difflab.models.text import text_encoder_from_spec
    from difflab.training.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(path, with_training_state=True)
    spec = ck.config.get("text_encoder")
    if not spec:
        raise ValueError(f"{path} is not a text-conditioned checkpoint: it has no text encoder")
    table = caption_table(ck.config["run"]["data"]["name"], ck.config.get("class_names"))
    bank = CaptionBank.build(table.texts, text_encoder_from_spec(spec))
    half = any(v.dtype == torch.float16 for v in ck.model.values())
    return save_checkpoint(
        ck.path,
        config=ck.model_config(),
        model=ck.model,
        ema=ck.ema,
        optimizer=ck.optimizer,
        state=ck.state or None,
        components={**ck.components, COMPONENT: bank.state_dict()},
        dtype=torch.float16 if half else None,
    )
