"""Sample a model and score it: what `difflab eval` and a run's FID tracking measure.

    from difflab.evaluation import evaluate_checkpoint
    report = evaluate_checkpoint("runs/fashion/last", samples=10_000, nll=True)
    report = geneval_checkpoint("shapes-text", images_per_prompt=4, guidance=3.0)

This floor sits above the pipeline: it draws images with a `Generator` (from a checkpoint, or
from a live trainer for FID while a run trains) and hands them to difflab.metrics, which holds
the statistics and feature networks and knows nothing of models. See docs/design.md.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from difflab.data import resolve_class
from difflab.data.transforms import convert_channels, resize_images, to_float
from difflab.diffusion.denoiser import network_denoiser
from difflab.diffusion.process import DiscreteProcess
from difflab.diffusion.vlb import vlb_bits_per_dim
from difflab.metrics.evaluate import evaluate_images
from difflab.metrics.features import CLASS_ALIASES, CLASS_NAMES, DATASETS, metric_split
from difflab.metrics.geneval import evaluate_geneval
from difflab.pipeline import Generator
from difflab.pipeline.compiled import choose_compile
from difflab.pipeline.progress import NetworkProgress
from difflab.pipeline.settings import ATTENTION_GUIDANCE
from difflab.samplers.likelihood import ode_bits_per_dim, uniform_dequantize


def _checkpoint_dataset(gen) -> tuple[str, list[str] | None]:
    """(dataset name, classes kept in training or None) from a checkpoint's config.json."""
    data = gen.config.get("run", {}).get("data", {})
    name = data.get("name")
    if name not in DATASETS:
        # The shapes world is scored by what its prompts ask for, not by a feature network.
        instead = ("its samples are scored by --geneval: difflab eval CHECKPOINT --geneval"
                   if name == "shapes"
                   else "judge such a run by its samples and loss curve, or score samples of "
                   "the same kind of images with difflab eval --images FILE.npz --dataset NAME")
        raise ValueError(
            f"the checkpoint was trained on {name!r} data; the metrics have feature networks "
            f"for {', '.join(DATASETS)} only ({instead})"
        )
    return name, data.get("classes")


class _Float32Net(torch.nn.Module):
    """Runs a float32 network under code that works in float64 (the VLB): the network sees
    float32, and what surrounds it stays in the caller's precision."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        return self.net(x.float(), t, cond).to(x.dtype)


def checkpoint_nll(
    gen,
    *,
    num_images: int = 1000,
    num_timesteps: int | None = None,
    batch_size: int = 100,
    seed: int = 0,
    verbose: bool = False,
) -> dict[str, Any]:
    """Negative log-likelihood of the dataset's metric test split under a Generator's model,
    in bits per dimension: the variational bound (diffusion.vlb) for discrete processes, the
    probability-flow ODE (samplers.likelihood) for continuous ones. Class-conditional models
    are evaluated given each image's true class."""
    dataset, classes = _checkpoint_dataset(gen)
    data = metric_split(dataset, "test")
    images, labels = data.images, data.labels
    names = CLASS_NAMES[dataset]
    if classes is not None:
        chosen = [resolve_class(c, names, CLASS_ALIASES[dataset]) for c in classes]
        keep = torch.isin(labels, torch.tensor(chosen))
        images, labels = images[keep], labels[keep]
        remap = {c: i for i, c in enumerate(chosen)}
        labels = torch.tensor([remap[int(v)] for v in labels])
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(images), generator=g)[:num_images].sort().values
    images, labels = images[pick], labels[pick]
    c, h, _ = gen.image_shape
    if tuple(images.shape[1:]) != tuple(gen.image_shape):
        images = torch.from_numpy(resize_images(convert_channels(images.numpy(), c), h))
    discrete = isinstance(gen.process, DiscreteProcess)
    if discrete:
        method = (
            f"variational bound, {num_timesteps or gen.process.T - 1} of "
            f"{gen.process.T - 1} steps evaluated"
        )
    else:
        method = "probability-flow ODE, Hutchinson trace estimator, uniform dequantization"
    bpd: list[torch.Tensor] = []
    # A bar over the test images that counts the network evaluations as they happen: one
    # batch of the full bound is T network calls, minutes on a CPU.
    progress = NetworkProgress(gen.net, "NLL", len(images), "img") if verbose else None
    try:
        for i in range(0, len(images), batch_size):
            x0 = to_float(images[i : i + batch_size], torch.float64).to(gen.device)
            cond = labels[i : i + batch_size].to(gen.device) if gen.num_classes else None
            den = network_denoiser(
                _Float32Net(gen.net), gen.process, gen.parameterization, cond=cond
            )
            if discrete:
                out = vlb_bits_per_dim(den, x0, num_timesteps=num_timesteps, generator=g)["bpd"]
            else:
                x0 = uniform_dequantize(x0.float(), generator=g)
                out = ode_bits_per_dim(den, x0, divergence="hutchinson", generator=g)
            bpd.append(out.double().cpu())
            if progress is not None:
                progress.update(len(out))
    finally:
        if progress is not None:
            progress.close()
    values = torch.cat(bpd)
    stderr = float(values.std() / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    result = {
        "nll_bpd": float(values.mean()),
        "nll_bpd_stderr": stderr,
        "nll_images": len(values),
        "nll_method": method + (", given the true class" if gen.num_classes else ""),
    }
    if dataset != "fashion_mnist":
        result["nll_note"] = (
            f"{dataset} has no separate test split here: the held-out images are part of the "
            "data a model trained on the whole set has seen"
        )
    return result


def evaluate_checkpoint(
    path: str | os.PathLike,
    samples: int = 10_000,
    *,
    nll: bool = False,
    nll_timesteps: int | None = None,
    nll_images: int = 1000,
    device: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Draw `samples` images from a checkpoint and evaluate them (evaluate_generator, which
    takes the other keywords: sampler=, steps=, seed=, guidance=, reference_split=, ...),
    and with nll=True the test-set NLL in bits/dim (checkpoint_nll). The dataset, and the
    classes it was trained on, come from the checkpoint's config.json ("run" -> "data")."""

    if nll_timesteps is not None and nll_timesteps < 1:
        raise ValueError(f"nll_timesteps must be a positive number of steps, got {nll_timesteps}")
    if nll_images < 1:
        raise ValueError(f"nll_images must be positive, got {nll_images}")
    if samples < 4:  # before loading anything
        raise ValueError(f"samples must be at least 4, got {samples}")
    gen = Generator.from_checkpoint(path, device=device)
    dataset, classes = _checkpoint_dataset(gen)
    report = evaluate_generator(gen, dataset, samples, classes=classes, **options)
    report["checkpoint"] = str(path)
    if nll:
        seed, verbose = options.get("seed", 0), options.get("verbose", False)
        report.update(
            checkpoint_nll(
                gen, num_images=nll_images, num_timesteps=nll_timesteps, seed=seed, verbose=verbose
            )
        )
    return report


def evaluate_generator(
    gen,
    dataset: str,
    samples: int = 10_000,
    *,
    classes: Sequence[str | int] | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    guidance: float | None = None,
    guidance_interval: tuple[float, float] | None = None,
    autoguidance: float | None = None,
    reference_split: str = "test",
    n_reference: int | None = None,
    verbose: bool = False,
    compile: str = "auto",
    **sample_options: Any,
) -> dict[str, Any]:
    """Draw `samples` images from a :class:`~difflab.pipeline.Generator` and evaluate them
    against `dataset` (evaluate_images). A class-conditional model is asked for every class
    in turn, and its class agreement reported; a text model draws without a prompt.
    `classes`: the dataset classes the model was trained on (None: all); `sample_options`
    go to the sampler (clip=, eta=, ...). Sampler, steps and guidance left None are the
    checkpoint's [sample] settings, as `difflab sample` uses them. `compile` "auto", "on" or
    "off": sample through torch.compile (auto: when it pays, difflab.pipeline.compiled);
    what was chosen, and why, is in the report's "sampling" and said when verbose."""
    if samples < 4:
        raise ValueError(f"samples must be at least 4, got {samples}")
    names = CLASS_NAMES[dataset]
    aliases = CLASS_ALIASES[dataset]
    conditional = gen.num_classes is not None
    # every class in turn; fewer samples than classes draw the first classes, once each
    requested = list(range(min(gen.num_classes, samples))) if conditional else None
    # What will run: settings left None come from the checkpoint's [sample] (Generator).
    settings = gen.sampling_settings(
        sampler, steps, guidance, conditioned=conditional, guidance_interval=guidance_interval,
        autoguidance=autoguidance, sigma_max=sample_options.get("sigma_max"),
        rho=sample_options.get("rho"),
    )
    precision = sample_options.get("precision", "fp32")  # generate_batches' default
    compiling = choose_compile(compile, gen.device, precision, samples, settings.steps)
    if verbose:
        print(f"difflab: sampling with the {compiling.why}", file=sys.stderr, flush=True)
    batches, labels = [], []
    start = time.perf_counter()
    for images, lab in gen.generate_batches(
        samples,
        sampler=sampler,
        steps=steps,
        seed=seed,
        batch_size=batch_size,
        classes=requested,
        guidance=guidance,
        guidance_interval=guidance_interval,
        autoguidance=autoguidance,
        progress=verbose,  # a bar over every batch's steps, with the network evaluations
        compile=compiling.compile,
        **sample_options,
    ):
        batches.append(images)
        if lab is not None:
            labels.append(lab)
    sample_seconds = time.perf_counter() - start
    images = torch.cat(batches)
    dataset_labels = None
    if conditional:
        model_names = gen.class_names or [str(i) for i in range(gen.num_classes)]
        to_dataset = torch.tensor([resolve_class(n, names, aliases) for n in model_names])
        dataset_labels = to_dataset[torch.cat(labels)]
    report = evaluate_images(
        images,
        dataset,
        dataset_labels,
        reference_split=reference_split,
        n_reference=n_reference,
        classes=classes,
        seed=seed,
        verbose=verbose,
    )
    report["sampling"] = {
        "sampler": settings.sampler,
        "steps": settings.steps,
        "seed": seed,
        "guidance": settings.guidance,
        "guidance_interval": _listed(settings.guidance_interval),
        "autoguidance": settings.autoguidance,
        **_grid(settings),
        "compiled": compiling.compile,
        "seconds": round(sample_seconds, 1),
    }
    return report


def prompt_generate(
    gen,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    batch_size: int = 256,
    negative_prompt: str | None = None,
    verbose: bool = False,
    **sample_options: Any,
) -> Callable[[list[str], int], np.ndarray]:
    """``generate(texts, seed) -> uint8 (N, C, H, W)``: one image per text from a text-to-image
    :class:`~difflab.pipeline.Generator`, as difflab.metrics.geneval.evaluate_geneval asks.
    Sample i is seeded by (seed, i), so the same seed draws the same images at any batch
    size. Settings left None are the checkpoint's [sample] ones."""
    if not gen.takes_text:
        raise ValueError(
            "GenEval needs a text-to-image model (one trained with text.encoder set); this "
            "one takes no prompt"
        )

    def generate(texts: list[str], seed: int) -> np.ndarray:
        images = gen.generate(
            len(texts), prompt=list(texts), negative_prompt=negative_prompt, seed=seed,
            sampler=sampler, steps=steps, guidance=guidance, batch_size=batch_size,
            progress=verbose, **sample_options,
        )
        return images.cpu().numpy()

    return generate


def geneval_generator(
    gen,
    *,
    images_per_prompt: int = 4,
    seed: int = 0,
    prompts: Sequence[str] | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    guidance_interval: tuple[float, float] | None = None,
    autoguidance: float | None = None,
    batch_size: int = 256,
    negative_prompt: str | None = None,
    verbose: bool = False,
    **sample_options: Any,
) -> dict[str, Any]:
    """The GenEval-style score (difflab.metrics.geneval, docs/shapes.md) of a text-to-image
    Generator on the shapes world: each prompt (default: the 99 held-out test prompts of
    difflab.data.shapes.geneval_prompts) drawn `images_per_prompt` times and every image
    checked for the objects, counts, colours and positions its prompt names. The report
    adds the sampling settings and the time it took."""
    if not gen.takes_text or gen.dataset != "shapes":  # before minutes of sampling
        raise ValueError(
            "GenEval scores a text-to-image model of the shapes world (data.name = 'shapes', "
            f"e.g. shapes-text); this one was trained on {gen.dataset or 'unnamed data'}"
            f"{'' if gen.takes_text else ' and takes no text'}"
        )
    settings = gen.sampling_settings(
        sampler, steps, guidance, conditioned=True, guidance_interval=guidance_interval,
        autoguidance=autoguidance, sigma_max=sample_options.get("sigma_max"),
        rho=sample_options.get("rho"), relation_guidance=sample_options.get("relation_guidance"),
        binding_guidance=sample_options.get("binding_guidance"),
        relation_regions=sample_options.get("relation_regions"),
    )
    generate = prompt_generate(
        gen, sampler=sampler, steps=steps, guidance=guidance, batch_size=batch_size,
        negative_prompt=negative_prompt, verbose=verbose, guidance_interval=guidance_interval,
        autoguidance=autoguidance, **sample_options,
    )
    start = time.perf_counter()
    report = evaluate_geneval(generate, images_per_prompt, seed, prompts)
    report["sampling"] = {
        "sampler": settings.sampler,
        "steps": settings.steps,
        "seed": seed,
        "guidance": settings.guidance,
        "guidance_interval": _listed(settings.guidance_interval),
        "autoguidance": settings.autoguidance,
        **_grid(settings),
        "negative_prompt": negative_prompt,
        **{k: getattr(settings, k) for k in ATTENTION_GUIDANCE if getattr(settings, k)},
        **({"relation_regions": True} if settings.relation_regions else {}),
        "seconds": round(time.perf_counter() - start, 1),
        # in words, as `difflab sample` says what runs (format_geneval_report prints it)
        "described": settings.summary() + (f", negative prompt {negative_prompt!r}"
                                           if negative_prompt else "") + f", seed {seed}",
    }
    return report


def _grid(settings) -> dict[str, float]:
    """The Karras grid's settings a report records, where they are not the sampler's own."""
    return {k: getattr(settings, k) for k in ("sigma_max", "rho") if getattr(settings, k)}


def _listed(interval: tuple[float, float] | None) -> list[float] | None:
    """A guidance interval as a report's JSON holds it."""
    return None if interval is None else list(interval)


def geneval_checkpoint(
    path: str | os.PathLike, *, device: str | None = None, **options: Any
) -> dict[str, Any]:
    """:func:`geneval_generator` of a checkpoint folder or shipped model name (the keywords
    go there: images_per_prompt=, seed=, sampler=, steps=, guidance=, ...)."""
    gen = Generator.from_checkpoint(path, device=device)
    report = geneval_generator(gen, **options)
    report["checkpoint"] = str(path)
    return report
