"""Precision and threads for this machine: chosen by timing the run's own step when training
starts (step_settings.choose), kept from a resumed checkpoint where they still hold, and timed
again while the run trains when the machine's load changes: the thread count, and the choice
between fp32 and native bf16 where "auto" made it."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from tqdm import tqdm

from difflab import hardware
from difflab.training import distributed, step_settings
from difflab.training.step_settings import StepSettings, label

# Appended to the saved choice's reason when a resumed run keeps it (once, however often resumed).
KEPT = " (kept from the checkpoint, so the resumed run computes as before)"
# The share of a timed run's budget that choosing its precision and threads may take: a step
# of 256x256 pictures takes 20-40 s on a laptop CPU, and timing every candidate twice took 2.7
# of a 0.3-minute budget; past this share the candidates not yet timed are left out.
TIMING_SHARE = 0.05

class StepTuner:
    """Chooses and re-times a trainer's step settings; the trainer keeps the result in
    `trainer.step_settings`."""

    def __init__(self, trainer: Any):
        self.trainer = trainer
        self.recorded: StepSettings | None = None  # from a resumed checkpoint
        self.options: list[int] = []  # thread counts to time again (maybe_retime)
        self.retime_precision = False  # whether fp32 against native bf16 is timed again too
        self.last_retime = 0.0  # trainer.elapsed at the last timing of the thread counts
        self.warmed_up = False

    def settle(self) -> StepSettings:
        """Choose precision and threads for this machine (step_settings.choose), or keep the
        ones a resumed checkpoint recorded where they still hold; every rank takes rank 0's."""
        tr = self.trainer
        tc = tr.cfg.train
        cores, physical = hardware.cpu_cores(), hardware.physical_cores()
        settings, note = None, ""
        if self.recorded is not None:
            why_not = step_settings.still_valid(
                self.recorded, tc.precision, tc.threads, tr.device, cores, tc.compile
            )
            if why_not is None:
                settings = self.recorded
                note = KEPT
            else:
                note = f" (chosen anew: the checkpoint's {self.recorded.precision} "
                note += f"does not hold, {why_not}; the resumed run is not bit-identical)"
        if settings is None:
            settings = step_settings.choose(
                tc.precision,
                tc.threads,
                tr.device,
                self.time_step,
                cores=cores,
                local_world_size=tr.dist.local_world_size,
                env_threads=step_settings.env_thread_setting(),
                compiled=tc.compile,
                physical=physical,
                allowance=TIMING_SHARE * tc.minutes * 60 if tc.minutes else math.inf,
            )
        settings = distributed.broadcast_object(settings, tr.dist)
        why = settings.why
        while why.endswith(KEPT):  # said once, however often the run was resumed
            why = why.removesuffix(KEPT)
        tr.step_settings = replace(settings, why=why + note)
        # Thread counts to time again if the machine's load changes (retime_threads): only
        # where "auto" chose them on a single-process CPU run.
        auto_threads = tc.threads == "auto" and not step_settings.env_thread_setting()
        single_cpu = settings.threads is not None and not tr.dist.enabled
        if auto_threads and single_cpu:
            self.options = step_settings.thread_candidates(cores, 1, physical)
        # As at the start: only where auto chose between the two (a CPU with native bf16, not
        # compiled), and where no other rank would have to follow.
        self.retime_precision = (single_cpu and tc.precision == "auto" and not tc.compile
                                 and hardware.native_bf16(tr.device)[0])
        return tr.step_settings

    def maybe_retime(self) -> None:
        """Time the thread counts (and fp32 against native bf16, where auto chose between
        them) again when the last log window ran far slower than the chosen setting was timed
        (the machine got busy), or every RETIME_EVERY_S seconds (it may have quietened);
        switch to the faster, and say so."""
        tr = self.trainer
        s = tr.step_settings
        if len(self.options) < 2 and not self.retime_precision:
            return
        if s is None or not s.seconds_per_step:
            return
        slow = (tr.seconds_per_step or 0) > step_settings.RETIME_SLOWER * s.seconds_per_step
        due = tr.elapsed - self.last_retime >= step_settings.RETIME_EVERY_S
        if not (slow or due):
            return
        self.last_retime = tr.elapsed
        new = step_settings.retime_threads(s, self.time_step, self.options or [s.threads])
        torch.set_num_threads(new.threads)
        if new.threads != s.threads and not tr.quiet:
            shown = ", ".join(f"{n}: {new.timings[label(new.precision, n)]:.2f} s"
                              for n in self.options)
            tqdm.write(f"difflab: step {tr.step}: now {new.threads} thread(s), timed faster "
                       f"on the machine as it is now ({shown} per step)")
        if self.retime_precision:
            was = new
            new = step_settings.retime_precision(was, self.time_step, tr.step)
            if new.precision != was.precision and not tr.quiet:
                tqdm.write(f"difflab: step {tr.step}: now {new.precision}, timed faster on the "
                           f"machine as it is now ({new.precision} {new.seconds_per_step:.2f} s, "
                           f"{was.precision} {was.seconds_per_step:.2f} s per step)")
        tr.step_settings = new

    def time_step(self, precision: str, threads: int | None, best: float | None) -> float:
        """Seconds of one forward/backward pass of the real network on a real batch, in
        `precision` on `threads` threads. Nothing of the run changes: the weights are not
        stepped, gradients are cleared, and every random state is put back."""
        tr = self.trainer
        if threads is not None:
            torch.set_num_threads(threads)
        batch = tr.batches.batch_at(0, 0)
        x0, labels = batch.images.to(tr.device), batch.labels.to(tr.device)
        gen_state = tr.gen.get_state()

        def one_step() -> None:
            tr.gen.set_state(gen_state)
            loss = tr.batch_loss(x0, labels, model=tr.net, precision=precision)
            loss.backward()
            tr.net.zero_grad(set_to_none=True)
            if tr.device.type == "cuda":
                torch.cuda.synchronize(tr.device)

        devices = [tr.device] if tr.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if not self.warmed_up:  # what any first step pays is no candidate's cost
                one_step()
                self.warmed_up = True
            ga = tr.cfg.train.grad_accum
            seconds = step_settings.time_candidate(one_step, best / ga if best else None)
        tr.gen.set_state(gen_state)
        return seconds * tr.cfg.train.grad_accum
