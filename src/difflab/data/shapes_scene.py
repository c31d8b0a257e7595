"""The shapes world: scenes of coloured circles, squares and triangles, and their pixels.

A scene is the single source of truth: each object's shape, colour, size and centre. Images
are rendered from it (:func:`render`), captions are written from it (``shapes_grammar``), and
the GenEval-style scorer (``difflab.metrics.geneval``) reads objects back out of images with
the same vocabulary, thresholds and relation test defined here, so that "a red circle to the
left of a blue square" means one thing everywhere.

Geometry is in pixels of a 32x32 image (x right, y down, pixel i covers [i, i + 1)); other
image sizes scale it. Objects never overlap: their bounding boxes keep a gap of GAP_PX.

Held-out compositions (the test of compositional generalisation, as in GenEval, Ghosh et al.
2023, and the CLEVR-CoGenT split, Johnson et al. 2017): some colour-shape pairs, some
(shape, count) pairs and some (shape pair, axis) relations never occur in a training scene,
only in test prompts. :func:`held_out_in_scene` is the one definition of "occurs".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 32  # side of the images the geometry is written for
SHAPES = ("circle", "square", "triangle")
# Six colours far apart in RGB (every pair >= 100 apart, a test checks) and in hue, so
# that both a nearest-colour rule and a human name them without doubt.
COLOURS = {
    "red": (235, 30, 30),
    "orange": (255, 130, 0),
    "yellow": (240, 240, 20),
    "green": (30, 230, 60),
    "blue": (40, 80, 255),
    "purple": (170, 40, 230),
}
COLOUR_NAMES = tuple(COLOURS)
PALETTE = np.array(list(COLOURS.values()), dtype=np.uint8)  # (6, 3)
SIZES = ("small", "large")
SIZE_PX = {"small": 8.0, "large": 12.0}  # extent: diameter, side, or triangle base = height
MAX_OBJECTS = 4
GAP_PX = 2.0  # least gap between two objects' bounding boxes
BORDER_PX = 1.0  # least gap between an object and the image's edge

RELATIONS = ("left of", "right of", "above", "below")
AXIS = {"left of": "horizontal", "right of": "horizontal", "above": "vertical", "below": "vertical"}
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
# Where in the picture one phrase's objects stand ("a red circle on the left"): a half of the
# image along one axis, the image's own frame of reference rather than another object's.
PLACES = ("left", "right", "top", "bottom")
PLACE_AXIS = {"left": "horizontal", "right": "horizontal", "top": "vertical", "bottom": "vertical"}
OPPOSITE_PLACE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
# A relation holds when the centres are apart along its axis by more than this fraction of
# the two objects' summed extents (GenEval's relative-position rule, with its 0.1 raised to
# 0.2 because our objects are a few pixels wide and a one-pixel wobble must not decide).
POSITION_THRESHOLD = 0.2

# The held-out split (documented in docs/shapes.md). Each colour and each shape loses one
# pairing, so every word is still seen in training, only not in this combination.
HELD_OUT_COLOUR_SHAPES = frozenset(
    {("green", "circle"), ("purple", "square"), ("orange", "triangle")}
)
# (shape, n): no training scene holds exactly n objects of the shape, nor a group of n of
# them in one colour (which "three red circles and a blue circle" would still put in words).
HELD_OUT_COUNTS = frozenset({("circle", 3), ("square", 4), ("triangle", 2)})
# (shapes, axis): in no training scene is one of the two shapes clearly beside (horizontal)
# or above (vertical) the other by the relation test; the pair only ever meets along the
# other axis.
HELD_OUT_RELATIONS = frozenset(
    {
        (frozenset({"circle", "square"}), "horizontal"),
        (frozenset({"square", "triangle"}), "vertical"),
    }
)


@dataclass(frozen=True)
class ShapeObject:
    """One object: shape, colour and size names, and its centre in 32x32 pixels."""

    shape: str
    colour: str
    size: str
    x: float
    y: float

    def __post_init__(self) -> None:
        for value, allowed, what in (
            (self.shape, SHAPES, "shape"),
            (self.colour, COLOUR_NAMES, "colour"),
            (self.size, SIZES, "size"),
        ):
            if value not in allowed:
                raise ValueError(f"{what} {value!r}: allowed {', '.join(allowed)}")

    @property
    def extent(self) -> float:
        return SIZE_PX[self.size]


@dataclass(frozen=True)
class Scene:
    """The objects of one image (1 to MAX_OBJECTS, no two overlapping)."""

    objects: tuple[ShapeObject, ...]

    def shape_counts(self) -> Counter:
        return Counter(o.shape for o in self.objects)


def relation_holds(
    a: tuple[float, float], b: tuple[float, float], relation: str, extent_a: float, extent_b: float
) -> bool:
    """Whether the object centred at ``a`` is ``relation`` ("left of", ...) the one at ``b``.

    GenEval's rule (Ghosh et al. 2023, its relative-position test): the centres must be
    apart along the relation's axis by more than POSITION_THRESHOLD times the summed
    extents; y grows downwards, so "above" means a smaller y.
    """
    margin = POSITION_THRESHOLD * (extent_a + extent_b)
    dx, dy = b[0] - a[0], b[1] - a[1]
    offset = {"left of": dx, "right of": -dx, "above": dy, "below": -dy}[relation]
    return offset > margin


def clear_relation(
    a: tuple[float, float], b: tuple[float, float], relation: str, extent_a: float, extent_b: float
) -> bool:
    """Stricter than :func:`relation_holds`, for what captions state and reference images
    show: the objects are wholly apart along the axis, and that axis is the main one."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    along = {"left of": dx, "right of": -dx, "above": dy, "below": -dy}[relation]
    across = abs(dy) if AXIS[relation] == "horizontal" else abs(dx)
    return along >= (extent_a + extent_b) / 2 + GAP_PX and along > across


def _beyond_middle(x: float, y: float, place: str) -> float:
    """How far the centre (x, y) lies past the image's middle line towards ``place``."""
    middle = IMAGE_SIZE / 2
    return {"left": middle - x, "right": x - middle, "top": middle - y, "bottom": y - middle}[place]


def place_holds(x: float, y: float, place: str, extent: float) -> bool:
    """Whether an object centred at (x, y) stands at ``place`` ("left", ...) of the image.

    The relation rule of :func:`relation_holds` with the image's middle line as the other
    object, of no extent: the centre is past it by more than POSITION_THRESHOLD times twice
    the object's extent (3.2 px for a small object, 4.8 for a large one)."""
    return _beyond_middle(x, y, place) > 2 * POSITION_THRESHOLD * extent


def clear_place(x: float, y: float, place: str, extent: float) -> bool:
    """Stricter than :func:`place_holds`, for what captions state: the object lies wholly in
    that half of the image, a pixel clear of the middle line."""
    return _beyond_middle(x, y, place) >= extent / 2 + 1.0


def held_out_in_scene(scene: Scene) -> list[str]:
    """The held-out compositions that ``scene`` contains, in words (empty: a training scene
    may look like this)."""
    found = [
        f"a {o.colour} {o.shape}"
        for o in scene.objects
        if (o.colour, o.shape) in HELD_OUT_COLOUR_SHAPES
    ]
    totals = scene.shape_counts()
    groups = Counter((o.colour, o.shape) for o in scene.objects)
    for shape, n in sorted(HELD_OUT_COUNTS):
        if totals[shape] == n or any(k == n for (_, s), k in groups.items() if s == shape):
            found.append(f"{n} {shape}s")
    for i, a in enumerate(scene.objects):
        for b in scene.objects[i + 1 :]:
            for relation in ("left of", "above"):
                key = (frozenset({a.shape, b.shape}), AXIS[relation])
                if key in HELD_OUT_RELATIONS and (
                    relation_holds((a.x, a.y), (b.x, b.y), relation, a.extent, b.extent)
                    or relation_holds((b.x, b.y), (a.x, a.y), relation, b.extent, a.extent)
                ):
                    found.append(f"{a.shape} and {b.shape} {AXIS[relation]}ly apart")
    return found


# ---------------------------------------------------------------------------------------------
# Many scenes as arrays, for vectorised layout and rendering


@dataclass
class SceneBatch:
    """N scenes as arrays: per object slot the shape, colour and size index (-1: no object)
    and the centre. Rendering and layout work on these; :meth:`scene` gives one Scene."""

    shape: np.ndarray  # (N, MAX_OBJECTS) int8 index into SHAPES, -1 for an empty slot
    colour: np.ndarray  # (N, MAX_OBJECTS) int8 index into COLOUR_NAMES
    size: np.ndarray  # (N, MAX_OBJECTS) int8 index into SIZES
    xy: np.ndarray  # (N, MAX_OBJECTS, 2) float32 centres in 32x32 pixels

    def __len__(self) -> int:
        return len(self.shape)

    @property
    def present(self) -> np.ndarray:
        return self.shape >= 0

    @property
    def extent(self) -> np.ndarray:
        """(N, MAX_OBJECTS) extents in pixels (0 for empty slots)."""
        px = np.array([SIZE_PX[s] for s in SIZES], dtype=np.float32)
        return np.where(self.present, px[np.maximum(self.size, 0)], 0.0).astype(np.float32)

    def scene(self, i: int) -> Scene:
        return Scene(
            tuple(
                ShapeObject(
                    SHAPES[self.shape[i, k]],
                    COLOUR_NAMES[self.colour[i, k]],
                    SIZES[self.size[i, k]],
                    float(self.xy[i, k, 0]),
                    float(self.xy[i, k, 1]),
                )
                for k in range(MAX_OBJECTS)
                if self.shape[i, k] >= 0
            )
        )

    def scenes(self) -> list[Scene]:
        return [self.scene(i) for i in range(len(self))]

    @classmethod
    def empty(cls, n: int) -> SceneBatch:
        full = np.full((n, MAX_OBJECTS), -1, dtype=np.int8)
        return cls(full, full.copy(), full.copy(), np.zeros((n, MAX_OBJECTS, 2), np.float32))

    @classmethod
    def from_scenes(cls, scenes: Sequence[Scene]) -> SceneBatch:
        batch = cls.empty(len(scenes))
        for i, scene in enumerate(scenes):
            if not 1 <= len(scene.objects) <= MAX_OBJECTS:
                raise ValueError(
                    f"scene {i} has {len(scene.objects)} objects: allowed 1..{MAX_OBJECTS}"
                )
            for k, o in enumerate(scene.objects):
                batch.shape[i, k] = SHAPES.index(o.shape)
                batch.colour[i, k] = COLOUR_NAMES.index(o.colour)
                batch.size[i, k] = SIZES.index(o.size)
                batch.xy[i, k] = (o.x, o.y)
        return batch

    def take(self, index: np.ndarray | slice) -> SceneBatch:
        return SceneBatch(self.shape[index], self.colour[index], self.size[index], self.xy[index])

    def put(self, index: np.ndarray, other: SceneBatch) -> None:
        """Overwrite the scenes at ``index`` with ``other``'s, in order."""
        self.shape[index], self.colour[index] = other.shape, other.colour
        self.size[index], self.xy[index] = other.size, other.xy


# ---------------------------------------------------------------------------------------------
# Rendering


def _signed_distance(shape: int, dx: np.ndarray, dy: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Signed distance (pixels, negative inside) from offsets (dx, dy) to a shape of half
    extent ``half`` centred at 0. Exact inside each shape; outside a polygon the largest
    edge distance, which is exact except near corners (where antialiasing hardly cares)."""
    if SHAPES[shape] == "circle":
        return np.hypot(dx, dy) - half
    if SHAPES[shape] == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - half
    # Triangle pointing up: apex (0, -half), base corners (+-half, +half). Its slanted sides
    # have outward normals (+-2, -1) / sqrt(5).
    sides = (2 * np.abs(dx) - dy - half) / np.sqrt(5.0)
    return np.maximum(dy - half, sides)


def render(scenes: SceneBatch | Sequence[Scene], image_size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 RGB images (N, 3, image_size, image_size) of the scenes on black.

    Each object's coverage of a pixel is clip(0.5 - d, 0, 1), d the signed distance in output
    pixels from the pixel's centre to the shape's edge: a one-pixel antialiasing ramp, so an
    edge pixel is the object's colour scaled towards black, and the colour's hue survives.
    Vectorised over scenes, one pass per object slot and shape, each object drawn in a
    window just larger than the largest object (objects never overlap, so windows add).
    """
    batch = scenes if isinstance(scenes, SceneBatch) else SceneBatch.from_scenes(scenes)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
        raise ValueError(f"image_size must be an integer >= 16, got {image_size!r}")
    n, s = len(batch), image_size
    scale = IMAGE_SIZE / s  # 32x32 pixels per output pixel
    window = min(s, int(np.ceil((max(SIZE_PX.values()) + 2) / scale)) + 2)
    steps = np.arange(window)
    out = np.zeros((n * s * s, 3), dtype=np.uint8)  # pixels of all images, flat
    half_all = batch.extent / 2
    palette = PALETTE.astype(np.float32)
    for k in range(MAX_OBJECTS):
        for shape in range(len(SHAPES)):
            idx = np.nonzero(batch.shape[:, k] == shape)[0]
            if len(idx) == 0:
                continue
            xy, half = batch.xy[idx, k], half_all[idx, k, None, None]
            # Top-left output pixel of each object's window, the window kept in the image.
            origin = np.clip(np.floor(xy / scale - window / 2).astype(np.int64) + 1, 0, s - window)
            px = (origin[:, 0, None] + steps + 0.5) * scale  # (m, window) centres, 32x32 units
            py = (origin[:, 1, None] + steps + 0.5) * scale
            dx = px[:, None, :] - xy[:, 0, None, None]
            dy = py[:, :, None] - xy[:, 1, None, None]
            alpha = np.clip(0.5 - _signed_distance(shape, dx, dy, half) / scale, 0.0, 1.0)
            colour = palette[batch.colour[idx, k]]  # (m, 3)
            row = (idx * s + origin[:, 1])[:, None, None] + steps[None, :, None]
            flat = (row * s + origin[:, 0, None, None] + steps[None, None, :]).reshape(-1)
            # One slot's windows are in different images, so no pixel repeats in `flat`;
            # where two objects' windows overlap one of them is 0 there (the gap), so uint8
            # sums never overflow.
            value = np.rint(alpha[..., None] * colour[:, None, None, :]).astype(np.uint8)
            out[flat] += value.reshape(-1, 3)
    return np.ascontiguousarray(out.reshape(n, s, s, 3).transpose(0, 3, 1, 2))


# ---------------------------------------------------------------------------------------------
# Layout


def layout_valid(batch: SceneBatch) -> np.ndarray:
    """(N,) bool: every object inside the image by BORDER_PX and no two objects' bounding
    boxes closer than GAP_PX."""
    present, ext, xy = batch.present, batch.extent, batch.xy
    lo = ext / 2 + BORDER_PX
    inside = (xy[..., 0] >= lo) & (xy[..., 0] <= IMAGE_SIZE - lo)
    inside &= (xy[..., 1] >= lo) & (xy[..., 1] <= IMAGE_SIZE - lo)
    ok = np.all(inside | ~present, axis=1)
    for i in range(MAX_OBJECTS):
        for j in range(i + 1, MAX_OBJECTS):
            both = present[:, i] & present[:, j]
            reach = (ext[:, i] + ext[:, j]) / 2 + GAP_PX
            apart = (np.abs(xy[:, i, 0] - xy[:, j, 0]) >= reach) | (
                np.abs(xy[:, i, 1] - xy[:, j, 1]) >= reach
            )
            ok &= apart | ~both
    return ok


PairCheck = Callable[[np.ndarray, int, int, np.ndarray, np.ndarray], np.ndarray]


def place_objects(
    batch: SceneBatch,
    rng: np.random.Generator,
    pair_ok: PairCheck | None = None,
    candidates: int = 64,
) -> np.ndarray:
    """Draw every object's centre, slot by slot, all scenes at once; returns (N,) bool, the
    scenes where every object found a place (the others keep partial positions: redraw them).

    Each object gets ``candidates`` uniform centres inside the image (by BORDER_PX) and takes
    the first that keeps GAP_PX from the objects already placed and passes ``pair_ok(rows,
    j, k, xy_j (m, 2), candidates (m, C, 2)) -> (m, C) bool`` against each earlier slot j: a
    held-out relation to avoid, a relation to show. Sequential placement with many
    candidates finds the tight layouts (four large objects) that drawing all centres at once
    and rejecting almost never hits.
    """
    ext, present = batch.extent, batch.present
    ok = np.ones(len(batch), dtype=bool)
    for k in range(MAX_OBJECTS):
        rows = np.nonzero(present[:, k])[0]
        if len(rows) == 0:
            continue
        lo = (ext[rows, k] / 2 + BORDER_PX)[:, None, None]
        cand = lo + rng.random((len(rows), candidates, 2), dtype=np.float32) * (IMAGE_SIZE - 2 * lo)
        valid = np.ones(cand.shape[:2], dtype=bool)
        for j in range(k):
            xy_j = batch.xy[rows, j]
            reach = ((ext[rows, k] + ext[rows, j]) / 2 + GAP_PX)[:, None]
            d = np.abs(cand - xy_j[:, None, :])
            fits = (d[..., 0] >= reach) | (d[..., 1] >= reach)
            if pair_ok is not None:
                fits &= pair_ok(rows, j, k, xy_j, cand)
            valid &= fits | ~present[rows, j, None]
        batch.xy[rows, k] = cand[np.arange(len(rows)), valid.argmax(axis=1)]
        ok[rows[~valid.any(axis=1)]] = False
    return ok


def avoid_held_out_relations(batch: SceneBatch) -> PairCheck:
    """A ``pair_ok`` for :func:`place_objects`: two objects whose shapes form a held-out pair
    stay within the relation margin of each other along the held-out axis."""
    held = {}
    for shapes, axis in HELD_OUT_RELATIONS:
        a, b = (SHAPES.index(s) for s in sorted(shapes))
        held[(a, b)] = held[(b, a)] = 0 if axis == "horizontal" else 1

    def pair_ok(rows, j, k, xy_j, cand):
        ok = np.ones(cand.shape[:2], dtype=bool)
        sj, sk = batch.shape[rows, j], batch.shape[rows, k]
        margin = (POSITION_THRESHOLD * (batch.extent[rows, j] + batch.extent[rows, k]))[:, None]
        for (a, b), axis in held.items():
            pair = ((sj == a) & (sk == b))[:, None]
            ok &= ~pair | (np.abs(cand[..., axis] - xy_j[:, None, axis]) <= margin)
        return ok

    return pair_ok
