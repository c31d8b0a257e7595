"""Allowed ranges of numbers, and the argparse value types built on them.

One `Range` describes what a number may be, for a command-line flag (`int_in`, `float_in`
here) and for a config key (difflab.config.RANGES) alike, so that both say it the same way:
"must be >= 0 and <= 50, got inf". Every float must also be finite: NaN and infinity pass
most comparisons silently (NaN > 0 is False, so `if x <= 0` lets it through).

A flag naming a sampler or a device is checked against what this difflab has and this machine
offers (the samplers' registry, difflab.hardware) as the command line is read, not after
minutes of loading data.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass

from difflab.hardware import pick_device
from difflab.samplers import SAMPLERS

# Sizes that keep one command from asking for absurd amounts of memory or time; far above
# any real use of difflab's 28x28 models (a 10,000-image FID run, a batch of 1,024 on a GPU).
MAX_SAMPLES = 1_000_000  # images one command draws or scores (an .npz of 28x28 grey: 0.8 GB)
MAX_GRID = 10_000  # images in one PNG grid (100 x 100 tiles)
MAX_BATCH = 8_192  # images per forward pass
MAX_STEPS = 100_000  # sampling steps / diffusion timesteps
MAX_SEED = 2**32 - 1  # seeds are combined with sample indices; this keeps them in int64
MAX_SCALE = 16  # PNG upscaling factor
# Classifier-free guidance scales beyond this draw saturated noise, not a stronger condition
# (the shipped models are benchmarked at 2-5; bench/guidance_sweep.py sweeps 0-5).
MAX_GUIDANCE = 50.0
# Relation and binding guidance (difflab.pipeline.attention_guidance) scales: at 300 the
# shipped shapes-text draws three objects for two as often as not; past 1000 only noise.
MAX_ATTENTION_GUIDANCE = 1000.0
# The largest noise level sigma_t / alpha_t a guidance interval may name: above every process'
# (the discrete cosine schedule's last step is about 2e4), so "from low to the top" is
# (low, 1e9).
MAX_NOISE_LEVEL = 1e9


@dataclass(frozen=True)
class Range:
    """An interval of allowed numbers; None on a side: unbounded there. `low_open` /
    `high_open` exclude the bound itself (0 < lr, ema_decay < 1)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (
            value >= self.high if self.high_open else value > self.high
        ):
            return False
        return True

    def __str__(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {_number(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {_number(self.high)}")
        return " and ".join(parts) or "any finite number"


def _number(x: float) -> str:
    """A bound as a person reads it: 4294967295, not 4.29497e+09; 0.5, not 0.500000."""
    return str(x) if isinstance(x, int) else f"{x:g}"


def _not_utf8(text: str) -> str | None:
    """What is wrong with `text` as text, or None: a command line's bytes that are not UTF-8
    arrive as unpaired surrogates (as does a lone "\\ud800" in JSON), which no tokenizer
    reads and no file of ours can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return (f"{ascii(text)[:80]} is not valid text: it holds bytes that are not UTF-8 "
                "(an unpaired surrogate); give UTF-8 text")
    return None


def check_text(text: object, what: str) -> str:
    """`text` if it is a string that UTF-8 can write, else a ValueError naming `what`."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be text, got {type(text).__name__}")
    if (why := _not_utf8(text)) is not None:
        raise ValueError(f"{what} {why}")
    return text


def record_text(text: str) -> str:
    """An argparse type: a line of text kept in a file for people to read (a checkpoint's
    provenance): UTF-8, not empty, no control characters."""
    if (why := _not_utf8(text)) is not None:
        raise argparse.ArgumentTypeError(why)
    if not text.strip() or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text):
        raise argparse.ArgumentTypeError(
            f"{ascii(text)[:80]} must be one line of printable text, not empty")
    return text


def prompt_text(text: str) -> str:
    """An argparse type: a prompt with words in it (an empty one is no way to ask for none)."""
    if (why := _not_utf8(text)) is not None:
        raise argparse.ArgumentTypeError(why)
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"is empty ({text!r}); give some words, or leave the flag out to draw without text"
        )
    return text


def int_in(low: int | None = 1, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high]."""
    allowed = Range(low, high)

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value not in allowed:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {value}")
        return value

    parse.__name__ = "whole number"  # what argparse calls the type in its own messages
    return parse


def float_in(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[str], float]:
    """An argparse type: a finite number in the range (NaN and inf are always refused)."""
    allowed = Range(low, high, low_open, high_open)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number {allowed}, got {text!r}")
        if value not in allowed:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {value:g}")
        return value

    parse.__name__ = "number"
    return parse


def sampler_name(text: str) -> str:
    """An argparse type: the name of a registered sampler."""
    if text not in SAMPLERS:
        raise argparse.ArgumentTypeError(
            f"unknown sampler {text!r}; allowed: {', '.join(sorted(SAMPLERS))}"
        )
    return text


def device_name(text: str) -> str:
    """An argparse type: a device this machine has (cpu, cuda, cuda:N, mps), checked when
    the command line is read rather than after minutes of loading data."""
    try:
        pick_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix(f"--device {text}: ")) from None
    return text
