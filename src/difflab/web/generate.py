"""The Generate tab: draw images from a shipped model or a checkpoint, as `difflab sample`.

The Generator is called exactly as `difflab sample` calls it (difflab.cli.sample and
.sampling): sampler, steps and guidance resolved by `Generator.sampling_settings`, guidance
only when a class or prompt is asked for, `clip="auto"`, fp32, and `--class all` laid out
the same way (`class_rows`, as the CLI's `sample_rows`). Sample i of seed s depends on
nothing else (every sample has its own torch.Generator, whatever the batch size), so the
page's images are the CLI's, pixel for pixel, for the same seed and settings (tests/web
compares them, for `--class all` too).

While it samples, each step's x_t (for a latent model: the decoded x0 prediction, as the
CLI's --gif shows) is streamed to the page; the same frames become the reverse-process GIF.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
import time
from collections.abc import Generator as Gen
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difflab import viz
from difflab.argtypes import check_text
from difflab.pipeline import Generator
from difflab.pipeline.settings import ATTENTION_GUIDANCE, grid_rows
from difflab.samplers import SAMPLERS
from difflab.web.errors import collecting_warnings
from difflab.web.limits import (
    Limits,
    attention_guidance_value,
    autoguidance_value,
    guidance_value,
    seed_value,
    whole_number,
)
from difflab.web.models import ModelStore
from difflab.web.streaming import run_streaming
from difflab.web.training_data import health_notes

NO_CLASS = "(no class)"
ALL_CLASSES = "all (a row per class)"
# The GIF as the CLI writes it (cmd_sample): at most 60 frames, the last held for 2 s.
GIF_FRAMES = 60
GRID_SCALE = 2
PREVIEW_SCALE = 4  # the live preview, enlarged (a 28x28 sample is tiny on a screen)


@dataclass(frozen=True)
class Preview:
    """One step of a running job: the picture to show and how far it is."""

    image: Any  # PIL image of the grid at this step
    step: int
    total: int | None
    label: str


@dataclass
class Result:
    """What a finished generation shows: the images (uint8 (N, C, H, W)) with a caption
    each, the grid PNG and reverse-process GIF to download, and notes for beside them."""

    images: torch.Tensor
    captions: list[str]
    grid: Path
    gif: Path | None
    notes: list[str] = field(default_factory=list)
    preview: Any = None  # the last frame of the live preview: the final samples


def sampler_names() -> list[str]:
    return sorted(SAMPLERS)


def class_choices(gen: Generator) -> list[str]:
    """The class picker's entries for a model: none, each class name, all (conditional)."""
    if gen.num_classes is None:
        return [NO_CLASS]
    names = gen.class_names or [str(i) for i in range(gen.num_classes)]
    return [NO_CLASS, *names, ALL_CLASSES]


def defaults(gen: Generator) -> dict[str, Any]:
    """The model's own [sample] settings, to preselect in the form (sampler, steps, guidance
    when conditional, autoguidance when it keeps a guide), from `Generator.sampling_settings`
    as `difflab sample` resolves them."""
    settings = gen.sampling_settings(conditioned=True)
    out = {"sampler": settings.sampler, "steps": settings.steps, "guidance": None,
           "autoguidance": None, "relation_guidance": None, "binding_guidance": None,
           "relation_regions": None}
    if gen.takes_attention_guidance:  # 0 (off) where the checkpoint does not guide this way
        for key in ATTENTION_GUIDANCE:
            out[key] = getattr(settings, key) or 0.0
    if gen.takes_text:  # on or off, as the checkpoint draws a prompt
        out["relation_regions"] = settings.relation_regions
    if gen.conditional:
        out["guidance"] = settings.guidance
    if gen.guide is not None:  # 1 (the model alone) where the checkpoint does not autoguide
        out["autoguidance"] = settings.autoguidance if settings.autoguidance is not None else 1.0
    return out


def steps_for(gen: Generator, sampler: str) -> int:
    """The steps `difflab sample --sampler S` would take without --steps: the checkpoint's
    for its own sampler, another sampler's own default otherwise."""
    return gen.sampling_settings(sampler).steps


def to_hwc(image: torch.Tensor) -> np.ndarray:
    """One uint8 (C, H, W) image as an (H, W) grey or (H, W, 3) RGB array, as PNGs hold it."""
    array = image.numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


# One folder per server process for the requests' files; it goes when the process exits.
_work_root: Path | None = None
# gradio copies a request's files into its own cache as the request returns, so a folder of
# ours older than this is done with (the longest request's GIF frames included).
WORK_FOLDER_SECONDS = 3600


def work_root() -> Path:
    """This process's folder for its requests' files, made on first use; it goes at exit
    (`difflab serve` turns a SIGTERM into an exit, so `kill` takes it too)."""
    global _work_root
    if _work_root is None or not _work_root.is_dir():
        _work_root = Path(tempfile.mkdtemp(prefix="difflab-web-"))
        atexit.register(shutil.rmtree, _work_root, ignore_errors=True)
    return _work_root


def work_folder() -> Path:
    """A fresh folder for one request's files, under this process's own folder: the folders
    of requests done more than WORK_FOLDER_SECONDS ago are removed as new ones are made, and
    the whole goes at exit, so a server left running does not fill the disk's temp space."""
    root = work_root()
    now = time.time()
    for old in root.iterdir():
        with contextlib.suppress(OSError):  # another request's, removed just now
            if now - old.stat().st_mtime > WORK_FOLDER_SECONDS:
                shutil.rmtree(old)
    return Path(tempfile.mkdtemp(dir=root))


@dataclass(frozen=True)
class Request:
    """One generation as the form (or the API) asks for it."""

    model: str
    condition: str | None = None  # a class name, ALL_CLASSES, or NO_CLASS / None
    prompt: str | None = None
    negative_prompt: str | None = None
    sampler: str | None = None
    steps: Any = None
    guidance: Any = None
    autoguidance: Any = None  # None: the checkpoint's [sample] autoguidance, if it keeps a guide
    # None: the checkpoint's [sample] relation / binding guidance (text models with word pieces)
    relation_guidance: Any = None
    binding_guidance: Any = None
    # None: the checkpoint's [sample] relation_regions (text models)
    relation_regions: Any = None
    seed: Any = 0
    n: Any = 8
    gif: bool = True


def text_or_none(text: str | None, what: str = "prompt") -> str | None:
    """A form's text field: None when blank; refused when not text (a request is untrusted)."""
    if text is None:
        return None
    text = check_text(text, what).strip()
    return text or None


def check_numbers(limits: Limits, req: Request) -> tuple[int, int, int]:
    """(n, steps, seed) of a request, within this app's limits."""
    n = whole_number(req.n, "number of images", 1, limits.max_images, "--max-images")
    steps = whole_number(req.steps, "steps", 1, limits.max_steps, "--max-steps")
    if not isinstance(req.sampler, str) or req.sampler not in SAMPLERS:
        raise ValueError(f"sampler {req.sampler!r} is not one of {', '.join(sampler_names())}")
    return n, steps, seed_value(req.seed)


def generator_kwargs(
    gen: Generator,
    *,
    sampler: str,
    steps: int,
    seed: int,
    n: int,
    guidance: Any,
    classes: list | None,
    prompt: list[str] | None,
    negative_prompt: list[str] | None,
    autoguidance: Any = None,
    relation_guidance: Any = None,
    binding_guidance: Any = None,
    relation_regions: Any = None,
) -> tuple[dict, Any]:
    """The Generator keywords `difflab sample` / `img2img` / `inpaint` pass for these
    settings (cli.sampling_kwargs): sampler, steps, guidance and autoguidance resolved once by
    `sampling_settings`, guidance only for a class or prompt; and the resolved settings."""
    conditioned = classes is not None or bool(prompt)
    guidance = guidance_value(guidance) if conditioned and guidance is not None else None
    auto = autoguidance_value(autoguidance) if autoguidance is not None else None
    given = {k: attention_guidance_value(v, k.replace("_", " ")) if v is not None else None
             for k, v in (("relation_guidance", relation_guidance),
                          ("binding_guidance", binding_guidance))}
    if any(given.values()) and not gen.takes_attention_guidance:
        raise ValueError("relation and binding guidance read a text model's attention to the "
                         "words of its prompt; this model has none: set them to 0")
    if relation_regions is not None and not isinstance(relation_regions, bool):
        raise ValueError(f"relation regions must be true or false, got {relation_regions!r}")
    if relation_regions and not gen.takes_text:
        raise ValueError("relation regions draw the phrases of a prompt; this model takes no "
                         "text: turn them off")
    if not prompt:  # the page always sends its fields; without a prompt nothing is steered
        given = dict.fromkeys(given)
        relation_regions = None
    settings = gen.sampling_settings(sampler, steps, guidance, conditioned=conditioned,
                                     autoguidance=auto, relation_regions=relation_regions,
                                     **given)
    kw = dict(
        sampler=settings.sampler,
        steps=settings.steps,
        seed=seed,
        batch_size=max(n, 1),
        guidance=settings.guidance,
        guidance_interval=settings.guidance_interval,
        autoguidance=settings.autoguidance,
        classes=classes,
        clip="auto",
        precision="fp32",
        prompt=prompt,
        negative_prompt=negative_prompt,
        nearest_captions=None,
        # the checkpoint's relation and binding guidance, as `difflab sample` draws
        relation_guidance=settings.relation_guidance or 0.0,
        binding_guidance=settings.binding_guidance or 0.0,
        relation_regions=settings.relation_regions,
    )
    if settings.eta is not None:
        kw["eta"] = settings.eta
    return kw, settings


def plan(store: ModelStore, limits: Limits, req: Request) -> tuple[Generator, dict, dict]:
    """Check a request and turn it into (generator, Generator.generate keywords, layout: n,
    nrow, row labels and the grid title). Every refusal is a ValueError with one line."""
    n, steps, seed = check_numbers(limits, req)
    gen = store.load(req.model)
    prompt = text_or_none(req.prompt)
    negative = text_or_none(req.negative_prompt, "negative prompt")
    condition = class_choice(req.condition)
    classes, row_labels, per_row = None, None, None
    if condition == ALL_CLASSES:
        classes, row_labels, per_row = class_rows(gen, n)
        if len(classes) > limits.max_images:
            raise ValueError(
                f"{ALL_CLASSES!r} rounds {n} images up to {len(classes)} ({per_row} per class), "
                f"over this app's limit of {limits.max_images}; ask for fewer"
            )
    elif condition is not None:
        classes = [condition]
    n = len(classes) if classes and per_row else n
    kw, settings = generator_kwargs(
        gen, sampler=req.sampler, steps=steps, seed=seed, n=n, guidance=req.guidance,
        classes=classes, prompt=[prompt] if prompt else None,
        negative_prompt=[negative] if negative else None, autoguidance=req.autoguidance,
        relation_guidance=req.relation_guidance, binding_guidance=req.binding_guidance,
        relation_regions=req.relation_regions,
    )
    asked = None
    if per_row is None and classes:
        asked = f"class {row_label(gen, classes[0])}"
    elif per_row is None and prompt:
        asked = repr(prompt)
    title = viz.sampling_title(model_title(req.model), settings.sampler, settings.steps, seed,
                               settings.guidance, asked=asked,
                               autoguidance=settings.autoguidance,
                               interval=settings.guidance_interval,
                               sigma_max=settings.sigma_max, rho=settings.rho,
                               relation_guidance=settings.relation_guidance,
                               relation_regions=settings.relation_regions,
                               binding_guidance=settings.binding_guidance)
    layout = {"n": n, "nrow": per_row or 8, "title": title, "settings": settings,
              "row_labels": row_labels, "notes": unused_guidance_notes(gen, req, kw)}
    return gen, kw, layout


def unused_guidance_notes(gen: Generator, req: Request, kw: dict) -> list[str]:
    """A note when the form's guidance was not applied: a conditional model drawn without a
    class or prompt draws unconditionally. The CLI refuses such a --guidance; the page
    always sends its guidance field, so it draws and says so instead."""
    conditioned = kw.get("classes") is not None or bool(kw.get("prompt"))
    notes = []
    if gen.conditional and not conditioned and req.guidance not in (None, ""):
        asked = f"{req.guidance:g}" if isinstance(req.guidance, int | float) else req.guidance
        notes.append(f"guidance {asked} not applied: without a class or a prompt the model "
                     "draws unconditionally")
    # (with a class or prompt, a guidance autoguidance replaced is said there)
    steered = [f"{key.replace('_', ' ')} {getattr(req, key):g}" for key in ATTENTION_GUIDANCE
               if isinstance(getattr(req, key), int | float) and getattr(req, key)]
    if steered and not kw.get("prompt"):
        notes.append(f"{' and '.join(steered)} not applied: they steer what a prompt says, "
                     "and there is none")
    return notes


def model_title(name: str) -> str:
    """How a grid's title names the model: a shipped name, or the checkpoint's path."""
    return str(name).strip()


def class_choice(value: Any) -> Any:
    """The class field's value as the request means it: None for no class, ALL_CLASSES for
    the list's last entry or "all" (as `--class all` and the API docs say), else as given."""
    if value in (None, "", NO_CLASS):
        return None
    return ALL_CLASSES if value == "all" else value


def class_rows(gen: Generator, n: int) -> tuple[list[int], list[str], int]:
    """`--class all`: every class ceil(n / classes) times, one grid row each (never fewer
    images than asked for). Returns (a class per image, a label per row, images per row)."""
    if gen.num_classes is None:
        raise ValueError(f"{ALL_CLASSES!r} needs a class-conditional checkpoint")
    classes = list(range(gen.num_classes))
    rows, per = grid_rows(classes, n)
    return rows, gen.class_labels(classes), per


def row_label(gen: Generator, cls: Any) -> str:
    return gen.class_labels([cls])[0]


def prompt_notes(gen: Generator, kw: dict) -> list[str]:
    """What each prompt is read as (models with a caption bank), as `difflab sample` says."""
    prompts = (kw["prompt"] or []) + (kw["negative_prompt"] or [])
    if not prompts or gen.nearest_captions(kw["nearest_captions"]) == 0:
        return []
    return gen.prompt_readings(prompts)


def settings_note(kw: dict, settings) -> str:
    """The settings that ran and where each came from (as `difflab sample` prints them)."""
    return f"sampled with {settings.summary(kw.get('eta'))}, seed {kw['seed']}"


def captions(gen: Generator, kw: dict, n: int) -> list[str]:
    """A caption per image: its index and its class or prompt."""
    labels = gen.resolve_labels(kw["classes"], n) if kw["classes"] else None
    names = gen.class_names or [str(i) for i in range(gen.num_classes or 0)]
    out = []
    for i in range(n):
        what = names[int(labels[i])] if labels is not None else None
        if kw["prompt"]:
            what = kw["prompt"][i % len(kw["prompt"])]
        out.append(f"#{i} · {what}" if what else f"#{i}")
    return out


def run(
    store: ModelStore, limits: Limits, req: Request, interval_s: float = 0.2
) -> Gen[Preview, None, Result]:
    """Generate as asked, yielding a Preview of the latest step while it samples; returns
    the Result. Raises ValueError (and the library's errors) for a request it refuses."""
    gen, kw, layout = plan(store, limits, req)
    n, nrow = layout["n"], layout["nrow"]
    key = "x" if gen.autoencoder is None else "denoised"

    def work(report) -> tuple[torch.Tensor, viz.FrameRecorder, list[str]]:
        recorder = viz.FrameRecorder(key=key, decode=gen.to_pixels)

        def callback(info: dict) -> None:
            recorder(info)
            total = info.get("total")
            report((recorder.frames[-1], int(info.get("i", 0)) + 1,
                    int(total) if total else None, recorder.labels[-1]))

        with collecting_warnings() as caught:
            images = gen.generate(n, callback=callback, **kw)
        return images, recorder, caught

    stream = run_streaming(work, interval_s)
    while True:
        try:
            frame, step, total, label = next(stream)
        except StopIteration as stop:
            images, recorder, caught = stop.value
            break
        picture = viz.grid_image(frame, nrow, scale=PREVIEW_SCALE, header=label)
        yield Preview(picture, step, total, label)

    folder = work_folder()
    grid = viz.save_grid(images, folder / "samples.png", nrow=nrow, scale=GRID_SCALE,
                         row_labels=layout["row_labels"], title=layout["title"])
    gif = None
    if req.gif:
        gif = viz.save_gif(
            recorder.finish() + [images], folder / "reverse_process.gif", nrow=nrow,
            scale=GRID_SCALE, max_frames=GIF_FRAMES, hold_last_ms=2000,
            frame_labels=recorder.labels + ["final sample"], row_labels=layout["row_labels"],
            title=layout["title"],
        )
    notes = [settings_note(kw, layout["settings"]), *layout["notes"]]
    notes += prompt_notes(gen, kw)
    notes += [f"warning: {w}" for w in store.notes_for(gen) + caught]
    notes += health_notes(gen, images, store.step_for(gen))
    final = viz.grid_image(images, nrow, scale=PREVIEW_SCALE, header="final sample")
    return Result(images, captions(gen, kw, n), grid, gif, notes, final)
