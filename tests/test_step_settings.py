"""Machine-aware defaults: device order, native-bf16 detection, and the precision / threads
choice, both as decision logic over given timings and timed on a real trainer."""

import json
import math
from pathlib import Path

import pytest
import torch
from tiny_run import tiny_config

from difflab import hardware
from difflab.config import ConfigError, load_config
from difflab.training import step_settings
from difflab.training.step_settings import StepSettings, choose, label, still_valid
from difflab.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


# ---------------------------------------------------------------------------- devices
@pytest.mark.parametrize(
    "cuda, mps, expected",
    [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_device_order_is_cuda_then_mps_then_cpu(cuda, mps, expected):
    choice = hardware.pick_device(None, cuda_available=cuda, mps_available=mps)
    assert choice.device.type == expected
    assert choice.why


@pytest.mark.parametrize(
    "requested, match",
    [("cuda", "no CUDA GPU"), ("cuda:1", "no CUDA GPU"), ("mps", "no Apple MPS"),
     ("tpu", "not a device"), ("meta", "cpu, cuda or mps")],
)
def test_a_requested_device_that_is_not_there_is_one_clear_error(requested, match):
    with pytest.raises(ValueError, match=match):
        hardware.pick_device(requested, cuda_available=False, mps_available=False)


def test_requested_cpu_is_taken_even_with_a_gpu():
    assert hardware.pick_device("cpu", cuda_available=True).device == CPU


def test_native_bf16_switch_forces_either_answer(monkeypatch):
    monkeypatch.setenv(hardware.NATIVE_BF16_ENV, "0")
    assert hardware.cpu_native_bf16()[0] is False
    monkeypatch.setenv(hardware.NATIVE_BF16_ENV, "1")
    assert hardware.cpu_native_bf16()[0] is True
    monkeypatch.setenv(hardware.NATIVE_BF16_ENV, "yes")
    with pytest.raises(ValueError, match="0 or 1"):
        hardware.cpu_native_bf16()
    monkeypatch.delenv(hardware.NATIVE_BF16_ENV)
    native, why = hardware.cpu_native_bf16()
    assert native == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and why


def test_cpu_description_names_the_cpu_and_cores():
    text = hardware.describe_cpu()
    n = hardware.cpu_cores()
    assert hardware.cpu_name() in text and f"{n} core{'' if n == 1 else 's'}," in text


# ---------------------------------------------------------------------------- the choice
class Timings:
    """Seconds per step for each (precision, threads), and a record of what was timed."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def __call__(self, precision, threads, best):
        self.calls.append(label(precision, threads))
        return self.table[(precision, threads)]


def test_native_cpu_times_both_precisions_and_keeps_the_faster(monkeypatch):
    monkeypatch.setenv(hardware.NATIVE_BF16_ENV, "1")
    for fp32, bf16, expected in ((1.0, 0.4, "bf16"), (0.5, 0.9, "fp32")):
        timer = Timings({("fp32", 2): fp32, ("bf16", 2): bf16, ("fp32", 1): 5.0,
                         ("bf16", 1): 5.0})
        s = choose("auto", "auto", CPU, timer, cores=2)
        assert s.precision == expected and s.threads == 2
        assert sorted(timer.calls) == sorted(label(p, n) for p in ("fp32", "bf16") for n in (2, 1))
        assert f"precision {expected}" in s.why and f"{min(fp32, bf16):.2f} s" in s.why
        assert s.seconds_per_step == min(fp32, bf16)


def test_on_a_busy_machine_the_precision_is_chosen_at_the_fastest_thread_count(monkeypatch):
    """Two contended threads time mostly noise (measured beside two busy processes: bf16 1.65 s
    against fp32 1.97 s on two threads, 0.24 s on one), so the precision is decided where the
    run will actually train."""
    monkeypatch.setenv(hardware.NATIVE_BF16_ENV, "1")
    timer = Timings({("fp32", 2): 1.97, ("bf16", 2): 1.65, ("fp32", 1): 0.2, ("bf16", 1): 0.3})
    s = choose("auto", "auto", CPU, timer, cores=2)
    assert (s.precision, s.threads, s.seconds_per_step) == ("fp32", 1, 0.2)
    assert "fp32 0.20 s, bf16 0.30 s per step" in s.why and "threads 1" in s.why


def test_without_native_bf16_it_is_never_timed_and_fp32_is_chosen(monkeypatch):
    monkeypatch.setenv(hardware.NATIVE_BF16_ENV, "0")
    timer = Timings({("fp32", 2): 4.9, ("fp32", 1): 1.9})
    s = choose("auto", "auto", CPU, timer, cores=2)
    assert (s.precision, s.threads) == ("fp32", 1)  # a busy machine: one thread is faster
    assert not any("bf16" in c for c in timer.calls)
    assert "no native bf16" in s.why and "threads 1" in s.why
    assert s.seconds_per_step == 1.9


def test_explicit_bf16_without_native_support_is_kept_with_a_warning(monkeypatch):
    monkeypatch.setenv(hardware.NATIVE_BF16_ENV, "0")
    s = choose("bf16", 1, CPU, Timings({("bf16", 1): 30.0}), cores=2)
    assert s.precision == "bf16" and s.threads == 1
    assert "WARNING" in s.why and "fp32" in s.why


def test_a_compiled_cpu_step_trains_in_fp32_and_refuses_autocast(monkeypatch):
    """torch.compile's CPU backward under bf16 autocast zeroes most weights' gradients
    (bench/cpu_layouts.py): "auto" picks fp32 without timing bf16, an explicit bf16 or fp16 is
    refused in one line, and a resumed bf16 run that now compiles is chosen anew."""
    monkeypatch.setenv(hardware.NATIVE_BF16_ENV, "1")
    timer = Timings({("fp32", 1): 1.0})
    s = choose("auto", 1, CPU, timer, cores=2, compiled=True)
    assert s.precision == "fp32" and "train.compile on a CPU" in s.why
    assert timer.calls == ["fp32 x1 thread"]
    for low in ("bf16", "fp16"):
        with pytest.raises(ValueError, match=f'train.precision = "{low}" on a CPU') as e:
            choose(low, 1, CPU, timer, cores=2, compiled=True)
        assert "\n" not in str(e.value) and "train.compile = false" in str(e.value)
    bf16 = choose("bf16", 1, CPU, Timings({("bf16", 1): 1.0}), cores=2)
    assert still_valid(bf16, "auto", 1, CPU, 2) is None
    assert "train.compile is on" in still_valid(bf16, "auto", 1, CPU, 2, compiled=True)


def test_threads_fixed_by_config_or_environment_are_not_timed_against_others(monkeypatch):
    monkeypatch.setenv(hardware.NATIVE_BF16_ENV, "0")
    timer = Timings({("fp32", 3): 1.0, ("fp32", 1): 1.0})
    assert choose("auto", 3, CPU, timer, cores=8).threads == 3
    assert choose("auto", "auto", CPU, timer, cores=8, env_threads="1").threads == 1
    assert timer.calls == ["fp32 x3 threads", "fp32 x1 thread"]  # only the expected speed
    # two processes on two cores: one thread each, nothing to choose between
    timer = Timings({("fp32", 1): 1.0})
    assert choose("auto", "auto", CPU, timer, cores=2, local_world_size=2).threads == 1
    # more threads than cores is kept as asked, and said to be slow, in the line of why
    timer = Timings({("fp32", 64): 1.0, ("fp32", 2): 1.0, ("fp32", 3): 1.0})
    many = choose("auto", 64, CPU, timer, cores=2)
    assert many.threads == 64 and "more than the 2 CPUs this process may use" in many.why
    assert "more than" in choose("auto", "auto", CPU, timer, cores=2, env_threads="3").why
    assert "more than" not in choose("auto", 2, CPU, timer, cores=2).why


def test_mps_runs_fp32_and_leaves_threads_alone():
    s = choose("auto", "auto", torch.device("mps"), Timings({}), cores=8)
    assert (s.precision, s.threads, s.timings) == ("fp32", None, {})


def test_recorded_settings_are_reused_only_where_they_still_hold(monkeypatch):
    bf16 = StepSettings("bf16", 2, "timed", {"bf16 x2 threads": 0.5}, 0.5)
    monkeypatch.setenv(hardware.NATIVE_BF16_ENV, "1")
    assert still_valid(bf16, "auto", "auto", CPU, cores=2) is None
    assert still_valid(bf16, "auto", "auto", CPU, cores=1) == "this machine has 1 core"
    assert "fp32" in still_valid(bf16, "fp32", "auto", CPU, cores=2)
    assert "GPU" in still_valid(bf16, "auto", "auto", torch.device("mps"), cores=2)
    monkeypatch.setenv(hardware.NATIVE_BF16_ENV, "0")
    assert "not native" in still_valid(bf16, "auto", "auto", CPU, cores=2)
    assert StepSettings.from_dict(json.loads(json.dumps(bf16.to_dict()))) == bf16


@pytest.mark.parametrize("value", ["0", "-2", "'many'", "1.5"])
def test_bad_thread_settings_name_the_key(value):
    with pytest.raises(ConfigError, match="train.threads"):
        load_config(None, [f"train.threads={value}"])


def test_auto_is_the_default_everywhere():
    cfg = load_config(ROOT / "configs" / "fashion_mnist.toml")
    assert (cfg.train.precision, cfg.train.threads) == ("auto", "auto")
    assert load_config(None).train.precision == "auto"


# ---------------------------------------------------------------------------- a real trainer
def trainer(out, *extra, quiet=True):
    """A tiny run with precision "auto" unless `extra` says otherwise."""
    return Trainer(tiny_config("train.precision=auto", *extra), out, device="cpu", quiet=quiet)


def test_timing_the_real_step_changes_nothing_of_the_run(tmp_path, monkeypatch):
    """Auto times both precisions and both thread counts on the real network, keeps the
    fastest, and the run then trains exactly as one told those settings outright."""
    monkeypatch.setenv(hardware.NATIVE_BF16_ENV, "1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(hardware, "cpu_cores", lambda: 2)
    # Re-timing mid-run reads the clock and may switch threads (tested on its own below): off
    # here, so that this test compares the start-up choice alone.
    monkeypatch.setattr(step_settings, "RETIME_SLOWER", math.inf)
    auto = trainer(tmp_path / "auto", "train.max_steps=4", "train.threads=auto")
    auto.train()
    s = auto.step_settings
    assert {"fp32 x2 threads", "bf16 x2 threads"} <= set(s.timings)
    assert s.seconds_per_step == min(s.timings[label(p, s.threads)] for p in ("fp32", "bf16")
                                     if label(p, s.threads) in s.timings)
    fixed = trainer(tmp_path / "fixed", "train.max_steps=4", f"train.precision={s.precision}",
                    f"train.threads={s.threads}")
    fixed.train()
    for a, b in zip(auto.net.parameters(), fixed.net.parameters(), strict=True):
        assert torch.equal(a, b)
    record = json.loads((tmp_path / "auto" / "last" / "config.json").read_text())["trained_on"]
    assert record["precision"] == s.precision and record["threads"] == s.threads
    assert record["why"] == s.why and hardware.cpu_name() in record["cpu"]


def test_resume_keeps_the_recorded_precision_or_says_why_not(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(hardware.NATIVE_BF16_ENV, "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # A slow window would time the precisions again and may switch (tested on its own below):
    # off here, so that what is kept at resume is all this test reads.
    monkeypatch.setattr(step_settings, "RETIME_SLOWER", math.inf)
    first = trainer(tmp_path, "train.max_steps=2", "train.precision=bf16")
    first.train()
    again = trainer(tmp_path, "train.max_steps=3", quiet=False)
    again.resume()
    again.train()
    assert again.step_settings.precision == "bf16"
    assert "kept from the checkpoint" in capsys.readouterr().out
    twice = trainer(tmp_path, "train.max_steps=4", quiet=False)  # resumed again: said once
    twice.resume()
    twice.train()
    assert twice.step_settings.why.count("kept from the checkpoint") == 1
    assert capsys.readouterr().out.count("kept from the checkpoint") == 1
    monkeypatch.setenv(hardware.NATIVE_BF16_ENV, "0")  # the same run moved to an AVX2 laptop
    moved = trainer(tmp_path, "train.max_steps=5", quiet=False)
    moved.resume()
    moved.train()
    assert moved.step_settings.precision == "fp32"
    assert "not bit-identical" in capsys.readouterr().out


def test_thread_counts_are_timed_again_when_the_machine_gets_busy(monkeypatch):
    """Re-timing keeps the precision (the run computes as before) and takes the thread count
    that is fastest now."""
    quiet = StepSettings("bf16", 2, "timed", {"bf16 x2 threads": 0.5, "bf16 x1 thread": 0.9}, 0.5)
    busy = Timings({("bf16", 2): 3.0, ("bf16", 1): 1.1})
    from difflab.training.step_settings import retime_threads

    s = retime_threads(quiet, busy, [2, 1])
    assert (s.precision, s.threads, s.seconds_per_step) == ("bf16", 1, 1.1)
    assert s.timings["bf16 x2 threads"] == 3.0 and busy.calls == ["bf16 x1 thread",
                                                                 "bf16 x2 threads"]
    # a tie, read during a moment's load, keeps the current count (THREADS_SWITCH)
    tie = retime_threads(quiet, Timings({("bf16", 2): 0.091, ("bf16", 1): 0.089}), [2, 1])
    assert (tie.threads, tie.seconds_per_step) == (2, 0.091)
    assert tie.timings["bf16 x1 thread"] == 0.089


def test_a_run_that_slows_down_times_its_threads_again(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(hardware, "cpu_cores", lambda: 2)
    tr = trainer(tmp_path, "train.max_steps=2", "train.threads=auto")
    tr.train()
    first = tr.step_settings
    assert tr.tuner.options == [2, 1]
    tr.seconds_per_step = 10 * first.seconds_per_step  # as if the machine got busy
    tr.tuner.maybe_retime()
    again = tr.step_settings
    assert again.precision == first.precision and again.threads in (1, 2)
    assert again.seconds_per_step == again.timings[label(again.precision, again.threads)]
    assert torch.get_num_threads() == again.threads
    tr.seconds_per_step = again.seconds_per_step  # the next window runs as timed
    tr.tuner.maybe_retime()  # not slow against the new timing, not due: nothing is timed
    assert tr.step_settings is again


def test_precision_is_switched_mid_run_only_for_a_clear_win():
    """Re-timing fp32 against native bf16: a switch changes the arithmetic, so the other
    precision must be PRECISION_SWITCH times faster; the reason says from which step, once."""
    from difflab.training.step_settings import PRECISION_SWITCH, RETIMED, retime_precision

    busy_start = StepSettings("fp32", 2, "precision fp32: it timed faster", {}, 1.0)
    barely = Timings({("bf16", 2): 1.0 / PRECISION_SWITCH + 0.01})
    kept = retime_precision(busy_start, barely, step=300)
    assert (kept.precision, kept.why, kept.seconds_per_step) == ("fp32", busy_start.why, 1.0)
    assert kept.timings["bf16 x2 threads"] == barely.table[("bf16", 2)]
    quiet = Timings({("bf16", 2): 0.5})
    switched = retime_precision(busy_start, quiet, step=300)
    assert (switched.precision, switched.threads, switched.seconds_per_step) == ("bf16", 2, 0.5)
    assert switched.why == (f"precision fp32: it timed faster{RETIMED}300: bf16, timed faster on "
                            "the machine as it was then (bf16 0.50 s, fp32 1.00 s per step)")
    back = retime_precision(switched, Timings({("fp32", 2): 0.2}), step=900)
    assert back.precision == "fp32" and back.why.count(RETIMED) == 1 and f"{RETIMED}900" in back.why


def test_a_busy_start_on_native_bf16_times_the_precisions_again(tmp_path, monkeypatch, capsys):
    """Where auto chose between fp32 and native bf16, a slow window times the other precision
    too, switches when it wins clearly, says so, and the checkpoint records it; a precision the
    config fixed is never timed against the other."""
    from difflab.training.step_settings import RETIMED

    monkeypatch.setenv(hardware.NATIVE_BF16_ENV, "1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    tr = trainer(tmp_path / "auto", "train.max_steps=2", "train.threads=1", quiet=False)
    slower = step_settings.RETIME_SLOWER
    monkeypatch.setattr(step_settings, "RETIME_SLOWER", math.inf)  # no timing but ours
    tr.train()
    monkeypatch.setattr(step_settings, "RETIME_SLOWER", slower)
    assert tr.tuner.retime_precision and tr.tuner.options == []
    first = tr.step_settings
    other = "fp32" if first.precision == "bf16" else "bf16"
    # the machine as it is now: the chosen precision slow, the other clearly faster
    table = {(first.precision, 1): 1.0, (other, 1): 0.1}
    tr.tuner.time_step = Timings(table)
    tr.seconds_per_step = 10 * first.seconds_per_step  # a slow window
    tr.tuner.maybe_retime()
    assert (tr.precision, tr.step_settings.seconds_per_step) == (other, 0.1)
    assert f"step 2: now {other}, timed faster" in capsys.readouterr().out
    tr.train_step(0.5)  # trains on in the new precision, and its checkpoint says so
    tr._checkpoint()
    record = json.loads((tmp_path / "auto" / "last" / "config.json").read_text())["trained_on"]
    assert record["precision"] == other and f"{RETIMED}2: {other}" in record["why"]
    fixed = trainer(tmp_path / "fixed", "train.max_steps=2", "train.threads=1",
                    "train.precision=fp32")
    fixed.train()
    assert not fixed.tuner.retime_precision
    fixed.seconds_per_step = 10 * fixed.step_settings.seconds_per_step
    fixed.tuner.maybe_retime()
    assert fixed.precision == "fp32"
    assert not any(k.startswith("bf16") for k in fixed.step_settings.timings)


@pytest.mark.parametrize("cores, physical, ranks, expected", [
    (2, 2, 1, [2, 1]),  # this project's 2-vCPU machines
    (8, 4, 1, [8, 4, 2, 1]),  # a laptop: 4 cores, two hyperthreads each
    (16, 16, 1, [16, 8, 1]),
    (8, 4, 2, [4, 2, 1]),  # two ranks share the machine
    (1, 1, 1, [1]),
])
def test_thread_candidates_include_the_physical_cores_and_half_of_them(cores, physical, ranks,
                                                                       expected):
    assert step_settings.thread_candidates(cores, ranks, physical) == expected


def test_physical_cores_count_hyperthreads_of_one_core_once(tmp_path):
    """Read from Linux's topology files: CPUs 0 and 1 are one core's two threads."""
    import os

    cpus = sorted(os.sched_getaffinity(0))
    for i, cpu in enumerate(cpus):
        topo = tmp_path / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text("0\n")
        (topo / "core_id").write_text(f"{i // 2}\n")
    assert hardware.physical_cores(tmp_path) == (len(cpus) + 1) // 2
    assert 1 <= hardware.physical_cores() <= hardware.cpu_cores()  # this machine's own
    assert hardware.physical_cores(tmp_path / "absent") == hardware.cpu_cores()


def test_timing_stops_at_its_allowance_and_says_what_it_left_out(monkeypatch):
    """Slow steps against a short budget: once timing has taken its allowance, the
    candidates not yet timed are left out (never chosen), and the line of why says so."""
    monkeypatch.setenv(hardware.NATIVE_BF16_ENV, "1")
    clock = [0.0]
    monkeypatch.setattr("difflab.training.step_settings.time.perf_counter", lambda: clock[0])

    def slow(p, n, best):  # each timing takes 20 s of the (mocked) clock
        clock[0] += 20.0
        return {"fp32": 2.0, "bf16": 1.0}[p] * (1 if n == 2 else 1.5)

    s = choose("auto", "auto", CPU, slow, cores=2, allowance=30.0)
    # fewest threads first: fp32 x1 (20 s), bf16 x1 (40 s > 30 s), then nothing more
    assert s.timings == {"fp32 x1 thread": 3.0, "bf16 x1 thread": 1.5}
    assert (s.precision, s.threads) == ("bf16", 1)
    assert "fp32 x2 threads, bf16 x2 threads not timed: timing had taken 40.0 s" in s.why
    everything = choose("auto", "auto", CPU, slow, cores=2)  # no budget: all four timed
    assert (everything.precision, everything.threads) == ("bf16", 2)
    assert "not timed" not in everything.why


def test_a_precisions_first_timing_is_never_cut_and_an_untimed_bf16_is_said(monkeypatch):
    """bf16's first step sets up its kernels (2x a steady step): its first timing gets no bar
    to be cut at, where later candidates are measured against the fastest so far. When the
    allowance runs out before bf16 is timed at all, the line says that, not that fp32 timed
    faster."""
    monkeypatch.setenv(hardware.NATIVE_BF16_ENV, "1")
    bars = {}

    def timer(p, n, best):
        bars[label(p, n)] = best
        return {"fp32": 0.04, "bf16": 0.03}[p]

    choose("auto", "auto", CPU, timer, cores=2)
    assert bars["fp32 x1 thread"] is None and bars["bf16 x1 thread"] is None
    assert bars["fp32 x2 threads"] == 0.03  # a later candidate: against the best so far
    clock = [0.0]
    monkeypatch.setattr("difflab.training.step_settings.time.perf_counter", lambda: clock[0])

    def slow(p, n, best):
        clock[0] += 20.0
        return 0.09

    s = choose("auto", "auto", CPU, slow, cores=1, allowance=10.0)
    assert s.precision == "fp32" and "bf16 was not timed in a budget this short" in s.why
    assert "timed faster" not in s.why
