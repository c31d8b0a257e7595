"""The Explore tab: the forward process at any t, the noise schedules, samplers side by side.

Each is one library call: `viz.forward_process_grid` (the picture `difflab viz forward` and a
training run's report draw), `viz.plot_schedules` (`difflab viz schedules`), and one
`Generator.generate` per sampler and step count with the same seed, so the rows of the
comparison start from the same noise and differ only by how they integrate it.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from difflab import viz
from difflab.pipeline import Generator, read_image_file
from difflab.web.errors import collecting_warnings
from difflab.web.generate import (
    ALL_CLASSES,
    GRID_SCALE,
    Request,
    class_choice,
    plan,
    work_folder,
)
from difflab.web.limits import Limits, seed_value, whole_number
from difflab.web.models import ModelStore
from difflab.web.training_data import training_images

DATA_IMAGE = "training image"
UPLOAD = "upload"
# The schedules plot: T from 2 to this many steps.
MAX_SCHEDULE_T = 10_000
# The forward process's columns besides the chosen t: 0, 25, 50, 75 and 100 % of the way.
FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)


def time_range(gen: Generator) -> tuple[float, float, float]:
    """(first t, last t, slider step) of a model's process: steps 0..T-1 for a discrete
    process, [t_min, t_max] for a continuous one."""
    p = gen.process
    return float(p.t_min), float(p.t_max), 1.0 if p.discrete else 0.001


def _time_value(gen: Generator, t: Any) -> float:
    lo, hi, step = time_range(gen)
    shown = f"{lo:g}..{hi:g}"
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        raise ValueError(f"t must be a number in {shown}, got {t!r}")
    if not lo <= t <= hi:
        raise ValueError(f"t {t:g} is outside this model's process ({shown})")
    if step == 1.0 and not float(t).is_integer():
        raise ValueError(f"t of a discrete process is a whole step ({shown}), got {t:g}")
    return float(t)


def forward(store: ModelStore, model: str, source: str, index: Any, upload: str | None,
            t: Any, seed: Any) -> Path:
    """The forward process q(x_t | x_0) of `model`'s noise process on one image (a training
    image by index, or an upload of the model's size), at 0/25/50/75/100 % and at `t`."""
    gen = store.load(model)
    t = _time_value(gen, t)
    seed = seed_value(seed)
    if source == UPLOAD:
        if not upload:
            raise ValueError("no image: upload one, or pick a training image")
        pixels = read_image_file(upload, "image")
    else:
        images, _ = training_images(gen)
        k = whole_number(index, "training image", 0, len(images) - 1)
        pixels = images[k : k + 1]
    with torch.no_grad():
        x0 = gen.to_model_space(pixels).cpu()  # latents for a latent model, as the report
    decode = None
    if gen.autoencoder is not None:
        def decode(z: torch.Tensor) -> torch.Tensor:
            return gen.autoencoder.from_latent(z.to(gen.device))
    lo, hi, _ = time_range(gen)
    chosen = (t - lo) / (hi - lo)

    def column_t(f: float) -> float:  # the t forward_process_grid draws for fraction f
        return float(round(f * (gen.process.T - 1))) if gen.process.discrete else lo + f * (hi - lo)

    shown = any(abs(column_t(f) - t) < 1e-9 for f in FRACTIONS)
    fractions = sorted([*FRACTIONS, *([] if shown else [chosen])])
    return viz.forward_process_grid(
        gen.process, x0, work_folder() / "forward_process.png", fractions=fractions,
        generator=torch.Generator().manual_seed(seed), decode=decode,
    )


def schedules(T: Any) -> Path:
    """alpha_bar and log-SNR of every discrete schedule over T steps."""
    T = whole_number(T, "T", 2, MAX_SCHEDULE_T)
    return viz.plot_schedules(work_folder() / "schedules.png", T=T)


def step_counts(text: str, limits: Limits) -> list[int]:
    """"5, 10, 20" -> [5, 10, 20], each within the app's step limit."""
    parts = [p for p in re.split(r"[,\s]+", str(text or "").strip()) if p]
    if not parts:
        raise ValueError("no step counts: give one or more, e.g. 5, 10, 20")
    counts = []
    for part in parts:
        try:
            value = int(part)
        except ValueError:
            raise ValueError(f"step count {part!r} is not a whole number") from None
        counts.append(whole_number(value, "steps", 1, limits.max_steps, "--max-steps"))
    return list(dict.fromkeys(counts))


@dataclass
class Comparison:
    picture: Any  # PIL image: one labelled row per sampler and step count
    path: Path
    notes: list[str]
    rows: list[tuple[str, int, torch.Tensor]]  # (sampler, steps, uint8 images) per row


def compare(store: ModelStore, limits: Limits, model: str, samplers: list[str] | None,
            steps_text: str, condition: str | None, prompt: str | None, seed: Any, n: Any,
            progress=None) -> Comparison:
    """The same seed through each sampler at each step count: a row of n images each."""
    if isinstance(samplers, str):  # the API may send one name for the list
        samplers = [samplers]
    samplers = list(dict.fromkeys(samplers or []))
    if not samplers:
        raise ValueError("no sampler chosen: pick one or more to compare")
    counts = step_counts(steps_text, limits)
    rows = [(s, k) for s in samplers for k in counts]
    if len(rows) > limits.max_compare_rows:
        raise ValueError(
            f"{len(samplers)} samplers x {len(counts)} step counts = {len(rows)} rows, over this "
            f"app's limit of {limits.max_compare_rows}; compare fewer"
        )
    n = whole_number(n, "images per row", 1, limits.max_compare_images)
    if class_choice(condition) == ALL_CLASSES:
        raise ValueError("pick one class (or none) to compare samplers on")
    images, labels, notes, title = [], [], [], None
    for k, (sampler, steps) in enumerate(rows):
        if progress is not None:
            progress((k, len(rows)), desc=f"{sampler}, {steps} steps")
        req = Request(model=model, condition=condition, prompt=prompt, sampler=sampler,
                      steps=steps, seed=seed, n=n, gif=False)
        gen, kw, layout = plan(store, limits, req)
        t0 = time.perf_counter()
        with collecting_warnings() as caught:
            images.append(gen.generate(layout["n"], **kw))
        seconds = time.perf_counter() - t0
        labels.append(f"{sampler}, {steps} steps")
        notes.append(f"{sampler}, {steps} steps: {seconds:.1f} s")
        notes += [f"warning: {w}" for w in store.notes_for(gen) + caught
                  if f"warning: {w}" not in notes]
        if title is None:
            asked = layout["title"].split(" · ")[1:-1]
            title = " · ".join([req.model, *asked, f"seed {seed_value(seed)}"])
    batch = torch.cat(images)
    picture = viz.grid_image(batch, nrow=n, scale=GRID_SCALE, row_labels=labels, title=title)
    path = viz.save_png(picture, work_folder() / "sampler_comparison.png")
    return Comparison(picture, path, notes, [(s, k, x) for (s, k), x in zip(rows, images,
                                                                        strict=True)])
