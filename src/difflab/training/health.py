"""Is a run drawing images yet? Checks of fixed-seed samples against the training data.

The usual complaints about a diffusion trainer are "my samples are all black / only noise /
NaN". These pure functions turn each of those into a one-sentence warning that says what was
seen (with the data's value beside it), at which step, and what to try:

    stats = data_stats(data.images)                   # once, from the training images
    findings = check_samples(samples, stats, step)    # at each sample grid and at the end
    findings += check_weights(model, step)
    print(summary(findings))                           # "samples look like data", ...

Every statistic is scale-free (unchanged by image size, channel count or pixel range) and is
judged against the same statistic of the data, so one set of thresholds serves 28x28 grey
clothes, 8x8 digits and RGB photos alike:

- high-frequency energy: mean squared difference of neighbouring pixels / (2 * the image's
  variance). For independent pixels E[(a - b)^2] = 2 var, so white noise gives 1 whatever its
  scale; images, whose neighbours are alike, give far less.
- per-image mean (dark / bright) and per-image standard deviation (constant);
- the fraction of pixels pinned at pure black or pure white (saturated);
- the mean RMS distance between two images (diversity) and near-duplicate pairs (collapse).

Calibration (/tmp scripts, not kept). Data rows: 2,048 evenly spaced training images. Sample
rows: 32 images, dpmpp_2m at 20 steps (the tests' 16 at 8 steps gave the same picture);
"untrained" is a freshly built network, i.e. what a run that trained 7 steps draws (its output
layer starts at zero, so the sampler returns its starting noise). hf: median high-frequency
energy; sat+: pixels pinned at pure black or white, minus the data's fraction; div and nn: mean
pairwise and smallest nearest-neighbour distance, over the data's mean pairwise distance.

    case                                     hf      sat+    div    nn     finding
    fashion_mnist data (image mean .03-.68)  0.145   -       0.410  -
    mnist data, 5,000 (image mean .03-.31)   0.207   -       0.361  -
    digits 8x8 data (image mean .18-.42)     0.482   -       0.377  -
    fashion-mnist, 3 seeds, ddim 50          .12-.16 <.01    .94-1.04 >.36  none
    fashion-mnist-cond, 10 classes, w 2, 3   .13-.14 <.01    .96-1.13 >.25  none
    mnist-digits-cond, 10 classes, w 2, 3    .19-.21 <.02    .96-1.09 >.36  none
    one class alone (trousers, sandals, "1") .11-.25 <.01    .57-.93  >.24  none
    own run, 100 / 300 steps (grainy blobs)  .20/.13 <.02    .98/1.01 >.56  none
    own run, 30 steps                        0.88    0.15    1.27   1.20   noise
    untrained network (fashion, mnist)       1.00    0.16    1.25+  1.18+  noise
    untrained network (8x8 digits)           1.03    0.08    1.36   1.03   noise
    healthy samples, contrast x4 / x2        .14/.15 .35/.21 1.36   0.57   saturated / none
    healthy samples thresholded to 0 / 255   0.17    0.42    1.40   0.58   saturated
    salt-and-pepper on every pixel / on 50%  1.00/.88 .49/.25 1.72  1.63   saturated / noise
    healthy + Gaussian noise, sd 0.5 of [-1,1] 0.40  -       -      -      none (not pure noise)
    32 copies / 16 + 16 copies / jittered    0.10    <.02    0-.81  0-.03  collapse
    all black / all white / all grey 128     -       -       0      0      dark / bright / constant

Not judged here: whether samples show the right class. A class-conditional grid that asks for
one class is not a failure (one class alone keeps 0.57-0.81 of the data's diversity above,
well clear of the collapse threshold), so callers pass samples of varied classes and the
collapse check only catches samples that are near-copies of each other.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

# Data statistics come from at most this many evenly spaced images (deterministic, and evenly
# spaced indices cover every class of a dataset stored sorted by class).
DATA_SUBSET = 2048
# Diversity compares images pooled to at most this side, so that large RGB images cost little.
DIVERSITY_SIDE = 32
DIVERSITY_SUBSET = 512

# --- Thresholds (margins from the calibration table in the module docstring) ---------------
# Noise: the samples' median high-frequency energy is more than halfway from the data's median
# to white noise's 1. Limits: 0.57 (fashion), 0.60 (mnist), 0.74 (8x8 digits); healthy samples
# reach at most 0.26 (sandals, of a data median 0.145), noise gives 0.88-1.04.
NOISE_WAY_TO_WHITE = 0.5
# Dark / bright: an image whose mean (0 black .. 1 white) is less than half as far from black
# as the data's darkest 0.1% (fashion 0.023, mnist 0.022, digits 0.11), or less than half as
# far from white as its brightest 0.1% (fashion 0.82, mnist 0.65, digits 0.79). Healthy
# samples ranged 0.05-0.68 on fashion, 0.05-0.30 on mnist.
DARK_BRIGHT_FRACTION_OF_GAP = 0.5
# Constant: an image whose pixel std is under a tenth of the data's median per-image std
# (fashion 0.034, mnist 0.030, digits 0.038); the lowest healthy sample had 0.10.
FLAT_FRACTION_OF_STD = 0.1
# Saturated: the fraction of pixels pinned at pure black, or at pure white, exceeds the data's
# by more than this. Healthy samples exceeded it by at most 0.08 (mnist at 8 steps); noise
# by 0.08-0.16 (unit-variance noise clipped to [-1, 1] leaves 16% at each end), so an
# untrained network reads as noise, while contrast x4 (0.35), thresholded images (0.42) and
# binary salt-and-pepper (0.49) read as saturated.
SATURATED_EXCESS = 0.3
# Collapse: mean pairwise distance under a quarter of the data's (one class alone: >= 0.57),
# or at least a quarter of the samples with a near-copy closer than a tenth of the data's
# mean distance (healthy samples: nearest neighbour >= 0.24 of it, including one class).
COLLAPSE_DIVERSITY = 0.25
DUPLICATE_DISTANCE = 0.1
# A kind of bad image (dark, bright, flat, near-copy) is reported when at least this fraction
# of the samples (more than of the data) shows it: an odd sample is not a failing run.
BAD_FRACTION = 0.25
# Throughput: a run this much slower than its start-up timing is flagged.
SLOW_FACTOR = 0.5

SAMPLE_KINDS = ("nonfinite", "noise", "constant", "dark", "bright", "saturated", "collapse")


@dataclass(frozen=True)
class DataStats:
    """What the training images look like, in the terms the checks use (pixels in [0, 1])."""

    hf_median: float  # median high-frequency energy (white noise: 1)
    std_median: float  # median per-image pixel std
    mean_low: float  # 0.1% quantile of the per-image mean
    mean_high: float  # 99.9% quantile of the per-image mean
    black: float  # fraction of pixels at pure black (0 of 255)
    white: float  # fraction of pixels at pure white (255 of 255)
    flat: float  # fraction of images under the "constant" std limit
    diversity: float  # mean RMS distance between two images (pooled to DIVERSITY_SIDE)
    count: int  # images the statistics come from

    @property
    def noise_limit(self) -> float:
        return self.hf_median + NOISE_WAY_TO_WHITE * (1.0 - self.hf_median)

    @property
    def dark_limit(self) -> float:
        return DARK_BRIGHT_FRACTION_OF_GAP * self.mean_low

    @property
    def bright_limit(self) -> float:
        return 1.0 - DARK_BRIGHT_FRACTION_OF_GAP * (1.0 - self.mean_high)

    @property
    def flat_limit(self) -> float:
        return FLAT_FRACTION_OF_STD * self.std_median


@dataclass(frozen=True)
class Finding:
    """One problem seen: ``kind`` is one of SAMPLE_KINDS or "slow"; ``message`` is one
    sentence naming what was seen, against the data's value, at which step, and what to try."""

    kind: str
    message: str


# ------------------------------------------------------------------------------ statistics
def _to_unit(images: Tensor) -> Tensor:
    """uint8 0..255, or float in [-1, 1], (N, C, H, W) -> float32 in [0, 1] as displayed
    (clamped, as `to_uint8` does when an image is saved)."""
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def _per_image(x: Tensor) -> dict[str, Tensor]:
    """Per-image statistics of [0, 1] images (N, C, H, W); hf is NaN for a flat image."""
    flat = x.flatten(1)
    var = flat.var(1, unbiased=False)
    sq_dx = (x[..., :, 1:] - x[..., :, :-1]).pow(2).flatten(1).mean(1)
    sq_dy = (x[..., 1:, :] - x[..., :-1, :]).pow(2).flatten(1).mean(1)
    hf = (sq_dx + sq_dy) / 2 / (2 * var)
    hf = torch.where(var > 1e-8, hf, torch.nan)
    return {
        "mean": flat.mean(1),
        "std": var.sqrt(),
        "hf": hf,
        # The pixels that round to 0 or 255 in the saved image.
        "black": (flat <= 0.5 / 255).float().mean(1),
        "white": (flat >= 254.5 / 255).float().mean(1),
    }


def _pooled(x: Tensor) -> Tensor:
    """[0, 1] images pooled (area average) to at most DIVERSITY_SIDE on a side, flattened: a
    collapse is about content, and large RGB images then cost little to compare."""
    h, w = x.shape[-2:]
    if max(h, w) > DIVERSITY_SIDE:
        x = F.adaptive_avg_pool2d(x, (min(h, DIVERSITY_SIDE), min(w, DIVERSITY_SIDE)))
    return x.flatten(1)


def _distances(flat: Tensor) -> Tensor:
    """RMS per-pixel distance between every two rows (N, N); the diagonal is inf."""
    flat = flat.double()
    d = torch.cdist(flat, flat) / flat.shape[1] ** 0.5
    return d.fill_diagonal_(torch.inf)


def _evenly_spaced(count: int, n: int) -> Tensor:
    """At most n indices spread evenly over range(count): deterministic, and they cover every
    class of a dataset stored sorted by class."""
    if count <= n:
        return torch.arange(count)
    return torch.linspace(0, count - 1, n).round().long()


def data_stats(images: Tensor) -> DataStats:
    """Statistics of the training images: uint8 (N, C, H, W) as in ``ImageData.images``, or
    float in [-1, 1]. Uses at most DATA_SUBSET evenly spaced images (deterministic)."""
    if len(images) < 2:
        raise ValueError("data_stats needs at least 2 images")
    idx = _evenly_spaced(len(images), DATA_SUBSET)
    # In chunks, on the CPU: a few thousand large RGB images never sit in memory as floats.
    parts = [_per_image(_to_unit(images[idx[i : i + 64]].cpu())) for i in range(0, len(idx), 64)]
    s = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    means = s["mean"].double()
    std_median = s["std"].median().item()
    pick = idx[_evenly_spaced(len(idx), DIVERSITY_SUBSET)]
    pooled = [_pooled(_to_unit(images[pick[i : i + 64]].cpu())) for i in range(0, len(pick), 64)]
    dist = _distances(torch.cat(pooled))
    return DataStats(
        hf_median=s["hf"].nanmedian().item() if s["hf"].isfinite().any() else 0.0,
        std_median=std_median,
        mean_low=means.quantile(0.001).item(),
        mean_high=means.quantile(0.999).item(),
        black=s["black"].mean().item(),
        white=s["white"].mean().item(),
        flat=(s["std"] < FLAT_FRACTION_OF_STD * std_median).float().mean().item(),
        diversity=dist[dist.isfinite()].mean().item(),
        count=len(idx),
    )


def stats_to_dict(stats: DataStats) -> dict[str, float | int]:
    """`stats` as plain numbers, for a checkpoint's config (so that sampling the checkpoint
    later can judge its samples without loading the training data)."""
    return asdict(stats)


def stats_from_dict(record: object) -> DataStats | None:
    """The DataStats a checkpoint's config recorded (`stats_to_dict`), or None when it holds
    none or they are not what stats_to_dict writes: every field a finite number, fractions
    and quantiles in [0, 1], at least 2 images. A checkpoint from elsewhere is untrusted, and
    a health check is advice: one that cannot be trusted is left out, not failed on."""
    if not isinstance(record, dict) or set(record) != {f.name for f in fields(DataStats)}:
        return None
    values = {}
    for name, value in record.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        # pixels in [0, 1] keep every statistic in [0, 1], but the count and the
        # high-frequency energy (up to 2, for neighbours that alternate)
        top = {"count": math.inf, "hf_median": 2.0}.get(name, 1.0)
        if not (math.isfinite(value) and 0.0 <= value <= top):
            return None
        values[name] = value
    if not isinstance(values["count"], int) or values["count"] < 2:
        return None
    return DataStats(**values)


# ------------------------------------------------------------------------------ checks
def check_samples(samples: Tensor, data: DataStats, step: int | None, *,
                  reconstructions: bool = False) -> list[Finding]:
    """What is wrong with a batch of fixed-seed samples, judged against the data.

    samples: float in [-1, 1] (NaN / Inf allowed: pass the float samples to catch them; a NaN
    turns black in the uint8 conversion) or uint8 0..255, (N, C, H, W), typically 16-64. One
    kind per cause: non-finite samples are reported alone; images counted as black, white or
    flat are left out of the noise and collapse checks; pixels pinned at the extremes are
    reported as "saturated" rather than also as noise. Samples of one class only are not
    flagged (see the module docstring): pass varied classes for a conditional model.
    `reconstructions`: the images are an autoencoder's reconstructions of varied data, whose
    advice differs where a sampler's does not apply (noise, guidance).
    """
    at = f"step {step:,}:" if step is not None else "samples:"
    n = len(samples)
    if samples.is_floating_point():
        bad = ~samples.flatten(1).isfinite().all(1)
        if bad.any():
            return [Finding("nonfinite", (
                f"{at} {int(bad.sum())} of {n} samples contain NaN/Inf values, so training has "
                "diverged; lower train.lr, keep train.grad_clip set (e.g. 1.0), and prefer "
                "train.precision = 'bf16' or 'fp32' to 'fp16'"
            ))]
    if n == 0:
        return []
    x = _to_unit(samples.detach().cpu())
    s = _per_image(x)
    findings: list[Finding] = []

    dark = s["mean"] < data.dark_limit
    bright = s["mean"] > data.bright_limit
    flat = (s["std"] < data.flat_limit) & ~dark & ~bright
    many = BAD_FRACTION * n
    remedy = (
        "if this persists past the first few hundred steps, lower train.lr and check that "
        "the loss falls"
    )
    if dark.sum() >= many:
        # A NaN becomes 0 (black) in the uint8 conversion, so uint8 samples may hide one.
        nan_note = "" if samples.is_floating_point() else "; NaN outputs also come out black"
        findings.append(Finding("dark", (
            f"{at} {int(dark.sum())} of {n} samples are near-black (mean brightness "
            f"{s['mean'][dark].mean():.3f} of 1, where 99.9% of training images exceed "
            f"{data.mean_low:.3f}{nan_note}); {remedy}"
        )))
    if bright.sum() >= many:
        findings.append(Finding("bright", (
            f"{at} {int(bright.sum())} of {n} samples are near-white (mean brightness "
            f"{s['mean'][bright].mean():.3f} of 1, where 99.9% of training images are under "
            f"{data.mean_high:.3f}); {remedy}"
        )))
    if flat.float().mean() >= data.flat + BAD_FRACTION:
        findings.append(Finding("constant", (
            f"{at} {int(flat.sum())} of {n} samples are one flat shade (pixel std "
            f"{s['std'][flat].mean():.3f}, the training images' median {data.std_median:.3f}), "
            f"so the network ignores its input; {remedy}"
        )))

    ok = ~(dark | bright | flat)
    if ok.sum() < 2:
        return findings
    black = s["black"][ok].mean().item()
    white = s["white"][ok].mean().item()
    over, end, seen, usual = max(
        (black - data.black, "black", black, data.black),
        (white - data.white, "white", white, data.white),
    )
    # Before the noise check: outputs blown far past [-1, 1] are pinned pixels, noise-like or
    # not, and the remedy is not "train longer".
    if over > SATURATED_EXCESS:
        findings.append(Finding("saturated", (
            f"{at} {seen:.0%} of the samples' pixels are pure {end} against {usual:.0%} in "
            "the data, so values overshoot the [-1, 1] range; sample with sample.clip = "
            "'static', lower the guidance scale if you use one, and lower train.lr"
        )))
        return findings

    hf = s["hf"][ok].nanmedian().item()
    if hf > data.noise_limit:
        findings.append(Finding("noise", (
            f"{at} samples are still noise (high-frequency energy {hf:.2f}, where white noise "
            f"is 1 and the data {data.hf_median:.2f}); expected in the first few hundred "
            "steps, else train longer (train.minutes or train.max_steps), check that the "
            "loss falls, and lower train.lr if it does not"
        )))
        return findings

    dist = _distances(_pooled(x[ok]))
    diversity = dist[dist.isfinite()].mean().item()
    copies = dist.min(1).values < DUPLICATE_DISTANCE * data.diversity
    if diversity < COLLAPSE_DIVERSITY * data.diversity or copies.float().mean() >= BAD_FRACTION:
        if reconstructions:
            findings.append(Finding("collapse", (
                f"{at} the reconstructions are nearly alike ({int(copies.sum())} of "
                f"{len(copies)} have a near-copy among them; mean distance {diversity:.3f} "
                f"against the data's {data.diversity:.3f}): the autoencoder does not yet tell "
                "its inputs apart; train longer (train.minutes or train.max_steps), and lower "
                "train.lr if the loss does not fall"
            )))
            return findings
        findings.append(Finding("collapse", (
            f"{at} the samples are nearly alike ({int(copies.sum())} of {len(copies)} have a "
            f"near-copy among them; mean distance {diversity:.3f} against the data's "
            f"{data.diversity:.3f}); check that each sample gets its own noise, lower the "
            "guidance scale if you use one, and give a tiny training set more images"
        )))
    return findings


def check_weights(model: torch.nn.Module, step: int) -> list[Finding]:
    """A finding if any parameter of `model` holds NaN or Inf (training has diverged)."""
    bad = [name for name, p in model.named_parameters() if not p.detach().isfinite().all()]
    if not bad:
        return []
    total = sum(1 for _ in model.parameters())
    first = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
    return [Finding("nonfinite", (
        f"step {step:,}: {len(bad)} of {total} parameter tensors hold NaN/Inf ({first}), so "
        "training has diverged; restart from an earlier checkpoint with a lower train.lr, "
        "keep train.grad_clip set (e.g. 1.0), and prefer train.precision = 'bf16' or 'fp32' "
        "to 'fp16'"
    ))]


def throughput_finding(
    steps_per_sec_measured: float, steps_per_sec_expected: float, step: int
) -> Finding | None:
    """A "slow" finding when the run trains at under SLOW_FACTOR of the speed the start-up
    timing measured for this network on this machine."""
    expected = steps_per_sec_expected
    if expected <= 0 or steps_per_sec_measured >= SLOW_FACTOR * expected:
        return None
    return Finding("slow", (
        f"step {step:,}: training runs at {steps_per_sec_measured:.2f} steps/s, "
        f"{steps_per_sec_measured / expected:.0%} of the {expected:.2f} steps/s measured at "
        "start-up, so the machine may be busy or throttled; close other jobs, or budget the "
        "run by train.max_steps rather than train.minutes"
    ))


# ------------------------------------------------------------------------------ verdicts
_PHRASES = {
    "nonfinite": "the model outputs NaN/Inf",
    "noise": "samples are still noise",
    "dark": "samples are black",
    "bright": "samples are white",
    "constant": "samples are flat, one shade each",
    "saturated": "samples are saturated (pure black or white)",
    "collapse": "samples are near-copies of each other",
}


def looks_like_data(findings: Iterable[Finding]) -> bool:
    """True when no finding is about the samples or weights ("slow" is about the machine)."""
    return not any(f.kind in SAMPLE_KINDS for f in findings)


def summary(findings: Iterable[Finding]) -> str:
    """A short phrase for the run's last line: "samples look like data", or what is wrong."""
    kinds = dict.fromkeys(f.kind for f in findings if f.kind != "slow")  # about the machine
    if not kinds:
        return "samples look like data"
    # a kind this version does not know (a log from a newer one, a hand edit) is named, not
    # taken for health
    return "; ".join(_PHRASES.get(k, f"a finding of kind {k!r}") for k in kinds)
