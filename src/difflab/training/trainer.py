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
JSONL metrics, best/last checkpoints written atomically, an exact `resume`, and a guard that
stops on a NaN/Inf loss with the last good checkpoint kept.
"""

from __future__ import annotations

import json
import math
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
from difflab.training.step_settings import StepSettings


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


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
        # the health monitor: the data's statistics (once), the measured step time, findings
        self._data_stats: health.DataStats | None = None
        self.seconds_per_step: float | None = None  # measured over the last log window
        self.findings: list[health.Finding] = []
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
        }
        return ckpt_io.save_checkpoint(
            self.out / name,
            config=self.checkpoint_config(),
            model=self.net.state_dict(),
            ema=self.ema.state_dict(),
            optimizer=self.optimizer.state_dict(),
            state=state,
            components=self._components(),
        )

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
        """Continue exactly where a checkpoint left off: weights, EMA, optimizer, data, RNG."""
        path = Path(path) if path else self.out / "last"
        ck = ckpt_io.load_checkpoint(path, with_training_state=True)
        if ck.config.get("network") != json.loads(json.dumps(self.net_config)):
            raise ckpt_io.CheckpointError(
                f"cannot resume from {path}: it was trained with network "
                f"{ck.config.get('network')}, this run builds {self.net_config}"
            )
        ckpt_io.load_weights_into(self.net, ck.model, str(path))
        if ck.ema is not None:
            self.ema.load_state_dict(ck.ema, ck.state.get("ema_updates", 0))
        if ck.optimizer is not None:
            self.optimizer.load_state_dict(ck.optimizer)
        s = ck.state
        self.step, self.best_loss = s["step"], s["best_loss"]
        self.best_fid = s.get("best_fid", math.inf)
        self.loss_ema, self.elapsed = s.get("loss_ema"), s.get("elapsed_seconds", 0.0)
        self.batches.load_state_dict(s["data"])
        self.gen.set_state(ckpt_io.decode_bytes(s["generator"]))
        torch.set_rng_state(ckpt_io.decode_bytes(s["torch_rng"]))
        if s.get("scaler"):
            self.scaler.load_state_dict(s["scaler"])
        if s.get("step_settings"):
            self._recorded_settings = StepSettings.from_dict(s["step_settings"])

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
                f"stopped and the last good checkpoint in {self.out / 'last'} is kept. Try a "
                "lower train.lr, train.grad_clip = 1.0 or train.precision = 'fp32'."
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
        return self.step_settings

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
        threads_before = torch.get_num_threads()
        settle_start = time.perf_counter()
        settings = self.settle_step_settings()
        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        # Timing the step is part of the run: it counts against the time budget.
        self.elapsed += time.perf_counter() - settle_start
        if not self.quiet:
            print(f"difflab: {settings.why}", flush=True)
        metrics = open(self.out / "metrics.jsonl", "a") if self.dist.is_main else None
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
                if tc.sample_every and self.step % tc.sample_every == 0 and on_sample:
                    on_sample(self)
                if self.step % tc.checkpoint_every == 0:
                    self._checkpoint()
                if tc.fid_every and self.step % tc.fid_every == 0:
                    self._evaluate_fid(metrics)
            if window.steps:  # the last steps before a time budget ran out
                self._log(window, metrics, bar, total, budget)
            self._checkpoint()
            distributed.barrier(self.dist)
        finally:
            bar.close()
            if metrics:
                metrics.close()
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

    def _evaluate_fid(self, metrics) -> None:
        """FID / KID of fid_samples images from the EMA weights into metrics.jsonl; the
        lowest FID so far keeps its weights as the "best_fid" checkpoint (main rank only:
        the others wait for it at the next step's gradient all-reduce)."""
        if not self.dist.is_main:
            return
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
            self.save("last")  # keep best_fid in last/ consistent for resume

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
        if not self.dist.is_main:
            return
        self.save("last")
        if self.loss_ema is not None and self.loss_ema < self.best_loss:
            self.best_loss = self.loss_ema
            self.save("best")
            self.save("last")  # keep best_loss in last/ consistent for resume

    def close(self) -> None:
        distributed.cleanup(self.dist)


def describe(trainer: Trainer) -> str:
    return describe_network(trainer.net, trainer.model_shape)
