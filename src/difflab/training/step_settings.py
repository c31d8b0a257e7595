"""Choose how a training step runs on this machine: precision and intra-op threads.

``train.precision = "auto"`` and ``train.threads = "auto"`` (the defaults) are settled at the
start of a run, from detection where it is decisive and from timing the run's own
forward/backward step where it is not:

- precision: bf16 where it is native and faster. On a CUDA GPU with native bf16 (compute
  capability 8.0+) it is taken without timing; on a CPU whose oneDNN reports native bf16 both
  precisions are timed on the real step and the faster is kept; on a CPU without native bf16,
  fp32, without timing bf16 at all (one emulated step of the default network takes 20-90 s).
- threads (CPU only): all logical CPUs, the physical cores (fewer where hyperthreads pair
  them), half of those from 4 on, and one, timed on the real step (thread_candidates). On a
  busy 2-core machine two threads contend and one is often faster (measured: 1.9 s against
  4.9 s per step).
  ``OMP_NUM_THREADS`` in the environment, or an integer ``train.threads``, fixes it.

During the run both are timed again when a log window runs slower than timed, and every
RETIME_EVERY_S seconds: the thread count, and (where auto chose between them) fp32 against
native bf16, so a run that started while the machine was busy does not keep the busy machine's
choice. The choice, its reason and the timings are printed, saved in every checkpoint, and
reused when the run is resumed on a machine where they still hold, so a resumed run computes in
the same precision as the uninterrupted one did at that step.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch

from difflab.hardware import native_bf16

# A candidate whose first step alone is this many times slower than the best so far cannot
# win: it is not timed further (keeps the start-up to a few steps).
HOPELESS = 2.0
STEPS_PER_CANDIDATE = 2
# Load on a machine changes during a run: the thread counts are timed again when a log window
# runs this much slower than the chosen setting's timing, and every RETIME_EVERY_S seconds of
# training in any case (about 1 % of the time: two or three timed steps per candidate).
RETIME_SLOWER = 1.5
RETIME_EVERY_S = 300.0
# Where "auto" chose between native bf16 and fp32, that choice is timed again too (a run started
# while the machine was busy can time fp32 faster and keep it when the machine quietens; on an
# idle Zen 4 bf16 steps 1.7x faster). Switching mid-run changes the arithmetic, so the other
# precision must time this many times faster, not merely faster.
PRECISION_SWITCH = 1.15
THREADS_SWITCH = 1.05  # another thread count must time this many times faster mid-run
RETIMED = "; precision re-timed at step "  # joins a switch's reason to the start-up one

@dataclass
class StepSettings:
    precision: str
    threads: int | None  # intra-op threads; None on GPUs, where torch's default stands
    why: str  # one line for people: what was chosen and why
    # seconds per forward/backward step, by candidate ("fp32 x2 threads"; time_candidate)
    timings: dict[str, float] = field(default_factory=dict)
    seconds_per_step: float | None = None  # the chosen candidate's, when it was timed

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StepSettings:
        return cls(
            precision=str(d["precision"]),
            threads=None if d.get("threads") is None else int(d["threads"]),
            why=str(d.get("why", "")),
            timings={str(k): float(v) for k, v in (d.get("timings") or {}).items()},
            seconds_per_step=d.get("seconds_per_step"),
        )


def label(precision: str, threads: int | None) -> str:
    if threads is None:
        return precision
    return f"{precision} x{threads} thread{'s' if threads > 1 else ''}"


def time_candidate(step: Callable[[], None], best_so_far: float | None) -> float:
    """Seconds per step: the faster of STEPS_PER_CANDIDATE steps. The first of them pays for
    what a precision or thread count sets up on first use (oneDNN primitives, thread pools),
    the minimum is the least disturbed by other work; the caller runs one untimed step before
    the first candidate, for what any first step pays."""
    times: list[float] = []
    for _ in range(STEPS_PER_CANDIDATE):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        if best_so_far is not None and times[0] > HOPELESS * best_so_far:
            break
    return min(times)


def thread_candidates(cores: int, local_world_size: int, physical: int | None = None) -> list[int]:
    """The thread counts to time, largest first: every logical CPU of this process's share,
    its physical cores (where hyperthreads make them fewer), half of those (from 4 on: a
    laptop busy with other work often runs fastest on part of its cores), and one. They are
    timed fewest first: a count that contends with other work is then cut after one step
    (HOPELESS) instead of setting a slow first bar for the others."""
    ranks = max(1, local_world_size)
    share = max(1, cores // ranks)
    phys = max(1, min(share, (physical or cores) // ranks))
    options = {share, phys, phys // 2 if phys >= 4 else 1, 1}
    return sorted(options, reverse=True)


# torch 2.13's inductor on CPU, under bf16 autocast, gives most of a UNet's weights exactly zero
# gradients while the forward is right: 54 of the default network's 88 parameter tensors
# (bench/cpu_layouts.py checks every variant against eager). A compiled CPU run therefore
# trains in fp32, and an explicit low precision with compile is refused rather than left to
# train part of the network in silence.
COMPILED_CPU_AUTOCAST = (
    'train.compile = true with train.precision = "{precision}" on a CPU: torch.compile\'s '
    "backward under CPU autocast gives most of the network's weights zero gradients (the "
    'forward is right, so the loss looks fine); use train.precision = "fp32" or "auto" (which '
    "picks fp32 when compiling on a CPU), or train.compile = false"
)


def _shown(seconds: float | None) -> str:
    return "not timed" if seconds is None else f"{seconds:.2f} s"


def _too_many(threads: int, cores: int) -> str:
    """What to add when a fixed thread count exceeds the cores this process may use: threads
    beyond them only wait for each other (64 threads on 2 cores ran a step 250 times slower)."""
    if threads <= cores:
        return ""
    return (f" (more than the {cores} CPUs this process may use, so each step waits on "
            'threads sharing them: far slower; train.threads = "auto" times what is fastest)')


def choose(
    precision: str,
    threads: int | str,
    device: torch.device,
    time_step: Callable[[str, int | None, float | None], float],
    *,
    cores: int,
    local_world_size: int = 1,
    env_threads: str | None = None,
    compiled: bool = False,
    physical: int | None = None,
    allowance: float = math.inf,
) -> StepSettings:
    """Settle `precision` and `threads` ("auto" or fixed) for `device` (`compiled`: the step
    runs through torch.compile, train.compile). Once timing has taken `allowance` seconds (a
    share of a short run's budget), the candidates not yet timed are left out.

    `time_step(precision, threads, best_so_far)` returns the seconds of one real training
    step in that setting (see time_candidate; it is only called where timing decides); the
    rest is detection.
    """
    timings: dict[str, float] = {}
    reasons: list[str] = []
    on_cpu = device.type == "cpu"
    spent = 0.0
    skipped: list[str] = []

    def timed(p: str, n: int | None, best: float | None = None, *, first: bool = True) -> float:
        """The seconds of a step of (p, n), timed on first ask; inf once the allowance is
        spent (`first`: against the fastest so far, else against `best`)."""
        nonlocal spent
        key = label(p, n)
        if key not in timings:
            if timings and spent > allowance:
                skipped.append(key)
                return math.inf
            t0 = time.perf_counter()
            bar = min(timings.values(), default=None) if first else best
            if not any(label(p, m) in timings for m in thread_options):
                # a precision's first step sets up its kernels (bf16's oneDNN primitives: 2x
                # a steady step), so it is never cut after that step alone
                bar = None
            timings[key] = time_step(p, n, bar)
            spent += time.perf_counter() - t0
        return timings[key]

    # threads: fixed by the config or the environment, or a short list of candidates
    if not on_cpu:
        thread_options: list[int | None] = [None]
    elif threads != "auto":
        thread_options = [int(threads)]
        reasons.append(f"threads {threads}: train.threads{_too_many(int(threads), cores)}")
    elif env_threads:
        thread_options = [int(env_threads)] if env_threads.isdigit() else [None]
        many = _too_many(int(env_threads), cores) if env_threads.isdigit() else ""
        reasons.append(f"threads {env_threads}: OMP_NUM_THREADS{many}")
    else:
        thread_options = list(thread_candidates(cores, local_world_size, physical))

    native, native_why = native_bf16(device)
    if on_cpu and compiled and precision in ("bf16", "fp16"):
        raise ValueError(COMPILED_CPU_AUTOCAST.format(precision=precision))
    if precision != "auto":
        chosen_p = precision
        note = f"precision {precision}: train.precision"
        if precision == "bf16" and not native:
            note += f" (WARNING: {native_why}; 'auto' would use fp32)"
        reasons.insert(0, note)
    elif not native or device.type == "mps":
        chosen_p = "fp32"
        reasons.insert(0, f"precision fp32: {native_why}")
    elif on_cpu and compiled:
        chosen_p = "fp32"
        reasons.insert(0, "precision fp32: train.compile on a CPU, where inductor's backward "
                          "under bf16 autocast is wrong (COMPILED_CPU_AUTOCAST)")
    elif device.type == "cuda":
        chosen_p = "bf16"
        reasons.insert(0, f"precision bf16: {native_why}")
    else:  # a CPU with native bf16: both precisions at every thread count, on the real step
        # Each thread count is timed in both precisions: on a busy machine every count but
        # the fastest times mostly contention, and would decide the precision by noise.
        for n in sorted(thread_options):  # fewest first: see thread_candidates
            timed("fp32", n)
            timed("bf16", n)
        chosen_p, at = min(((p, n) for p in ("fp32", "bf16") for n in thread_options),
                           key=lambda pn: timings.get(label(*pn), math.inf))
        t_fp32, t_bf16 = (_shown(timings.get(label(p, at))) for p in ("fp32", "bf16"))
        if label("bf16", at) not in timings:  # the allowance ran out before bf16's turn
            why_p = (f"precision fp32: bf16 was not timed in a budget this short, although "
                     f"{native_why}")
        elif chosen_p == "bf16":
            why_p = (f"precision bf16: {native_why}, and it timed faster "
                     f"(bf16 {t_bf16}, fp32 {t_fp32} per step)")
        else:
            why_p = (f"precision fp32: it timed faster than bf16 here "
                     f"(fp32 {t_fp32}, bf16 {t_bf16} per step) although {native_why}")
        reasons.insert(0, why_p)

    chosen_t = thread_options[0]
    if len(thread_options) > 1:
        best: float | None = None
        for n in sorted(thread_options):
            seconds = timed(chosen_p, n, best, first=False)
            if best is None or seconds < best:
                best, chosen_t = seconds, n
        shown = ", ".join(f"{n}: {_shown(timings.get(label(chosen_p, n)))}"
                          for n in thread_options)
        reasons.append(f"threads {chosen_t}: timed faster per step ({shown})")
    if skipped:
        reasons.append(f"{', '.join(dict.fromkeys(skipped))} not timed: timing had taken "
                       f"{spent:.1f} s of a short budget")
    key = label(chosen_p, chosen_t)
    if on_cpu and key not in timings:  # the expected speed, for the health monitor
        timings[key] = time_step(chosen_p, chosen_t, None)
    return StepSettings(
        precision=chosen_p,
        threads=chosen_t,
        why="; ".join(reasons),
        timings=timings,
        seconds_per_step=timings.get(key),
    )


def retime_threads(
    settings: StepSettings,
    time_step: Callable[[str, int | None, float | None], float],
    options: list[int],
) -> StepSettings:
    """Time `options` thread counts again in the chosen precision and keep the fastest: the
    same precision (so the run computes as before), the thread count the machine favours
    now. The current count stays unless another is THREADS_SWITCH times faster: a tie read
    during a moment's load would otherwise move an idle run to fewer threads until the next
    timing (seen: 0.09 s both, where two threads step in 0.05 s and one in 0.08 s idle)."""
    fresh: dict[str, float] = {}
    best: float | None = None
    chosen = settings.threads
    for n in sorted(options):
        key = label(settings.precision, n)
        fresh[key] = time_step(settings.precision, n, best)
        if best is None or fresh[key] < best:
            best, chosen = fresh[key], n
    current = fresh.get(label(settings.precision, settings.threads))
    if current is not None and best is not None and current <= THREADS_SWITCH * best:
        chosen, best = settings.threads, current
    return replace(
        settings,
        threads=chosen,
        timings={**settings.timings, **fresh},
        seconds_per_step=best,
    )


def retime_precision(
    settings: StepSettings,
    time_step: Callable[[str, int | None, float | None], float],
    step: int,
) -> StepSettings:
    """Time the other of fp32 and bf16 at the chosen thread count and switch to it where it is
    PRECISION_SWITCH times faster than the chosen precision's latest timing (called only where
    "auto" chose between them on a CPU with native bf16). The reason says from which step."""
    other = "fp32" if settings.precision == "bf16" else "bf16"
    now = settings.seconds_per_step
    key = label(other, settings.threads)
    t_other = time_step(other, settings.threads, now)
    timings = {**settings.timings, key: t_other}
    if now is None or t_other * PRECISION_SWITCH > now:
        return replace(settings, timings=timings)
    base = settings.why.split(RETIMED)[0]
    why = (f"{base}{RETIMED}{step}: {other}, timed faster on the machine as it was then "
           f"({other} {t_other:.2f} s, {settings.precision} {now:.2f} s per step)")
    return replace(settings, precision=other, why=why, timings=timings,
                   seconds_per_step=t_other)


def env_thread_setting() -> str | None:
    return os.environ.get("OMP_NUM_THREADS") or None


def still_valid(recorded: StepSettings, precision: str, threads: int | str,
                device: torch.device, cores: int, compiled: bool = False) -> str | None:
    """Why recorded settings cannot be reused here (None: they can)."""
    if compiled and device.type == "cpu" and recorded.precision != "fp32":
        return "train.compile is on, and a compiled CPU step trains in fp32"
    if precision not in ("auto", recorded.precision):
        return f"train.precision is now {precision}"
    if device.type == "cpu" and recorded.threads is None:
        return "the run moved from a GPU to the CPU"
    if device.type != "cpu" and recorded.threads is not None:
        return "the run moved from the CPU to a GPU"
    if recorded.precision == "bf16" and precision == "auto" and not native_bf16(device)[0]:
        return "bf16 is not native here"
    if threads != "auto" and recorded.threads != int(threads):
        return f"train.threads is now {threads}"
    if recorded.threads is not None and recorded.threads > cores:
        return f"this machine has {cores} core{'' if cores == 1 else 's'}"
    return None
