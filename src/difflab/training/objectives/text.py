"""Captions as the condition of a text-to-image run: the data's caption table (made from class
labels by difflab.data.captions, or each image's own captions, as shapes has), encoded by a
frozen pretrained encoder once (a few hundred to tens of thousands of strings: cheaper than
encoding every batch, and identical) or by a trainable encoder every step.

A random caption of each image's class (or of the image itself) is its condition; dropped
captions (all tokens masked) train the unconditional branch of classifier-free guidance
(Ho & Salimans 2022).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from difflab.config import RunConfig
from difflab.data import ImageData
from difflab.data.registry import dataset_caption_table
from difflab.models.caption_bank import COMPONENT as CAPTION_BANK
from difflab.models.caption_bank import CaptionBank
from difflab.models.conditioning import TextCondition
from difflab.models.text import (
    MINILM_LAYERS,
    TextConditioned,
    TokenIds,
    TrainableTextEncoder,
    make_text_encoder,
)
from difflab.training.objectives import text_cache

ENCODE_CHUNK = 512  # captions per encoder call: bounds MiniLM's activations, not the result


def encode_in_chunks(encoder: Any, texts: list[str], chunk: int = ENCODE_CHUNK,
                     progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Every text through a frozen encoder, `chunk` at a time, padded to the longest: tokens
    `(N, L, D)` and mask `(N, L)` on the CPU, what one call would give (padding states are
    zero and masked). One call on the ~39,000 captions of 20,000 shapes images would hold
    gigabytes of activations at once; chunks of texts of similar length (sorted by length)
    pad least. Large sets are cached on disk, keyed by the encoder's spec and the texts, and
    encoded by one process at a time (the others wait and read its result): text_cache.

    With `progress`, encoding a set of more than one chunk says what it is doing and draws a
    bar: on a laptop CPU the shapes captions take minutes before the first training step,
    and a silent terminal for that long reads as a hang."""
    if len(texts) < text_cache.CACHE_MIN_TEXTS:
        return _encode(encoder, texts, chunk, progress, None)
    text_cache.cache_limit_bytes()  # a malformed limit is refused before minutes of encoding
    cache = text_cache.cache_file(encoder, texts)
    found = text_cache.read_cache(cache)
    if found is not None:
        return found
    with text_cache.encoding_alone(cache, progress):
        found = text_cache.read_cache(cache)  # written while this process waited
        if found is not None:
            return found
        tokens, mask = _encode(encoder, texts, chunk, progress, cache)
        text_cache.write_cache(cache, tokens, mask, progress)
    return tokens, mask


def _encode(encoder: Any, texts: list[str], chunk: int, progress: bool,
            cache: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    starts = range(0, len(texts), chunk)
    show = progress and len(starts) > 1
    if show:
        kept = f"; kept in {cache.parent} for later runs" if cache is not None else ""
        print(f"difflab: encoding {len(texts):,} captions with the frozen text encoder, "
              f"once{kept}", flush=True)
    parts = []
    with tqdm(total=len(texts), unit="caption", disable=not show, leave=False) as bar:
        for i in starts:
            parts.append(encoder.encode([texts[j] for j in order[i:i + chunk]]))
            bar.update(len(parts[-1].tokens))
    length = max(part.tokens.shape[1] for part in parts)
    tokens = torch.cat([
        F.pad(part.tokens.cpu(), (0, 0, 0, length - part.tokens.shape[1])) for part in parts
    ])
    mask = torch.cat([
        F.pad(part.mask.cpu(), (0, length - part.mask.shape[1]), value=False) for part in parts
    ])
    inverse = torch.empty(len(order), dtype=torch.int64)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return tokens[inverse], mask[inverse]


class CaptionConditioning:
    """The text encoder, the caption table, its encoded tokens, and (for pooled sentence
    embeddings) the caption bank that sampling reads prompts through.

    A trainable encoder is trained with the denoiser: both are wrapped in one module
    (`TextConditioned`: one optimizer, one EMA, one file), which replaces `net`."""

    def __init__(self, cfg: RunConfig, data: ImageData, net: torch.nn.Module,
                 net_config: dict[str, Any], device: torch.device, quiet: bool = True):
        if data.labels is None:
            raise ValueError(
                f"text.encoder needs captions, made from class labels, but {data.name!r} "
                "has no labels"
            )
        self.trainable = cfg.text.encoder == "trainable"
        width = net_config["config"].get("context_dim")
        if self.trainable:
            if cfg.text.tokens != "all":
                raise ValueError(
                    f"text.tokens = {cfg.text.tokens!r} applies to the pretrained minilm "
                    "encoder; the trainable one hands over all its tokens (text.tokens = 'all')"
                )
            if cfg.text.layer != MINILM_LAYERS:
                raise ValueError(
                    f"text.layer = {cfg.text.layer} applies to the pretrained minilm encoder; "
                    f"the trainable one hands over its last layer (text.layer = {MINILM_LAYERS})"
                )
            self.encoder = TrainableTextEncoder(
                width=cfg.text.width, depth=cfg.text.depth, max_tokens=cfg.text.max_tokens
            )
            net = TextConditioned(net, self.encoder).to(device)
            net_config = {
                "type": "text-conditioned",
                "net": net_config,
                "text": self.encoder.spec(),
                "num_classes": net_config.get("num_classes"),
            }
        else:
            if cfg.text.tokens == "pooled" and cfg.text.layer != MINILM_LAYERS:
                raise ValueError(
                    f"text.layer = {cfg.text.layer} chooses the word-piece states, which "
                    "text.tokens = 'pooled' leaves out (its sentence embedding is always the "
                    f"last layer's): use text.tokens = 'all', or text.layer = {MINILM_LAYERS}"
                )
            self.encoder = make_text_encoder(
                cfg.text.encoder,
                max_tokens=cfg.text.max_tokens,
                tokens=cfg.text.tokens,
                layer=cfg.text.layer,
            )
        self.net, self.net_config = net, net_config
        if width != self.encoder.width:
            raise ValueError(
                f"text.encoder = {cfg.text.encoder!r} gives {self.encoder.width}-wide "
                f"tokens but the network's context_dim is {width}; set "
                f"model.overrides.context_dim = {self.encoder.width}"
                + (" (or text.width)" if self.trainable else "")
            )
        self.captions = dataset_caption_table(cfg.data, data.class_names)
        self.bank: CaptionBank | None = None
        if self.trainable:  # tokenised once, encoded with grad every step
            ids, mask = self.encoder.tokenize(self.captions.texts)
            self.tokens = (ids.to(device), mask.to(device))
        else:  # the frozen encoder's output never changes: encode every caption once
            tokens, mask = encode_in_chunks(self.encoder, self.captions.texts,
                                            progress=not quiet)
            self.tokens = (tokens.to(device), mask.to(device))
            if cfg.text.tokens == "pooled":  # saved so that sampling can read prompts through it
                self.bank = CaptionBank(self.captions.texts, tokens[:, 0])
        self.device = device

    def condition(self, labels: torch.Tensor, generator: torch.Generator,
                  drop_prob: float) -> TextCondition | TokenIds:
        """A random caption of each label (a class, or an image); dropped (all-masked) with
        `drop_prob`."""
        idx = self.captions.pick(labels.cpu(), generator).to(self.device)
        tokens, mask = self.tokens
        drop = (torch.rand(len(idx), generator=generator) < drop_prob).to(self.device)
        if self.trainable:
            return TokenIds(tokens[idx], mask[idx], drop)
        return TextCondition(tokens[idx], mask[idx] & ~drop[:, None])

    def components(self) -> dict[str, dict[str, torch.Tensor]]:
        return {CAPTION_BANK: self.bank.state_dict()} if self.bank is not None else {}
