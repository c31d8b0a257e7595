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

import torch
import torch.nn.functional as F
from torch import Tensor

from difflab.data.captions import quote_prompt

# A prompt whose nearest training caption is less similar than this (cosine, MiniLM sentence
# embeddings) is out of the model's domain: `difflab sample` says so and names the nearest
# captions, instead of silently drawing the nearest class. Chosen by bench/prompt_ood.py on
# held-out paraphrases against prompts written to be far (bench/prompts/ood_select.txt), error
# rates reported on other sets written apart (BENCHMARKS.md, "Out-of-domain prompts").
OUT_OF_DOMAIN_BELOW = 0.518


def show_captions(nearest: list[tuple[str, float]]) -> str:
    """"'a red tee' (0.43), 'a tee' (0.41)": captions with their similarity, for messages."""
    return ", ".join(f"{text!r} ({sim:.2f})" for text, sim in nearest)


@dataclass(frozen=True)
class UnfamiliarPrompt:
    """A prompt far from every training caption, and the captions nearest it; or, for a
    model whose captions come from a grammar, a prompt the grammar cannot read (`reason`)."""

    prompt: str
    familiarity: float | None  # cosine similarity to the nearest training caption
    nearest: list[tuple[str, float]]  # the nearest captions, most similar first
    reason: str = ""  # what the caption grammar could not read, and what it has

    def message(self) -> str:
        prompt = quote_prompt(self.prompt)
        if self.reason:
            return (f"the prompt {prompt} is outside what this model was trained on, whose "
                    f"captions all come from one grammar: {self.reason}; it will draw the "
                    f"nearest thing it knows")
        return (f"the prompt {prompt} is far from everything this model was trained on "
                f"(similarity {self.familiarity:.2f} to the nearest training caption; "
                f"{OUT_OF_DOMAIN_BELOW} or more is in its domain): it will draw the nearest "
                f"thing it knows, the training captions {show_captions(self.nearest)}")


class OutOfDomainPrompt(UserWarning):
    """Warned when a prompt is far from every training caption (`UnfamiliarPrompt`)."""

    def __init__(self, far: UnfamiliarPrompt):
        super().__init__(far.message())
        self.far = far


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

    def familiarity(self, queries: Tensor) -> Tensor:
        """``(B, D)`` queries -> ``(B,)`` cosine similarity to the nearest caption."""
        return self._similarities(queries, 1)[0][:, 0]

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
