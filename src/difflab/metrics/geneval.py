"""A GenEval-style scorer for the shapes world: does an image show what its prompt asks?

GenEval (Ghosh, Hajishirzi & Schmidt 2023, "GenEval: An object-focused framework for
evaluating text-to-image alignment") detects the objects in a generated image and answers,
per prompt, one of six questions: single object, two objects, counting, colours, position,
attribute binding; a category's score is the share of its images answered right, the overall
score the mean over the six categories. GenEval needs an open-world detector for photos; in
the shapes world (difflab.data.shapes) the objects are flat coloured shapes on black, so
they can be read exactly, with geometry instead of a network:

1. Support: a pixel is an object's if its brightest channel reaches SUPPORT (of 255),
   less lone pixels and one-pixel spurs (a morphological opening with a 2x2 square).
2. Objects: 4-connected components of the support, each image on its own; components under
   MIN_AREA pixels are specks, not objects (generators leave a few).
3. Colour: each pixel's chromaticity (RGB divided by its brightest channel, which undoes
   the darkening of antialiased and blurred edges) goes to the nearest palette colour,
   "unknown" beyond COLOUR_TOLERANCE; an object takes its brightness-weighted majority,
   "unknown" when that has under PURITY of the votes.
4. Shape and size from the component's soft geometry, which blur hardly moves: the peak
   brightness p (mean of the pixels within PEAK_FRACTION of the brightest), the extents
   W = sum over columns of (column max / p) and H likewise over rows, the centre from those
   profiles. A triangle (apex up) holds a third as much brightness above its centre as below
   (TOP_BOTTOM); a square keeps about a sixth of its mass in the corners outside the ellipse
   inscribed in W x H (for a circle only blur leaks there: CORNER_MASS); anything too thin,
   too large or too small is "unknown". Size: width W at least LARGE_EXTENT is large.
5. A prompt's spec (difflab.data.shapes_grammar) is met when the objects found can be
   assigned to its phrases exactly: each phrase gets ``count`` objects of its shape (and
   colour and size, when named), no object is left over, and a relation holds between every
   object of the first phrase and every one of the second (shapes_scene.relation_holds,
   GenEval's centre-offset rule); a phrase with a place ("on the left") has all its objects
   in that half of the image (shapes_scene.place_holds, the same rule against the middle).
   Our prompts describe whole scenes, so an extra object is an error here, where GenEval only
   requires the named ones.

Thresholds come from what the renderer draws (shapes_scene.render): their clean values and
the ranges under blur, noise and colour jitter are in docs/shapes.md, and the tests check
>= 99 % right answers on rendered and perturbed ground truth and >= 99 % rejections of
deliberately wrong images.

    report = score_images(images_uint8, prompts)            # prompts: texts or PromptSpecs
    print(format_geneval_report(report))
    report = evaluate_geneval(lambda texts, seed: gen.generate(len(texts), prompt=texts,
                                                               seed=seed))
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from difflab.data.shapes import geneval_prompts
from difflab.data.shapes_grammar import (
    CATEGORIES,
    PromptSpec,
    held_out_in_spec,
    parse_prompt,
)
from difflab.data.shapes_scene import (
    COLOUR_NAMES,
    IMAGE_SIZE,
    PALETTE,
    SHAPES,
    SIZES,
    place_holds,
    relation_holds,
)
from difflab.metrics.evaluate import load_images_file
from difflab.metrics.shapes_features import shapes_fid

SUPPORT = 0.3  # brightest channel / 255 at or above which a pixel belongs to an object
MIN_AREA = 10  # pixels (of a 32x32 image) a component needs to count as an object
COLOUR_TOLERANCE = 0.3  # largest chromaticity distance to a palette colour
SPECK_BRIGHTNESS = 0.85  # a lone or spur pixel this bright (channel / 255) is a speck
PURITY = 0.6  # least share of an object's colour votes its colour must have
PEAK_FRACTION = 0.7  # pixels this close to the brightest make up the peak brightness
CORNER_RADIUS2 = 1.1  # (x/a)^2 + (y/b)^2 beyond which a pixel is in a corner
CORNER_MASS = 0.075  # square: clean 0.13-0.22, circle 0.00-0.04 (docs/shapes.md)
TOP_BOTTOM = 0.7  # triangle: clean 0.34-0.46, circle and square 0.90-1.11
# Pixels (of 32): small objects are 8 wide, large ones 12. Blur widens a small square to 8.6
# and wears a large triangle's base corners down to 10.2 (docs/shapes.md): split between.
LARGE_EXTENT = 9.4
EXTENT_RANGE = (5.0, 16.0)  # outside: not one of our objects (a speck cluster, two merged)
ASPECT_RANGE = (0.7, 1.43)  # W / H; every shape we draw is as wide as it is tall
FILL_RANGE = (0.4, 1.25)  # mass / (W H): triangle 0.5, circle 0.79, square 1.0

UNKNOWN = "unknown"
_CHROMA = PALETTE.astype(np.float32) / PALETTE.max(axis=1, keepdims=True)  # (6, 3)
_CHUNK = 1024  # images per pass, to bound memory


@dataclass(frozen=True)
class Detection:
    """An object read from an image: names (or "unknown"), centre and extent in pixels of a
    32x32 image."""

    shape: str
    colour: str
    size: str
    x: float
    y: float
    extent: float

    def describe(self) -> str:
        return f"{self.size} {self.colour} {self.shape} at ({self.x:.0f}, {self.y:.0f})"


def as_hwc_uint8(images: Any) -> np.ndarray:
    """uint8 (N, H, W, 3) from a uint8 array or tensor (N, 3, H, W), (N, H, W, 3) or one
    image (3, H, W) / (H, W, 3). ValueError naming the shape or dtype that does not fit."""
    if hasattr(images, "detach"):  # a torch tensor, without importing torch here
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(
            f"images must be uint8 RGB (0-255), got {images.dtype}; convert with "
            "difflab.data.to_uint8 first"
        )
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or 3 not in (images.shape[1], images.shape[3]):
        raise ValueError(
            f"images must be RGB (N, 3, H, W) or (N, H, W, 3), got shape {images.shape}"
        )
    return images.transpose(0, 2, 3, 1) if images.shape[1] == 3 else images


def _components(x: np.ndarray) -> dict[str, np.ndarray]:
    """The objects of a chunk of float images (n, H, W, 3) in [0, 1] (module docstring,
    steps 1-4), as arrays over components: ``image`` index, ``area`` (pixels), ``colour``
    index (len(COLOUR_NAMES) for unknown), ``fill`` (mass / (W H)), soft ``width`` and
    ``height``, centre ``cx``, ``cy``, ``top_bottom`` and ``corner_mass``; lengths in pixels
    of these images."""
    n, h, w, _ = x.shape
    v = x.max(axis=-1)
    support = v >= SUPPORT
    # Specks: a fully bright pixel with at most one 4-neighbour in the support is a speck
    # (alone, or stuck to an object's edge, where it would change the object's shape or
    # size). The shapes we draw have no such pixel: where their outline narrows to a single
    # pixel (a circle's top, a triangle's apex) the pixel is only partly covered.
    padded = np.pad(support, ((0, 0), (1, 1), (1, 1)))
    neighbours = (
        padded[:, :-2, 1:-1].astype(np.int8)
        + padded[:, 2:, 1:-1]
        + padded[:, 1:-1, :-2]
        + padded[:, 1:-1, 2:]
    )
    support &= (neighbours >= 2) | (v < SPECK_BRIGHTNESS)
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]  # 4-connected, never across images
    from scipy import ndimage  # here: loading it costs every `difflab` command a tenth of a second

    labels, k = ndimage.label(support, structure)
    flat = np.flatnonzero(labels)
    lab = labels.ravel()[flat]
    val = v.ravel()[flat]
    image, rest = np.divmod(flat, h * w)
    row, col = np.divmod(rest, w)
    size = k + 1  # per-label arrays; label 0, the background, is dropped at the end

    # Colour: nearest palette chromaticity per pixel, brightness-weighted votes per object.
    rgb = x.reshape(-1, 3)[flat]
    chroma = rgb / np.maximum(val, 1e-6)[:, None]
    dist = np.linalg.norm(chroma[:, None, :] - _CHROMA[None], axis=2)
    colour = dist.argmin(axis=1)
    colour[dist.min(axis=1) > COLOUR_TOLERANCE] = len(COLOUR_NAMES)
    votes = np.zeros((size, len(COLOUR_NAMES) + 1))
    np.add.at(votes, (lab, colour), val)
    total = np.bincount(lab, val, size)
    best = votes.argmax(axis=1)
    purity = votes.max(axis=1) / np.maximum(total, 1e-9)
    best[purity < PURITY] = len(COLOUR_NAMES)
    # Geometry from the object's own colour only: a speck of another colour against it
    # (generators leave some) must not change its shape or size.
    keep = (colour == best[lab]) | (best[lab] == len(COLOUR_NAMES))
    lab, val, row, col, image = lab[keep], val[keep], row[keep], col[keep], image[keep]
    total = np.bincount(lab, val, size)

    # Geometry from the soft (brightness) mask, normalised by the peak brightness.
    brightest = np.zeros(size, dtype=np.float32)
    np.maximum.at(brightest, lab, val)
    high = val >= PEAK_FRACTION * brightest[lab]
    peak = np.bincount(lab[high], val[high], size) / np.maximum(
        np.bincount(lab[high], None, size), 1
    )
    peak = np.maximum(peak, 1e-6)
    mass = total / peak
    row_max = np.zeros((size, h), dtype=np.float32)
    col_max = np.zeros((size, w), dtype=np.float32)
    np.maximum.at(row_max, (lab, row), val)
    np.maximum.at(col_max, (lab, col), val)
    row_profile = np.minimum(row_max / peak[:, None], 1.0)
    col_profile = np.minimum(col_max / peak[:, None], 1.0)
    height = np.maximum(row_profile.sum(axis=1), 1e-6)
    width = np.maximum(col_profile.sum(axis=1), 1e-6)
    cy = (row_profile * (np.arange(h) + 0.5)).sum(axis=1) / height
    cx = (col_profile * (np.arange(w) + 0.5)).sum(axis=1) / width
    # Mass above the centre line, pixel rows split where the line crosses them.
    above = np.bincount(lab, val * np.clip(cy[lab] - row, 0.0, 1.0), size)
    top_bottom = above / np.maximum(total - above, 1e-9)
    ex = (col + 0.5 - cx[lab]) / (width[lab] / 2)
    ey = (row + 0.5 - cy[lab]) / (height[lab] / 2)
    corner = ex**2 + ey**2 > CORNER_RADIUS2
    corner_mass = np.bincount(lab[corner], val[corner], size) / np.maximum(total, 1e-9)

    first_image = np.zeros(size, dtype=np.int64)
    first_image[lab] = image
    area = np.bincount(lab, None, size)
    features = {
        "image": first_image,
        "area": area,
        "colour": best,
        "fill": mass / (width * height),
        "width": width,
        "height": height,
        "cx": cx,
        "cy": cy,
        "top_bottom": top_bottom,
        "corner_mass": corner_mass,
    }
    return {name: a[1:] for name, a in features.items()}  # label 0 is the background


def _classify(
    fill: np.ndarray,
    width: np.ndarray,
    height: np.ndarray,
    top_bottom: np.ndarray,
    corner_mass: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Shape index (-1 unknown) and size index of components, from features in 32x32 pixels."""
    extent = np.maximum(width, height)
    aspect = width / height
    plausible = (
        (EXTENT_RANGE[0] <= extent)
        & (extent <= EXTENT_RANGE[1])
        & (ASPECT_RANGE[0] <= aspect)
        & (aspect <= ASPECT_RANGE[1])
        & (FILL_RANGE[0] <= fill)
        & (fill <= FILL_RANGE[1])
    )
    shape = np.where(
        top_bottom < TOP_BOTTOM,
        SHAPES.index("triangle"),
        np.where(corner_mass >= CORNER_MASS, SHAPES.index("square"), SHAPES.index("circle")),
    )
    shape = np.where(plausible, shape, -1)
    # Size from the width: a triangle's base keeps its width under blur, its apex fades.
    return shape, (width >= LARGE_EXTENT).astype(np.int64)


def detect_objects(images: Any) -> list[list[Detection]]:
    """The objects found in each image (module docstring, steps 1-4), left to right."""
    hwc = as_hwc_uint8(images)
    n, h, w, _ = hwc.shape
    sx, sy = IMAGE_SIZE / w, IMAGE_SIZE / h  # to pixels of a 32x32 image
    min_area = MIN_AREA / (sx * sy)
    out: list[list[Detection]] = [[] for _ in range(n)]
    for start in range(0, n, _CHUNK):
        chunk = hwc[start : start + _CHUNK].astype(np.float32) / 255.0
        f = _components(chunk)
        image, colour = f["image"], f["colour"]
        width, height, cx, cy = f["width"] * sx, f["height"] * sy, f["cx"] * sx, f["cy"] * sy
        shape, size = _classify(f["fill"], width, height, f["top_bottom"], f["corner_mass"])
        area = f["area"]
        keep = np.flatnonzero(area >= min_area)
        for i in keep[np.lexsort((cx[keep], image[keep]))]:
            out[start + image[i]].append(
                Detection(
                    shape=SHAPES[shape[i]] if shape[i] >= 0 else UNKNOWN,
                    colour=COLOUR_NAMES[colour[i]] if colour[i] < len(COLOUR_NAMES) else UNKNOWN,
                    size=SIZES[size[i]],
                    x=float(cx[i]),
                    y=float(cy[i]),
                    extent=float(max(width[i], height[i])),
                )
            )
    return out


def check(spec: PromptSpec, found: Sequence[Detection]) -> tuple[bool, str]:
    """Whether the objects ``found`` in an image are exactly what ``spec`` asks for (module
    docstring, step 5), and why not."""
    if len(found) != spec.num_objects:
        return False, f"{len(found)} objects, asked for {spec.num_objects}"
    # Every way of giving each object a phrase (at most 4 objects and phrases: <= 256).
    slots = [
        [g for g, p in enumerate(spec.groups) if p.matches(d.shape, d.colour, d.size)]
        for d in found
    ]
    if any(not s for s in slots):
        odd = next(d for d, s in zip(found, slots, strict=True) if not s)
        return False, f"a {odd.size} {odd.colour} {odd.shape} that the prompt does not ask for"
    counted = placed = False
    for choice in itertools.product(*slots):
        if any(choice.count(g) != p.count for g, p in enumerate(spec.groups)):
            continue
        counted = True
        if not all(
            place_holds(d.x, d.y, spec.groups[g].place, d.extent)
            for d, g in zip(found, choice, strict=True)
            if spec.groups[g].place is not None
        ):
            continue
        placed = True
        if spec.relation is None:
            return True, "ok"
        first = [d for d, g in zip(found, choice, strict=True) if g == 0]
        second = [d for d, g in zip(found, choice, strict=True) if g == 1]
        if all(
            relation_holds((a.x, a.y), (b.x, b.y), spec.relation, a.extent, b.extent)
            for a in first
            for b in second
        ):
            return True, "ok"
    if placed:
        return False, f"objects right, but not {spec.relation}"
    if counted:
        return False, "objects right, but not where the prompt places them"
    return False, "objects do not match the phrases' counts"


def _as_spec(prompt: str | PromptSpec) -> PromptSpec:
    return prompt if isinstance(prompt, PromptSpec) else parse_prompt(prompt)


def score_images(images: Any, prompts: Sequence[str | PromptSpec]) -> dict[str, Any]:
    """Score each image against its prompt (texts of the shapes grammar, or specs).

    Returns a JSON-ready report: per category the images, how many are right, the accuracy
    and the accuracy on prompts with a held-out composition; ``overall``, GenEval's mean of
    the category accuracies (over the six categories present); ``held_out_overall`` the same
    on held-out prompts only; and ``results``, one entry per image with its prompt, category,
    answer and what was found.
    """
    specs = [_as_spec(p) for p in prompts]
    hwc = as_hwc_uint8(images)
    if len(hwc) != len(specs):
        raise ValueError(f"{len(hwc)} images but {len(specs)} prompts; give one prompt per image")
    results = []
    for spec, found in zip(specs, detect_objects(hwc), strict=True):
        ok, why = check(spec, found)
        results.append(
            {
                "prompt": spec.text(),
                "category": spec.category,
                "held_out": bool(held_out_in_spec(spec)),
                "correct": ok,
                "why": why,
                "found": [d.describe() for d in found],
            }
        )
    categories: dict[str, dict[str, Any]] = {}
    for name in [*CATEGORIES, "other"]:
        mine = [r for r in results if r["category"] == name]
        if not mine:
            continue
        held = [r for r in mine if r["held_out"]]
        categories[name] = {
            "images": len(mine),
            "correct": sum(r["correct"] for r in mine),
            "accuracy": float(np.mean([r["correct"] for r in mine])),
            "held_out_images": len(held),
            "held_out_accuracy": float(np.mean([r["correct"] for r in held])) if held else None,
        }
    six = [categories[c] for c in CATEGORIES if c in categories]
    held_six = [c["held_out_accuracy"] for c in six if c["held_out_accuracy"] is not None]
    return {
        "benchmark": "GenEval-style, shapes world",
        "images": len(results),
        "categories": categories,
        "overall": float(np.mean([c["accuracy"] for c in six])) if six else None,
        "held_out_overall": float(np.mean(held_six)) if held_six else None,
        "results": results,
    }


def evaluate_geneval(
    generate: Callable[[list[str], int], Any],
    images_per_prompt: int = 4,
    seed: int = 0,
    prompts: Sequence[str | PromptSpec] | None = None,
    fid: bool = True,
) -> dict[str, Any]:
    """Score a text-to-image model: ``generate(texts, seed)`` returns one uint8 RGB image
    per text; each prompt (default: difflab.data.shapes.geneval_prompts, all categories) is
    drawn ``images_per_prompt`` times, as GenEval draws four. Report as :func:`score_images`,
    plus the settings and (``fid``) the same images' FID against scenes rendered for their
    prompts (difflab.metrics.shapes_features): whether picture quality was traded away."""
    if (
        isinstance(images_per_prompt, bool)
        or not isinstance(images_per_prompt, int)
        or images_per_prompt < 1
    ):
        raise ValueError(f"images_per_prompt must be an integer >= 1, got {images_per_prompt!r}")
    if prompts is None:
        specs = [p for ps in geneval_prompts().values() for p in ps]
    else:
        specs = [_as_spec(p) for p in prompts]
    if not specs:
        raise ValueError("no prompts to evaluate")
    specs = [p for p in specs for _ in range(images_per_prompt)]
    images = generate([p.text() for p in specs], seed)
    report = score_images(images, specs)
    report.update(
        images_per_prompt=images_per_prompt, seed=seed, prompts=len(specs) // images_per_prompt
    )
    if fid and len(specs) > 1:
        report["fid"] = shapes_fid(images, specs)
    return report


def score_images_file(path: str | os.PathLike) -> dict[str, Any]:
    """:func:`score_images` of an .npz holding ``images`` (uint8, as ``difflab eval --images``
    reads them) and ``prompts``, one string per image (``np.savez(f, images=x,
    prompts=np.array(texts))``: a unicode array, no pickles)."""
    images, _ = load_images_file(path)
    with np.load(path, allow_pickle=False) as data:
        if "prompts" not in data:
            raise ValueError(
                f"{path} holds no 'prompts': save one prompt per image beside the images, "
                "np.savez(FILE, images=..., prompts=np.array(texts))"
            )
        prompts = data["prompts"]
    if prompts.dtype.kind not in "US" or prompts.shape != (len(images),):
        raise ValueError(
            f"{path}['prompts'] must be {len(images)} strings, one per image; got "
            f"{prompts.dtype} with shape {prompts.shape}"
        )
    texts = [str(p) for p in prompts]
    report = score_images(images, texts)
    if len(texts) > 1:
        report["fid"] = shapes_fid(images, texts)
    return report


# Below this many images the report says its FID is a rough reading (the world against
# itself scores ~29 at 198 images and ~14 at 396: shapes_features.shapes_fid).
FEW_FOR_FID = 50


def format_geneval_report(report: dict[str, Any]) -> str:
    """The report as a table: one line per category, then the overall score."""

    def pct(a: float | None) -> str:
        return "     -" if a is None else f"{100 * a:5.1f}%"

    lines = [f"{report['benchmark']}: {report['images']} images"]
    if "described" in report.get("sampling", {}):  # by difflab.evaluation.geneval_generator
        lines.append(f"sampled with {report['sampling']['described']}")
    lines.append(f"{'category':<18} {'images':>6} {'correct':>7} {'score':>6}   held-out prompts")
    for name, c in report["categories"].items():
        held = (
            f"{pct(c['held_out_accuracy'])} of {c['held_out_images']}"
            if c["held_out_images"]
            else "     -"
        )
        lines.append(f"{name:<18} {c['images']:>6} {c['correct']:>7} {pct(c['accuracy'])}   {held}")
    present = sum(name in report["categories"] for name in CATEGORIES)
    overall = ("overall (mean of the six categories)" if present == len(CATEGORIES)
               else f"overall (mean of the {present} categories asked)")
    lines.append(f"{overall:<41}{pct(report['overall'])}")
    if report.get("held_out_overall") is not None:
        lines.append(
            f"{'held-out prompts (mean of categories)':<41}{pct(report['held_out_overall'])}"
        )
    if report.get("fid") is not None:
        f = report["fid"]
        lines.append(
            f"FID {f['fid']:.2f} against {f['reference']}; the world itself scores "
            f"{f['floor']:.2f} at {f['images']} images; features: {f['feature_space']}"
        )
        if f["images"] < FEW_FOR_FID:
            lines.append(f"(FID from {f['images']} images is a rough reading: it is biased "
                         f"upward and varies widely below {FEW_FOR_FID})")
    return "\n".join(lines)

