"""The training loop: data -> objective's loss -> AdamW, with EMA, checkpoints, resume.

Three kinds of run share it, each an objective (difflab.training.objectives) that owns its
network, its loss and what its checkpoint carries: a pixel-space diffusion model (class labels
or captions optional); an autoencoder (a ``kl-f*`` preset: reconstruction + KL, no noise); and
a latent diffusion model (``latent.autoencoder`` set).

One `Trainer` serves a laptop CPU, one GPU and torchrun's many processes alike. What it owns:
the optimizer and LR schedule (linear warm-up, then constant or cosine), bf16/fp16 autocast,
gradient accumulation and clipping, the EMA weights, hooks for a sample grid and FID every N
steps (supplied by difflab.runs), JSONL metrics, best/last checkpoints written atomically, an
exact `resume` (metrics.jsonl rewound to the checkpoint, so a resumed log matches an
uninterrupted one), and a guard that stops on a NaN/Inf loss or non-finite weights and never
saves them.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from difflab import hardware
from difflab.build import build_process, describe_network
from difflab.checkpoints import store as ckpt_io
from difflab.checkpoints.components import guide_component
from difflab.config import RunConfig
from difflab.data import BatchIterator, ImageData, load_dataset
from difflab.metrics.features import DATASETS
from difflab.training import distributed, health, run_state
from difflab.training.ema import EMA, PowerEMA
from difflab.training.interrupt import StopOnCtrlC
from difflab.training.metrics_log import MetricsLog
from difflab.training.objectives import make_objective
from difflab.training.posthoc_snapshots import (
    SNAPSHOT_DIR,
    component_name,
    save_snapshots,
)
from difflab.training.step_settings import StepSettings
from difflab.training.step_tuning import StepTuner

# Devices whose AdamW has a fused kernel in every torch difflab supports.
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or Inf; nothing non-finite is saved."""


_DIVERGED_HINT = "Try a lower train.lr, train.grad_clip = 1.0 or train.precision = 'fp32'."


@dataclass
class StopReason:
    step: int
    why: str
    signal: int | None = None  # INTERRUPTED: the signal that asked (SIGINT or SIGTERM)


INTERRUPTED = "interrupted"  # StopReason.why of a run stopped by Ctrl-C or SIGTERM (interrupt.py)


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


WARMUP_SHARE = 0.1  # the most of a run's budget the learning-rate warm-up may take


def lr_at(step: int, cfg, progress: float | None) -> float:
    """The learning rate at `step`: a linear warm-up (train.warmup_steps, or WARMUP_SHARE of
    the budget where that is shorter) times a decay over the training budget.

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
    # ...over at most WARMUP_SHARE of the budget: a 60-step run with the presets' 200-step
    # warm-up would otherwise peak at an eighth of train.lr and decay from there
    warm = max(warm, min(1.0, p / WARMUP_SHARE))
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
        # What differs between kinds of run (pixel or latent diffusion, the autoencoder):
        # the network, what batches hold, the loss, what a checkpoint carries.
        self.objective = make_objective(cfg, self.data, self.process, self.device, self.quiet)
        self.net, self.net_config = self.objective.net, self.objective.net_config
        self.kind = self.net_config.get("net", self.net_config)["type"]  # the base network
        self.conditional = self.net_config.get("num_classes") is not None
        text = self.objective.text
        self.text_encoder = text.encoder if text is not None else None
        self.captions = text.captions if text is not None else None
        self.caption_bank = text.bank if text is not None else None
        self.autoencoder = self.objective.autoencoder
        self.latent_scale = self.objective.latent_scale
        self.model_shape = getattr(self.objective, "model_shape", self.data.image_shape)
        train_data = getattr(self.objective, "moments", self.data)  # latents: posterior moments
        # the weights that get sampled: a power EMA of a share of the run (train.ema_length)
        # or one of a fixed number of steps (train.ema_decay)
        self.ema = (PowerEMA(self.net, tc.ema_length) if tc.ema_length is not None
                    else EMA(self.net, tc.ema_decay, tc.ema_warmup))
        # the average the guide is kept from, when not the sampled one (train.guide_ema_length,
        # which the config allows only with guide_at); it goes on after the guide is kept, so
        # a resume that extends the budget can take the guide again where it now belongs
        self.guide_ema = (PowerEMA(self.net, tc.guide_ema_length)
                          if tc.guide_ema_length is not None else None)
        # post-hoc EMA: power EMAs of the lengths in train.posthoc_ema, snapshotted as it trains
        self.posthoc = [PowerEMA(self.net, length) for length in tc.posthoc_ema or ()]
        self.posthoc_saved_at: int | None = None  # the step of the last snapshots written
        # fused: one kernel updates every tensor, where the default on a CPU runs about ten
        # small ops per tensor; 5-7 % of a step of the default 0.46 M network on a CPU, fp32
        # and bf16 alike (BENCHMARKS.md, "Where a training step's time goes").
        self.optimizer = torch.optim.AdamW(
            self.net.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay,
            fused=self.device.type in FUSED_ADAMW_DEVICES or None,
        )
        # fp16 needs loss scaling so small gradients do not flush to zero; bf16 does not.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=tc.precision == "fp16")
        self.model = DDP(self.net) if self.dist.enabled else self.net
        if tc.compile:
            self.model = torch.compile(self.model)
        per_rank = len(train_data) // self.dist.world_size
        if per_rank < tc.batch_size:  # every batch is whole: the loader would have none
            ranks = f" per process of {self.dist.world_size}" if self.dist.enabled else ""
            raise ValueError(
                f"{self.data.name} has {per_rank} images{ranks}, fewer than train.batch_size "
                f"= {tc.batch_size}: add images, or set --set train.batch_size={max(per_rank, 1)}"
            )
        self.batches = BatchIterator(
            train_data,
            self.data.labels,
            batch_size=tc.batch_size,
            seed=tc.seed,
            hflip=cfg.data.hflip,
            balance=cfg.data.balance,
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
        self.tuner = StepTuner(self)  # chooses them, and times the threads again when due
        # the health monitor: the data's statistics (once), the measured step time, findings
        self._data_stats: health.DataStats | None = None
        self.seconds_per_step: float | None = None  # measured over the last log window
        self.findings: list[health.Finding] = []
        # The checkpoint the divergence guard can point to: the last one saved or resumed.
        self.last_saved: tuple[Path, int] | None = None
        self._saved_log_bytes: int | None = None  # metrics.jsonl's length at that save
        self._resumed = False
        self.resumed_run: dict | None = None  # the settings the resumed checkpoint recorded
        # the checkpoint a warm start began from: {"path", "step"} (run_state.warm_start)
        self.init_from: dict | None = None
        # autoguidance's guide: the EMA weights at train.guide_at of the budget, and their step
        self.guide: dict[str, torch.Tensor] | None = None
        self.guide_step: int | None = None
        self.metrics = MetricsLog(self.out / "metrics.jsonl")  # written by rank 0 only
        self.steps_per_epoch = max(1, len(self.data) // (tc.batch_size * self.dist.world_size))

    # ------------------------------------------------------------------ config for checkpoints
    def checkpoint_config(self) -> dict:
        return {
            "kind": self.objective.kind,
            **self.objective.checkpoint_config(),
            "run": self.cfg.to_dict(),
            "network": self.net_config,
            "model_shape": list(self.model_shape),
            "image_shape": list(self.data.image_shape),
            "class_names": list(self.data.class_names) if self.data.class_names else None,
            "dataset": self.data.name,
            "parameters": sum(p.numel() for p in self.net.parameters()),
            "trained_on": self.machine_record(),
            **({"guide": {"step": self.guide_step}} if self.guide is not None else {}),
            # what the training images look like, so that sampling the checkpoint can judge
            # its samples as the run's health checks do, without the data at hand
            **({"data_stats": health.stats_to_dict(self.data_stats())}
               if self.kind != "autoencoder" and len(self.data) >= 2 else {}),
        }

    def data_stats(self) -> health.DataStats:
        """The training images' statistics the health checks judge samples against (once)."""
        if self._data_stats is None:
            self._data_stats = health.data_stats(self.data.images)
        return self._data_stats

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
        # the averages only training needs: the post-hoc EMAs and the guide's
        averages = {component_name(i): e.state_dict() for i, e in enumerate(self.posthoc)}
        if self.guide_ema is not None:
            averages[ckpt_io.GUIDE_EMA] = self.guide_ema.state_dict()
        state = run_state.training_state(self)
        path = ckpt_io.save_checkpoint(
            self.out / name,
            config=self.checkpoint_config(),
            model=self.net.state_dict(),
            ema=self.ema.state_dict(),
            optimizer=self.optimizer.state_dict(),
            state=state,
            components={**self.objective.components(), **guide_component(self.guide),
                        **averages},
            keep_previous=True,  # NAME.prev/: a second complete checkpoint to fall back on
        )
        self.last_saved = (path, self.step)
        self._saved_log_bytes = state["metrics_bytes"]
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

    def resume(self, path: str | Path | None = None) -> None:
        """Continue exactly where a checkpoint left off: weights, EMA, optimizer, data, RNG,
        and metrics.jsonl rewound to it. Without `path`, OUT/last, or the newest complete
        checkpoint after it (last.prev, best, best.prev; load_checkpoint says which)."""
        ck = ckpt_io.load_checkpoint(path or self.out / "last", with_training_state=True,
                                     resumable=True)
        run_state.restore(self, ck)
        self.last_saved, self._resumed = (ck.path, self.step), True
        run = ck.config.get("run")  # the settings the run last trained with, as recorded
        self.resumed_run = run if isinstance(run, dict) else None
        if self.dist.is_main:
            self.metrics.rewind(ck.path, ck.state.get("metrics_bytes"), self.step)

    def warm_start(self, path: str | Path) -> None:
        """Start this new run from the weights of the checkpoint at `path` (a run's last/ or
        best/, or a shipped model), with a fresh optimizer, schedule and step count
        (run_state.warm_start). Refuses a checkpoint of another network."""
        run_state.warm_start(self, ckpt_io.load_checkpoint(path, with_training_state=True))

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

    def batch_loss(self, x: torch.Tensor, labels: torch.Tensor | None,
                   model: torch.nn.Module | None = None, precision: str | None = None
                   ) -> torch.Tensor:
        """The objective's loss on one batch (`model`: the DDP-wrapped net unless given)."""
        return self.objective.loss(model or self.model, x, labels, self.gen,
                                   self._autocast(precision))

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
                loss = self.batch_loss(x0, labels)
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
        for ema in (self.ema, *self.posthoc, self.guide_ema):
            if ema is not None:
                ema.update(self.net)
        self.step += 1
        return loss_value

    # ------------------------------------------------------------------ the loop
    def keep_guide(self, progress: float | None) -> None:
        """Keep the EMA weights once the run has spent train.guide_at of its budget: the
        earlier, worse version of this model that autoguidance steers away from (Karras et
        al. 2024, sec. 3). A run without a budget (progress None) has no such point."""
        at = self.cfg.train.guide_at
        if at is None or self.guide is not None or progress is None or progress < at:
            return
        source = (self.guide_ema or self.ema).model
        self.guide = {k: v.detach().clone() for k, v in source.state_dict().items()}
        self.guide_step = self.step
        self.save_posthoc()  # so that the guide's own average can be rebuilt at its step

    def move_guide(self, progress: float | None) -> int | None:
        """Let go of a kept guide when the budget has grown past it (a resume with more
        --minutes or --steps): train.guide_at of the new budget lies ahead, and keep_guide
        takes the guide again there, from the average it was kept from, which went on. A power
        EMA does not depend on the budget, so the guide is the one a run given the longer
        budget from the start would keep. Returns the step of the guide let go, else None."""
        at = self.cfg.train.guide_at
        if (at is None or self.guide is None or progress is None or progress >= at
                or (self.cfg.train.guide_ema_length is not None and self.guide_ema is None)):
            return None  # the last: a checkpoint from before the average went on past its guide
        step, self.guide, self.guide_step = self.guide_step, None, None
        return step

    def save_posthoc(self) -> None:
        """Snapshot the power EMAs at this step (train.posthoc_ema), once per step."""
        if (not self.posthoc or not self.dist.is_main or self.step == 0
                or self.posthoc_saved_at == self.step):
            return
        save_snapshots(self.out, self.posthoc, self.step, self.net_config)
        self.posthoc_saved_at = self.step

    def _any_rank(self, flag: bool) -> bool:
        """Whether `flag` is set on any rank (one small all-reduce a step when distributed)."""
        if not self.dist.enabled:
            return flag
        tensor = torch.tensor(float(flag), device=self.device)
        return bool(distributed.all_reduce_max(tensor, self.dist) > 0)

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

    def train(
        self,
        on_sample: Callable[[Trainer], None] | None = None,
        score: Callable[[Trainer], dict[str, Any]] | None = None,
    ) -> StopReason:
        """Run until max_steps / epochs / the time budget; returns why it stopped.

        What a run does besides training comes from the floors above (difflab.runs):
        `on_sample(trainer)` every train.sample_every steps (the sample grid), and
        `score(trainer)` every train.fid_every steps (a report with "fid", "kid", ...)."""
        tc = self.cfg.train
        if tc.fid_every and score is None:
            raise ValueError(
                "train.fid_every is set but nothing scores the samples: pass "
                "score=difflab.runs.score_fid (as difflab train does), or set "
                "train.fid_every = 0"
            )
        total = self.total_steps()
        budget = tc.minutes * 60 if tc.minutes is not None else math.inf
        self.out.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:  # a new run in an old folder: what interrupted writes left there
            snapshots = self.out / SNAPSHOT_DIR
            for gone in [*ckpt_io.remove_debris(self.out),
                         *(ckpt_io.remove_debris(snapshots) if snapshots.is_dir() else [])]:
                tqdm.write(f"difflab: removed {gone}, left by an interrupted checkpoint write")
        threads_before = torch.get_num_threads()
        settle_start = time.perf_counter()
        settings = self.tuner.settle()
        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        # Timing the step is part of the run: it counts against the time budget.
        self.elapsed += time.perf_counter() - settle_start
        self.tuner.last_retime = self.elapsed
        if not self.quiet:
            print(f"difflab: {settings.why}", flush=True)
        moved = self.move_guide(self._progress(total, budget))
        if moved is not None and not self.quiet:
            print(f"difflab: the budget grew, so autoguidance's guide (kept at step {moved:,}) "
                  f"is taken again at {self.cfg.train.guide_at:g} of it", flush=True)
        if self.dist.is_main:
            self.metrics.open(append=self._resumed or self.step > 0)
        bar = tqdm(
            total=total, initial=self.step, disable=self.quiet, unit="step", dynamic_ncols=True
        )
        window = LogWindow()
        first_step = self.step + 1  # logged whatever log_every says: a curve from the start
        clock = time.perf_counter()
        reason = StopReason(self.step, "max_steps")
        ctrl_c = StopOnCtrlC(distributed=self.dist.enabled, announce=self.dist.is_main)
        try:
            ctrl_c.install()
            while True:
                if total is not None and self.step >= total:
                    reason = StopReason(self.step, "max_steps" if tc.max_steps else "epochs")
                    break
                # After a whole step, so that the checkpoint below resumes exactly; the ranks
                # of a distributed run stop at the same step when any of them was asked.
                if self._any_rank(ctrl_c.requested):
                    reason = StopReason(self.step, INTERRUPTED, ctrl_c.signal or signal.SIGINT)
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
                try:
                    loss = self.train_step(self._progress(total, budget))
                except Exception:
                    # The terminal's Ctrl-C reaches the step's children too (torch.compile's
                    # C++ compiler): their failure is the interruption, not an error of its own
                    if ctrl_c.requested:
                        raise KeyboardInterrupt from None
                    raise
                dt = time.perf_counter() - t0
                self.keep_guide(self._progress(total, budget))
                window.add(loss, dt)
                self.loss_ema = (
                    loss if self.loss_ema is None else 0.98 * self.loss_ema + 0.02 * loss
                )
                bar.update(1)
                if self.step in (first_step, total) or self.step % tc.log_every == 0:
                    self._log(window, bar, total, budget)
                    window = LogWindow()
                    self.tuner.maybe_retime()
                if self.step % tc.posthoc_every == 0:
                    self.save_posthoc()
                if tc.sample_every and self.step % tc.sample_every == 0 and on_sample:
                    on_sample(self)
                # Everything a step logs comes before its checkpoint, so that a run resumed
                # from that checkpoint neither repeats nor misses a row.
                improved = bool(tc.fid_every) and self.step % tc.fid_every == 0 and (
                    self._record_score(score)
                )
                if self.step % tc.checkpoint_every == 0 or improved:
                    self._checkpoint()
            if window.steps:  # the last steps before a time budget ran out
                self._log(window, bar, total, budget)
            self.save_posthoc()  # the run's end: the step export rebuilds averages at
            if not self._last_holds_everything():
                # Not when the loop's last step was just saved and nothing was logged since:
                # a second save of the same step would replace last.prev/, the one earlier
                # checkpoint there is to fall back on, with a copy of last/.
                self._checkpoint()
            distributed.barrier(self.dist)
        finally:
            ctrl_c.restore()
            bar.close()
            self.metrics.close()
            torch.set_num_threads(threads_before)
        return reason

    def _log(self, window: LogWindow, bar: tqdm, total: int | None,
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
        if self.dist.is_main:
            self.metrics.write(row)
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

    def _record_score(self, score: Callable[[Trainer], dict[str, Any]]) -> bool:
        """FID / KID of fid_samples images from the EMA weights, as `score(self)` measures
        them (difflab.runs.score_fid: sampling is the pipeline's job, above this loop), into
        metrics.jsonl; the lowest FID so far keeps its weights as the "best_fid" checkpoint
        (main rank only: the others wait for it at the next step's gradient all-reduce). True
        when it did (the caller then saves last/, which must carry the new best_fid)."""
        if not self.dist.is_main:
            return False
        t0 = time.perf_counter()
        report = score(self)
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
        self.metrics.write(row)
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
            findings += health.check_samples(draw(), self.data_stats(), self.step,
                                             reconstructions=self.kind == "autoencoder")
        expected = self.step_settings.seconds_per_step if self.step_settings else None
        if expected and self.seconds_per_step:
            slow = health.throughput_finding(1 / self.seconds_per_step, 1 / expected, self.step)
            findings += [slow] if slow else []
        self.findings = findings
        if self.dist.is_main:
            for f in findings:
                tqdm.write(f"difflab: warning: {f.message}")
            self.metrics.write({"step": self.step, "health": [f.kind for f in findings]})
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

    def _last_holds_everything(self) -> bool:
        """Whether last/ was saved at this step with every metrics row logged so far (main
        process only), so that saving it again would record nothing new."""
        if not self.dist.is_main or self.last_saved is None:
            return False
        path, step = self.last_saved
        return (path.name == "last" and step == self.step
                and self._saved_log_bytes == self.metrics.durable_size())

    def close(self) -> None:
        distributed.cleanup(self.dist)


def describe(trainer: Trainer) -> str:
    return describe_network(trainer.net, trainer.model_shape)
