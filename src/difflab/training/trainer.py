"""The training loop: data -> noise -> network -> loss -> AdamW, with EMA, checkpoints, resume.

Three kinds of run share it, chosen by the config: a pixel-space diffusion model (class labels
optional); an autoencoder (a ``kl-f*`` preset: reconstruction + KL loss, no noise); and a
latent diffusion model (``latent.autoencoder`` set: the frozen autoencoder's posteriors are
computed once, and the denoiser learns on scaled latent samples), optionally conditioned on
text (``text.encoder``: captions made from class names, encoded once by the frozen encoder,
dropped with probability ``train.cond_drop_prob`` for classifier-free guidance).

One `Trainer` serves a laptop CPU, one GPU and torchrun's many processes alike. What it owns:
the optimizer and LR schedule (linear warm-up, then constant or cosine), bf16/fp16 autocast,
gradient accumulation and clipping, the EMA weights, a fixed-seed sample grid every N steps,
JSONL metrics, best/last checkpoints written atomically, an exact `resume` (metrics.jsonl
rewound to the checkpoint, so a resumed log matches an uninterrupted one), and a guard that
stops on a NaN/Inf loss or non-finite weights and never saves them.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from difflab import hardware
from difflab.build import build_network, build_process, describe_network
from difflab.config import RunConfig
from difflab.data import BatchIterator, ImageData, load_dataset
from difflab.diffusion.denoiser import scale_network_output
from difflab.diffusion.losses import diffusion_loss
from difflab.models.autoencoder import autoencoder_loss
from difflab.models.unet import TextCondition
from difflab.samplers.common import randn
from difflab.training import checkpoint as ckpt_io
from difflab.training import distributed, health, step_settings
from difflab.training.ema import EMA
from difflab.training.step_settings import StepSettings, label


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or Inf; nothing non-finite is saved."""


_DIVERGED_HINT = "Try a lower train.lr, train.grad_clip = 1.0 or train.precision = 'fp32'."
# state.json as resume reads it: each key's JSON types; the optional ones older checkpoints
# may lack (resume then takes the defaults those versions meant).
_STATE_FIELDS: dict[str, tuple[type, ...]] = {
    "step": (int,), "best_loss": (int, float), "data": (dict,), "generator": (str,),
    "torch_rng": (str,), "ema_updates": (int,), "best_fid": (int, float),
    "loss_ema": (int, float), "elapsed_seconds": (int, float), "scaler": (dict,),
    "step_settings": (dict,), "metrics_bytes": (int,),
}  # fmt: skip
_OPTIONAL_STATE = ("ema_updates", "best_fid", "loss_ema", "elapsed_seconds", "scaler",
                   "step_settings", "metrics_bytes")


def _differences(saved, mine, prefix: str = "") -> str:
    """The first few keys where two JSON configs differ, as 'key: a vs b'."""
    if isinstance(saved, dict) and isinstance(mine, dict):
        parts = [
            _differences(saved.get(k), mine.get(k), f"{prefix}{k}.")
            for k in sorted(set(saved) | set(mine), key=str)
            if saved.get(k) != mine.get(k)
        ]
        return "; ".join(parts[:3])
    return f"{prefix.rstrip('.') or 'network'}: {saved!r:.80} vs {mine!r:.80}"


def _row_step(row: bytes, last: int) -> bool:
    """Whether a metrics.jsonl row is a whole row of a step up to `last`."""
    try:
        step = json.loads(row).get("step")
    except (ValueError, AttributeError):
        return False
    return isinstance(step, int) and step <= last


@dataclass
class StopReason:
    step: int
    why: str


@dataclass
class LogWindow:
    """The steps since the last metrics row: their summed loss and seconds."""

    loss: float = 0.0
    steps: int = 0
    seconds: float = 0.0

    def add(self, loss: float, seconds: float) -> None:
        self.loss += loss
        self.steps += 1
        self.seconds += seconds


def lr_at(step: int, cfg, progress: float | None) -> float:
    """The learning rate at `step`: a linear warm-up times a decay over the training budget.

    `progress` is the fraction of the run's budget already spent, in steps or in training time,
    whichever is further along (None when the run has no budget: the rate stays constant).
    "linear" decays to zero by the end of the budget, which Li et al. (2020, "Budgeted
    training") and Bergsma et al. (2025, "Straight to zero") found best when the budget is
    known in advance; "cosine" is the half cosine of Loshchilov & Hutter (2017).
    """
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    if progress is None or cfg.lr_schedule == "constant":
        return cfg.lr * warm
    p = min(1.0, max(0.0, progress))
    decay = 1.0 - p if cfg.lr_schedule == "linear" else 0.5 * (1 + math.cos(math.pi * p))
    return cfg.lr * warm * decay


class Trainer:
    """Train one run described by a RunConfig into `out_dir`."""

    def __init__(
        self,
        cfg: RunConfig,
        out_dir: str | Path,
        *,
        device: str | None = None,
        data: ImageData | None = None,
        quiet: bool = False,
    ):
        self.cfg, self.out = cfg, Path(out_dir)
        self.dist = distributed.setup(device)
        self.device = self.dist.device
        self.quiet = quiet or not self.dist.is_main
        tc = cfg.train
        if tc.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("train.precision = 'fp16' needs a CUDA GPU; use 'bf16' or 'fp32'")
        self.data = data if data is not None else load_dataset(cfg.data)
        if not isinstance(self.data, ImageData):
            raise ValueError(
                f"data.name = {cfg.data.name!r} gives points, not images; the "
                "image trainer needs an image dataset"
            )
        self.process = build_process(cfg.diffusion)
        # One generator per rank for t, noise and label dropout, saved for an exact resume.
        self.gen = torch.Generator().manual_seed(tc.seed * 1000 + self.dist.rank)
        train_data: ImageData | torch.Tensor = self.data
        self.autoencoder, self.latent_scale = None, None
        self.model_shape = self.data.image_shape  # what the network sees
        if cfg.latent.autoencoder is not None:
            train_data = self._setup_latents(cfg)
        torch.manual_seed(tc.seed)  # the same seed gives the same initial weights
        self.net, self.net_config = build_network(
            cfg.model, self.model_shape, self.data.num_classes
        )
        self.kind = self.net_config["type"]
        if self.kind == "autoencoder" and cfg.latent.autoencoder is not None:
            raise ValueError("an autoencoder preset cannot itself train on latent.autoencoder")
        self.net.to(self.device)
        self.conditional = self.net_config.get("num_classes") is not None
        self.text_encoder, self.captions, self.caption_tokens = None, None, None
        self.caption_bank = None  # the captions' sentence embeddings, for sampling
        if cfg.text.encoder is not None:
            self._setup_text(cfg)
        if self.conditional and self.data.labels is None:
            raise ValueError(
                "the model is class-conditional (num_classes set) but the dataset "
                f"{self.data.name!r} has no labels"
            )
        self.ema = EMA(self.net, tc.ema_decay, tc.ema_warmup)
        self.optimizer = torch.optim.AdamW(
            self.net.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay
        )
        # fp16 needs loss scaling so small gradients do not flush to zero; bf16 does not.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=tc.precision == "fp16")
        self.model = DDP(self.net) if self.dist.enabled else self.net
        if tc.compile:
            self.model = torch.compile(self.model)
        self.batches = BatchIterator(
            train_data,
            self.data.labels,
            batch_size=tc.batch_size,
            seed=tc.seed,
            hflip=cfg.data.hflip,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            drop_last=True,
        )
        self.step = 0
        self.best_loss = math.inf
        self.best_fid = math.inf
        if tc.fid_every:
            self._check_fid_setup(cfg)
        self.loss_ema: float | None = None
        self.elapsed = 0.0
        # precision and threads, settled on this machine when training starts (step_settings)
        self.step_settings: StepSettings | None = None
        self._recorded_settings: StepSettings | None = None  # from a resumed checkpoint
        self._warmed_up = False
        self._retime_options: list[int] = []  # see settle_step_settings
        self._last_retime = 0.0  # self.elapsed at the last timing of the thread counts
        # the health monitor: the data's statistics (once), the measured step time, findings
        self._data_stats: health.DataStats | None = None
        self.seconds_per_step: float | None = None  # measured over the last log window
        self.findings: list[health.Finding] = []
        # The checkpoint the divergence guard can point to: the last one saved or resumed.
        self.last_saved: tuple[Path, int] | None = None
        self._resumed = False
        self._metrics = None  # metrics.jsonl while train() runs (main rank)
        self.steps_per_epoch = max(1, len(self.data) // (tc.batch_size * self.dist.world_size))

    # ------------------------------------------------------------------ latents and text
    def _setup_latents(self, cfg: RunConfig) -> torch.Tensor:
        """Load the frozen autoencoder, encode the data once, fit the latent scale."""
        from difflab import latent

        if cfg.data.hflip:
            raise ValueError(
                "data.hflip = true does not combine with latent.autoencoder: each image is "
                "encoded once; set data.hflip = false"
            )
        self.autoencoder = latent.load_autoencoder(cfg.latent.autoencoder).to(self.device)
        moments = latent.encode_posteriors(self.autoencoder, self.data.images.to(self.device))
        scale_gen = torch.Generator().manual_seed(cfg.train.seed)
        self.latent_scale = latent.fit_latent_scale(moments.cpu(), scale_gen)
        self.autoencoder.scale_factor.fill_(self.latent_scale)
        self.model_shape = self.autoencoder.latent_shape
        return moments.cpu()

    def _setup_text(self, cfg: RunConfig) -> None:
        """Captions per class, encoded once by the frozen text encoder (a few hundred
        strings: cheaper than encoding every batch, and identical)."""
        from difflab.data.captions import caption_table
        from difflab.models.text import make_text_encoder

        if self.data.labels is None or self.data.class_names is None:
            raise ValueError(
                f"text.encoder needs captions, made from class labels, but {self.data.name!r} "
                "has no labels"
            )
        width = self.net_config["config"].get("context_dim")
        if cfg.text.encoder == "trainable":
            if cfg.text.tokens != "all":
                raise ValueError(
                    f"text.tokens = {cfg.text.tokens!r} applies to the pretrained minilm "
                    "encoder; the trainable one hands over all its tokens (text.tokens = 'all')"
                )
            # Trained with the denoiser: both live in one module (one optimizer, EMA, file).
            from difflab.models.text import TextConditioned, TrainableTextEncoder

            text = TrainableTextEncoder(
                width=cfg.text.width, depth=cfg.text.depth, max_tokens=cfg.text.max_tokens
            )
            self.net = TextConditioned(self.net, text).to(self.device)
            self.net_config = {
                "type": "text-conditioned",
                "net": self.net_config,
                "text": text.spec(),
                "num_classes": self.net_config.get("num_classes"),
            }
            self.text_encoder = text
        else:
            self.text_encoder = make_text_encoder(
                cfg.text.encoder, max_tokens=cfg.text.max_tokens, tokens=cfg.text.tokens
            )
        if width != self.text_encoder.width:
            raise ValueError(
                f"text.encoder = {cfg.text.encoder!r} gives {self.text_encoder.width}-wide "
                f"tokens but the network's context_dim is {width}; set "
                f"model.overrides.context_dim = {self.text_encoder.width}"
                + (" (or text.width)" if cfg.text.encoder == "trainable" else "")
            )
        self.captions = caption_table(cfg.data.name, self.data.class_names)
        if cfg.text.encoder == "trainable":  # tokenised once, encoded with grad every step
            ids, mask = self.text_encoder.tokenize(self.captions.texts)
            self.caption_tokens = (ids.to(self.device), mask.to(self.device))
        else:  # the frozen encoder's output never changes: encode every caption once
            enc = self.text_encoder.encode(self.captions.texts)
            self.caption_tokens = (enc.tokens.to(self.device), enc.mask.to(self.device))
            if cfg.text.tokens == "pooled":  # saved so that sampling can read prompts through it
                from difflab.models.caption_bank import CaptionBank

                self.caption_bank = CaptionBank(self.captions.texts, enc.tokens[:, 0].cpu())

    def _text_condition(self, labels: torch.Tensor):
        """A random caption of each label's class; dropped (all-masked) with cond_drop_prob."""
        from difflab.models.text import TokenIds

        idx = self.captions.pick(labels.cpu(), self.gen).to(self.device)
        tokens, mask = self.caption_tokens
        drop = (torch.rand(len(idx), generator=self.gen) < self.cfg.train.cond_drop_prob).to(
            self.device
        )
        if self.cfg.text.encoder == "trainable":
            return TokenIds(tokens[idx], mask[idx], drop)
        return TextCondition(tokens[idx], mask[idx] & ~drop[:, None])

    # ------------------------------------------------------------------ config for checkpoints
    def checkpoint_config(self) -> dict:
        kind = {"autoencoder": "autoencoder"}.get(self.kind, "pixel-diffusion")
        extra: dict = {}
        if self.autoencoder is not None:
            kind = "latent-diffusion"
            extra["autoencoder"] = {
                "network": {"type": "autoencoder", "config": self.autoencoder.config_dict()},
                "source": str(self.cfg.latent.autoencoder),
                "latent_scale": self.latent_scale,
                "image_shape": list(self.data.image_shape),
            }
        if self.text_encoder is not None:
            extra["text_encoder"] = self.text_encoder.spec()
        return {
            "kind": kind,
            **extra,
            "run": self.cfg.to_dict(),
            "network": self.net_config,
            "model_shape": list(self.model_shape),
            "image_shape": list(self.data.image_shape),
            "class_names": list(self.data.class_names) if self.data.class_names else None,
            "dataset": self.data.name,
            "parameters": sum(p.numel() for p in self.net.parameters()),
            "trained_on": self.machine_record(),
        }

    def machine_record(self) -> dict:
        """Where and how this run trained: hardware, precision, threads and why (provenance)."""
        record = {
            "device": str(self.device),
            "cpu": hardware.describe_cpu(),
            "torch": torch.__version__,
            "world_size": self.dist.world_size,
        }
        if self.device.type == "cuda":
            record["gpu"] = torch.cuda.get_device_name(self.device)
        if self.step_settings is not None:
            record.update(self.step_settings.to_dict())
        return record

    def save(self, name: str) -> Path:
        """Write the checkpoint `name` (last, best, best_fid) with everything an exact resume
        needs; refuses non-finite weights (TrainingDiverged), so no NaN is ever saved."""
        self._check_finite()
        state = {
            "step": self.step,
            "ema_updates": self.ema.num_updates,
            "best_loss": self.best_loss,
            "best_fid": self.best_fid,
            "loss_ema": self.loss_ema,
            "elapsed_seconds": self.elapsed,
            "data": self.batches.state_dict(),
            "generator": ckpt_io.encode_bytes(self.gen.get_state()),
            "torch_rng": ckpt_io.encode_bytes(torch.get_rng_state()),
            "scaler": self.scaler.state_dict(),
            "step_settings": self.step_settings.to_dict() if self.step_settings else None,
            "metrics_bytes": self._sync_metrics(),
        }
        path = ckpt_io.save_checkpoint(
            self.out / name,
            config=self.checkpoint_config(),
            model=self.net.state_dict(),
            ema=self.ema.state_dict(),
            optimizer=self.optimizer.state_dict(),
            state=state,
            components=self._components(),
            keep_previous=True,  # NAME.prev/: a second complete checkpoint to fall back on
        )
        self.last_saved = (path, self.step)
        return path

    def _check_finite(self) -> None:
        """Raise TrainingDiverged when a weight of the model or its EMA is NaN or Inf."""
        for which, module in (("model", self.net), ("EMA", self.ema.model)):
            for key, value in module.state_dict().items():
                if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    raise TrainingDiverged(
                        f"the {which} weight {key} became NaN or Inf by step {self.step}; "
                        f"nothing was saved, {self._last_good()}. " + _DIVERGED_HINT
                    )

    def _last_good(self) -> str:
        """Which checkpoint a diverged run can go back to, named only if it exists."""
        if self.last_saved is not None and self.last_saved[0].is_dir():
            path, step = self.last_saved
            return f"the last good checkpoint is {path} (step {step})"
        return "and no checkpoint was saved yet"

    def _sync_metrics(self) -> int | None:
        """metrics.jsonl's length in bytes, made durable first: the state a resume rewinds the
        log to (rows written after this checkpoint are dropped then)."""
        path = self.out / "metrics.jsonl"
        if not self.dist.is_main or not path.is_file():
            return None
        if self._metrics is not None:
            self._metrics.flush()
        with open(path, "rb") as f:
            os.fsync(f.fileno())
            return os.fstat(f.fileno()).st_size

    def _components(self) -> dict[str, dict[str, torch.Tensor]]:
        """Parts saved beside the network: the frozen autoencoder, the caption bank."""
        from difflab.models.caption_bank import COMPONENT

        parts = {}
        if self.autoencoder is not None:
            parts["autoencoder"] = self.autoencoder.state_dict()
        if self.caption_bank is not None:
            parts[COMPONENT] = self.caption_bank.state_dict()
        return parts

    def resume(self, path: str | Path | None = None) -> None:
        """Continue exactly where a checkpoint left off: weights, EMA, optimizer, data, RNG,
        and metrics.jsonl rewound to it. Without `path`, OUT/last, or the newest complete
        checkpoint after it (last.prev, best, best.prev; load_checkpoint says which)."""
        path = Path(path) if path else self.out / "last"
        ck = ckpt_io.load_checkpoint(path, with_training_state=True, resumable=True)
        path = ck.path
        mine = json.loads(json.dumps(self.net_config))
        if ck.config.get("network") != mine:
            raise ckpt_io.CheckpointError(
                f"cannot resume from {path}: it was trained with a different network "
                f"({_differences(ck.config.get('network'), mine)}; checkpoint vs this run)"
            )
        ckpt_io.load_weights_into(self.net, ck.model, str(path))
        s = ck.state
        source = str(path / ckpt_io.STATE_FILE)
        ckpt_io.require_fields(s, _STATE_FIELDS, source, optional=_OPTIONAL_STATE)
        if s["step"] < 0:
            raise ckpt_io.CheckpointError(f"{source}: 'step' must be >= 0, got {s['step']}")
        try:
            what = "the EMA weights"
            ckpt_io.load_weights_into(self.ema.model, ck.ema, str(path / ckpt_io.EMA_FILE))
            self.ema.num_updates = s.get("ema_updates") or 0
            what = "the optimizer state"
            self.optimizer.load_state_dict(ck.optimizer)
            what = "the data order"
            self.batches.load_state_dict(s["data"])
            what = "the random states"
            self.gen.set_state(ckpt_io.decode_bytes(s["generator"]))
            torch.set_rng_state(ckpt_io.decode_bytes(s["torch_rng"]))
            what = "the loss scaler"
            if s.get("scaler"):
                self.scaler.load_state_dict(s["scaler"])
            what = "the step settings"
            if s.get("step_settings"):
                self._recorded_settings = StepSettings.from_dict(s["step_settings"])
        except ckpt_io.CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise ckpt_io.CheckpointError(
                f"cannot resume from {path}: {what} it holds do not fit this run ({e})"
            ) from e
        self.step, self.best_loss = s["step"], s["best_loss"]
        self.best_fid = s["best_fid"] if s.get("best_fid") is not None else math.inf
        self.loss_ema, self.elapsed = s.get("loss_ema"), s.get("elapsed_seconds") or 0.0
        self.last_saved, self._resumed = (path, self.step), True
        if self.dist.is_main:
            self._rewind_metrics(path, s.get("metrics_bytes"))

    def _rewind_metrics(self, checkpoint: Path, size: int | None) -> None:
        """Drop the metrics.jsonl rows an interrupted run wrote after this checkpoint, which
        the resumed run writes again: to the byte length recorded with the checkpoint, or
        (older checkpoints, or one from another run folder) to the rows up to its step."""
        path = self.out / "metrics.jsonl"
        if not path.is_file():
            return
        data = path.read_bytes()
        if checkpoint.resolve().parent != self.out.resolve():
            size = None  # a byte length recorded for another run's log means nothing here
        if size is not None and size <= len(data) and (size == 0 or data[size - 1] == 10):
            os.truncate(path, size)  # ends a whole row ("\n"): a row cut by a kill is past it
            return
        if size is not None and size > len(data):
            tqdm.write(f"difflab: warning: {path} is shorter than when {checkpoint} was "
                       "saved; rows before the checkpoint are missing from it")
        kept = [row for row in data.splitlines(keepends=True) if _row_step(row, self.step)]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(b"".join(kept))
        os.replace(tmp, path)

    # ------------------------------------------------------------------ one optimisation step
    @property
    def precision(self) -> str:
        """The precision steps run in: the settled one, else the configured one ("auto" runs
        fp32 until train() settles it)."""
        if self.step_settings is not None:
            return self.step_settings.precision
        p = self.cfg.train.precision
        return "fp32" if p == "auto" else p

    def _autocast(self, precision: str | None = None):
        p = precision or self.precision
        if p == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if p == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _loss(
        self,
        x0: torch.Tensor,
        labels: torch.Tensor | None,
        model: torch.nn.Module | None = None,
        precision: str | None = None,
    ) -> torch.Tensor:
        model = model or self.model
        if self.kind == "autoencoder":
            ac = self.cfg.autoencoder
            with self._autocast(precision):
                loss, _ = autoencoder_loss(
                    model, x0, recon=ac.recon, kl_weight=ac.kl_weight, generator=self.gen
                )
            return loss
        if self.autoencoder is not None:  # x0 holds posterior moments: draw scaled latents
            from difflab.latent import sample_latents

            x0 = sample_latents(x0, self.latent_scale, self.gen)
        dc = self.cfg.diffusion
        b = x0.shape[0]
        t = self.process.sample_t(b, self.gen).to(self.device)
        eps = randn(x0.shape, self.gen).to(self.device)
        x_t = self.process.q_sample(x0, t, eps).float()
        cond = None
        if self.text_encoder is not None:
            cond = self._text_condition(labels)
        elif self.conditional:
            # Classifier-free guidance training: drop labels to the null class (Ho & Salimans).
            drop = torch.rand(b, generator=self.gen) < self.cfg.train.cond_drop_prob
            cond = torch.where(drop.to(self.device), self.net_config["num_classes"], labels)
        with self._autocast(precision):
            out = model(x_t, t.float(), cond)
        out = scale_network_output(self.process, out.float(), t, dc.parameterization)
        return diffusion_loss(
            out,
            self.process,
            dc.parameterization,
            x0,
            eps,
            t,
            loss_type=dc.loss,
            snr_gamma=dc.snr_gamma,
        )

    def train_step(self, progress: float | None = None) -> float:
        """One optimisation step; `progress` is the fraction of the budget spent (lr_at)."""
        tc = self.cfg.train
        lr = lr_at(self.step, tc, progress)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(tc.grad_accum):
            batch = self.batches.next_batch()
            x0, labels = batch.images.to(self.device), batch.labels.to(self.device)
            sync = nullcontext()
            if self.dist.enabled and micro < tc.grad_accum - 1:
                sync = self.model.no_sync()
            with sync:
                loss = self._loss(x0, labels)
                self.scaler.scale(loss / tc.grad_accum).backward()
            total += loss.detach() / tc.grad_accum
        loss_value = float(distributed.all_reduce_mean(torch.as_tensor(total), self.dist))
        if not math.isfinite(loss_value):
            raise TrainingDiverged(
                f"the loss became {loss_value} at step {self.step + 1} (lr {lr:.2e}); training "
                f"stopped, {self._last_good()}. " + _DIVERGED_HINT
            )
        if tc.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), tc.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.ema.update(self.net)
        self.step += 1
        return loss_value

    # ------------------------------------------------------------------ machine settings
    def settle_step_settings(self) -> StepSettings:
        """Choose precision and threads for this machine (step_settings.choose), or keep the
        ones a resumed checkpoint recorded where they still hold; every rank takes rank 0's."""
        tc = self.cfg.train
        cores = hardware.cpu_cores()
        settings, note = None, ""
        if self._recorded_settings is not None:
            why_not = step_settings.still_valid(
                self._recorded_settings, tc.precision, tc.threads, self.device, cores
            )
            if why_not is None:
                settings = self._recorded_settings
                note = " (kept from the checkpoint, so the resumed run computes as before)"
            else:
                note = f" (chosen anew: the checkpoint's {self._recorded_settings.precision} "
                note += f"does not hold, {why_not}; the resumed run is not bit-identical)"
        if settings is None:
            settings = step_settings.choose(
                tc.precision,
                tc.threads,
                self.device,
                self._time_step,
                cores=cores,
                local_world_size=self.dist.local_world_size,
                env_threads=step_settings.env_thread_setting(),
            )
        settings = distributed.broadcast_object(settings, self.dist)
        self.step_settings = replace(settings, why=settings.why + note)
        # Thread counts to time again if the machine's load changes (retime_threads): only
        # where "auto" chose them on a single-process CPU run.
        auto_threads = tc.threads == "auto" and not step_settings.env_thread_setting()
        if auto_threads and settings.threads is not None and not self.dist.enabled:
            self._retime_options = step_settings.thread_candidates(cores, 1)
        return self.step_settings

    def _maybe_retime_threads(self) -> None:
        """Time the thread counts again when the last log window ran far slower than the
        chosen setting was timed (the machine got busy), or every RETIME_EVERY_S seconds
        (it may have quietened); switch to the faster, and say so."""
        s = self.step_settings
        if len(self._retime_options) < 2 or s is None or not s.seconds_per_step:
            return
        slow = (self.seconds_per_step or 0) > step_settings.RETIME_SLOWER * s.seconds_per_step
        due = self.elapsed - self._last_retime >= step_settings.RETIME_EVERY_S
        if not (slow or due):
            return
        self._last_retime = self.elapsed
        new = step_settings.retime_threads(s, self._time_step, self._retime_options)
        torch.set_num_threads(new.threads)
        self.step_settings = new
        if new.threads != s.threads and not self.quiet:
            shown = ", ".join(f"{n}: {new.timings[label(new.precision, n)]:.2f} s"
                              for n in self._retime_options)
            tqdm.write(f"difflab: step {self.step}: now {new.threads} thread(s), timed faster "
                       f"on the machine as it is now ({shown} per step)")

    def _time_step(self, precision: str, threads: int | None, best: float | None) -> float:
        """Seconds of one forward/backward pass of the real network on a real batch, in
        `precision` on `threads` threads. Nothing of the run changes: the weights are not
        stepped, gradients are cleared, and every random state is put back."""
        if threads is not None:
            torch.set_num_threads(threads)
        batch = self.batches.batch_at(0, 0)
        x0, labels = batch.images.to(self.device), batch.labels.to(self.device)
        gen_state = self.gen.get_state()

        def one_step() -> None:
            self.gen.set_state(gen_state)
            loss = self._loss(x0, labels, model=self.net, precision=precision)
            loss.backward()
            self.net.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)

        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if not self._warmed_up:  # what any first step pays is no candidate's cost
                one_step()
                self._warmed_up = True
            ga = self.cfg.train.grad_accum
            seconds = step_settings.time_candidate(one_step, best / ga if best else None)
        self.gen.set_state(gen_state)
        return seconds * self.cfg.train.grad_accum

    # ------------------------------------------------------------------ the loop
    def _all_ranks_mean(self, value: float) -> float:
        """The mean of a number over ranks (NCCL reduces device tensors only)."""
        if not self.dist.enabled:
            return value
        tensor = torch.tensor(value, dtype=torch.float64, device=self.device)
        return float(distributed.all_reduce_mean(tensor, self.dist))

    def _progress(self, total: int | None, budget: float) -> float | None:
        """The fraction of the budget spent, steps or time, whichever is further along."""
        parts = [self.step / total] if total else []
        if math.isfinite(budget):
            parts.append(self.elapsed / budget)
        return max(parts) if parts else None

    def total_steps(self) -> int | None:
        tc = self.cfg.train
        candidates = []
        if tc.max_steps is not None:
            candidates.append(tc.max_steps)
        if tc.epochs is not None:
            candidates.append(math.ceil(tc.epochs * self.steps_per_epoch / tc.grad_accum))
        if not candidates and tc.minutes is None:
            candidates.append(self.steps_per_epoch)
        return min(candidates) if candidates else None

    def train(self, on_sample=None) -> StopReason:
        """Run until max_steps / epochs / the time budget; returns why it stopped."""
        tc = self.cfg.train
        total = self.total_steps()
        budget = tc.minutes * 60 if tc.minutes is not None else math.inf
        self.out.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:  # a new run in an old folder: what interrupted writes left there
            for gone in ckpt_io.remove_debris(self.out):
                tqdm.write(f"difflab: removed {gone}, left by an interrupted checkpoint write")
        threads_before = torch.get_num_threads()
        settle_start = time.perf_counter()
        settings = self.settle_step_settings()
        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        # Timing the step is part of the run: it counts against the time budget.
        self.elapsed += time.perf_counter() - settle_start
        self._last_retime = self.elapsed
        if not self.quiet:
            print(f"difflab: {settings.why}", flush=True)
        # A run that starts at step 0 starts its log anew; a resumed one appends to the log
        # that resume() rewound to its checkpoint.
        mode = "a" if (self._resumed or self.step > 0) else "w"
        metrics = open(self.out / "metrics.jsonl", mode) if self.dist.is_main else None
        self._metrics = metrics
        bar = tqdm(
            total=total, initial=self.step, disable=self.quiet, unit="step", dynamic_ncols=True
        )
        window = LogWindow()
        first_step = self.step + 1  # logged whatever log_every says: a curve from the start
        clock = time.perf_counter()
        reason = StopReason(self.step, "max_steps")
        try:
            while True:
                if total is not None and self.step >= total:
                    reason = StopReason(self.step, "max_steps" if tc.max_steps else "epochs")
                    break
                # The time budget counts the whole run, resumed parts included, so a resumed
                # run stops where the uninterrupted one would have; every rank goes by the same
                # (averaged) clock, or ranks would disagree on the learning rate and the stop.
                now = time.perf_counter()
                self.elapsed, clock = self.elapsed + now - clock, now
                if math.isfinite(budget):  # no collective per step unless the clock matters
                    self.elapsed = self._all_ranks_mean(self.elapsed)
                if self.elapsed >= budget:
                    reason = StopReason(self.step, "time budget")
                    break
                t0 = time.perf_counter()
                loss = self.train_step(self._progress(total, budget))
                dt = time.perf_counter() - t0
                window.add(loss, dt)
                self.loss_ema = (
                    loss if self.loss_ema is None else 0.98 * self.loss_ema + 0.02 * loss
                )
                bar.update(1)
                if self.step in (first_step, total) or self.step % tc.log_every == 0:
                    self._log(window, metrics, bar, total, budget)
                    window = LogWindow()
                    self._maybe_retime_threads()
                if tc.sample_every and self.step % tc.sample_every == 0 and on_sample:
                    on_sample(self)
                # Everything a step logs comes before its checkpoint, so that a run resumed
                # from that checkpoint neither repeats nor misses a row.
                improved = bool(tc.fid_every) and self.step % tc.fid_every == 0 and (
                    self._evaluate_fid(metrics)
                )
                if self.step % tc.checkpoint_every == 0 or improved:
                    self._checkpoint()
            if window.steps:  # the last steps before a time budget ran out
                self._log(window, metrics, bar, total, budget)
            self._checkpoint()
            distributed.barrier(self.dist)
        finally:
            bar.close()
            if metrics:
                metrics.close()
            self._metrics = None
            torch.set_num_threads(threads_before)
        return reason

    def _log(self, window: LogWindow, metrics, bar: tqdm, total: int | None,
             budget: float) -> None:
        """One metrics.jsonl row for the steps since the last, and the progress bar's numbers:
        its end estimated from the measured speed where only a time budget bounds the run,
        and the time left by whichever budget ends first."""
        tc = self.cfg.train
        images_per_step = tc.batch_size * tc.grad_accum * self.dist.world_size
        self.seconds_per_step = window.seconds / window.steps
        ips = images_per_step / max(self.seconds_per_step, 1e-9)
        row = {
            "step": self.step,
            "loss": window.loss / window.steps,
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_sec": ips,
            "epoch": self.step * images_per_step / len(self.data),
            "elapsed_sec": self.elapsed,
        }
        if metrics:
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
        left = budget - self.elapsed
        if total is not None:
            left = min(left, (total - self.step) * self.seconds_per_step)
        elif math.isfinite(left):  # a time budget alone: the bar's end is an estimate
            bar.total = self.step + max(0, round(left / self.seconds_per_step))
            bar.refresh()
        bar.set_postfix(
            loss=f"{row['loss']:.4f}",
            img_s=f"{ips:.0f}",
            left=f"{left / 60:.1f}m" if math.isfinite(left) else "-",
        )

    def _check_fid_setup(self, cfg: RunConfig) -> None:
        """train.fid_every needs a diffusion run on a dataset difflab.metrics can score."""
        from difflab.metrics.features import DATASETS

        if self.kind == "autoencoder":
            raise ValueError(
                "train.fid_every is for diffusion runs; an autoencoder run reports its "
                "reconstructions (bench/autoencoder_quality.py scores them): set it to 0"
            )
        if cfg.data.name not in DATASETS:
            raise ValueError(
                f"train.fid_every needs a dataset with a feature network ({', '.join(DATASETS)});"
                f" {cfg.data.name!r} has none: set train.fid_every = 0"
            )
        if cfg.train.fid_samples < 4:
            raise ValueError(f"train.fid_samples must be at least 4, got {cfg.train.fid_samples}")

    def _evaluate_fid(self, metrics) -> bool:
        """FID / KID of fid_samples images from the EMA weights into metrics.jsonl; the
        lowest FID so far keeps its weights as the "best_fid" checkpoint (main rank only:
        the others wait for it at the next step's gradient all-reduce). True when it did (the
        caller then saves last/, which must carry the new best_fid for resume)."""
        if not self.dist.is_main:
            return False
        from difflab.metrics.evaluate import evaluate_generator
        from difflab.training.report import generator_from_trainer, sample_kwargs

        t0 = time.perf_counter()
        report = evaluate_generator(
            generator_from_trainer(self),
            self.cfg.data.name,
            self.cfg.train.fid_samples,
            classes=self.cfg.data.classes,
            seed=self.cfg.train.seed,
            **sample_kwargs(self),
        )
        row = {
            "step": self.step,
            "fid": report["fid"],
            "kid": report["kid"],
            "kid_stderr": report["kid_stderr"],
            "fid_samples": self.cfg.train.fid_samples,
            "feature_space": report["feature_space"],
            "fid_seconds": round(time.perf_counter() - t0, 1),
        }
        if "class_agreement" in report:
            row["class_agreement"] = report["class_agreement"]
        if metrics:
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
        if report["fid"] < self.best_fid:
            self.best_fid = report["fid"]
            self.save("best_fid")
            return True
        return False

    # ------------------------------------------------------------------ health
    def check_health(self, draw: Callable[[], torch.Tensor] | None = None) -> list[health.Finding]:
        """Check the EMA weights, then the fixed-seed samples `draw()` returns (uint8 or float
        in [-1, 1]; not drawn from non-finite weights), and the speed against the start-up
        timing; warn about each finding (main rank), log their kinds to metrics.jsonl, and
        keep them in `self.findings`."""
        findings = health.check_weights(self.ema.model, self.step)
        if draw is not None and not findings:
            if self._data_stats is None:
                self._data_stats = health.data_stats(self.data.images)
            findings += health.check_samples(draw(), self._data_stats, self.step)
        expected = self.step_settings.seconds_per_step if self.step_settings else None
        if expected and self.seconds_per_step:
            slow = health.throughput_finding(1 / self.seconds_per_step, 1 / expected, self.step)
            findings += [slow] if slow else []
        self.findings = findings
        if self.dist.is_main:
            for f in findings:
                tqdm.write(f"difflab: warning: {f.message}")
            with open(self.out / "metrics.jsonl", "a") as metrics:
                metrics.write(json.dumps({"step": self.step,
                                          "health": [f.kind for f in findings]}) + "\n")
        return findings

    def _checkpoint(self) -> None:
        """best/ when the smoothed loss improved, then last/ (which carries the new
        best_loss for resume): one write of each, last/ never older than best/ after both."""
        if not self.dist.is_main:
            return
        if self.loss_ema is not None and self.loss_ema < self.best_loss:
            self.best_loss = self.loss_ema
            self.save("best")
        self.save("last")

    def close(self) -> None:
        distributed.cleanup(self.dist)


def describe(trainer: Trainer) -> str:
    return describe_network(trainer.net, trainer.model_shape)
