"""Pictures people look at: image grids, GIFs of the reverse process, forward-process plots,
noise-schedule plots, loss curves and 2-D toy scatter plots.

One rule runs through the file: samples are shown as they are. Model space [-1, 1] maps to
pixels [0, 255] by one fixed affine map (`to_uint8`); nothing is rescaled per image or per
batch, so a model whose samples drift to all-white or all-black looks like it on screen
(the Fashion-MNIST article's per-image min-max display hid exactly that). Likewise the
matplotlib figures pin the grey colour map to vmin=0, vmax=255: `imshow` would otherwise
min-max normalise a single-channel image behind our back.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, so no global
backend switch and no shared state between threads of the web app); images are written with
PIL. matplotlib is imported only when a figure is drawn. Every file is written to a temporary
name in the target folder and renamed into place, so a reader (the web app) never sees a
half-written PNG or GIF. Every picture carries difflab's mark (difflab.ownership), so that a later
run or command replaces only its own pictures, never a user's file of the same name.

Pictures say what they show: grids and GIF frames take row labels (classes, prompts), a title
(model, sampler, steps, seed) and, on GIF frames, the step and t, all written with PIL on a
white margin added around the grid (`label_image`), so no sample pixel is ever covered.
"""

from __future__ import annotations

import functools
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from difflab.data.transforms import to_uint8
from difflab.diffusion import schedules
from difflab.diffusion.process import DiscreteProcess, NoiseProcess
from difflab.ownership import MARK, png_mark

Tensor = torch.Tensor
PathLike = str | os.PathLike


# ----------------------------------------------------------------------------- pixels



def _as_image_batch(images: Tensor | np.ndarray) -> Tensor:
    """(N, C, H, W) uint8 on the CPU, from a uint8 or [-1, 1] float batch (or one (C, H, W))."""
    images = torch.as_tensor(images)
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4:
        raise ValueError(
            f"images must be shaped (N, C, H, W) or (C, H, W), got {tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        raise ValueError("images is an empty batch; nothing to draw")
    return to_uint8(images).cpu()


def make_grid(
    images: Tensor | np.ndarray, nrow: int = 8, padding: int = 2, pad_value: int = 255
) -> np.ndarray:
    """Tile a batch into one image: (N, C, H, W) -> uint8 array (H', W', C).

    `images` is uint8 pixels or floats in [-1, 1] (shown through `to_uint8`). `nrow` is the
    number of images per row (torchvision's meaning); the last row is left padded if N is not
    a multiple of it. `padding` pixels of `pad_value` (a uint8 grey level, white by default so
    cells stay apart on Fashion-MNIST's black backgrounds) surround every cell, so
    H' = rows (H + padding) + padding and W' = min(N, nrow) (W + padding) + padding.
    """
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if not 0 <= pad_value <= 255:
        raise ValueError(f"pad_value is a uint8 grey level in [0, 255], got {pad_value}")
    batch = _as_image_batch(images).numpy()
    n, c, h, w = batch.shape
    ncol, nrows = min(n, nrow), math.ceil(n / nrow)
    grid = np.full(
        (nrows * (h + padding) + padding, ncol * (w + padding) + padding, c),
        pad_value,
        dtype=np.uint8,
    )
    for k in range(n):
        r, q = divmod(k, nrow)
        y, x = padding + r * (h + padding), padding + q * (w + padding)
        grid[y : y + h, x : x + w] = batch[k].transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    return grid


def _to_pil(grid: np.ndarray, scale: int = 1) -> Image.Image:
    """uint8 (H, W, C) -> PIL image: grey stays grey (mode L), 3 channels are RGB."""
    if not isinstance(scale, int | np.integer) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    c = grid.shape[2]
    if c == 1:
        img = Image.fromarray(np.ascontiguousarray(grid[:, :, 0]), mode="L")
    elif c == 3:
        img = Image.fromarray(np.ascontiguousarray(grid), mode="RGB")
    else:
        raise ValueError(f"can only save 1 (grey) or 3 (RGB) channel images, got {c} channels")
    if scale > 1:  # nearest neighbour keeps pixels crisp and values exact
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return img


def _write_atomic(path: PathLike, write: Callable[[str], None]) -> Path:
    """Call write(tmp_path), then rename tmp_path onto path (same folder, so rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def save_grid(
    images: Tensor | np.ndarray,
    path: PathLike,
    nrow: int = 8,
    scale: int = 1,
    padding: int = 2,
    pad_value: int = 255,
    *,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG grid of `images` (see `make_grid`); grey as mode L, 3 channels as RGB.

    `scale` is an integer nearest-neighbour upscale, so a grid of 28x28 digits can be seen
    without a viewer blurring it. `row_labels` (one per grid row: class names, prompts) and
    `title` are written on a white margin left of and above the grid (`label_image`); without
    them the file is the bare grid. Returns the path written.
    """
    img = grid_image(
        images, nrow, scale, padding, pad_value, row_labels=row_labels, title=title
    )
    return save_png(img, path)


def save_png(picture: Image.Image, path: PathLike) -> Path:
    """Write a picture as a PNG, atomically, marked as difflab's (difflab.ownership): what
    difflab wrote it may replace later, and nothing else."""
    return _write_atomic(path, lambda tmp: picture.save(tmp, format="PNG", pnginfo=png_mark()))


def grid_image(
    images: Tensor | np.ndarray,
    nrow: int = 8,
    scale: int = 1,
    padding: int = 2,
    pad_value: int = 255,
    *,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    header: str | None = None,
) -> Image.Image:
    """The PIL image `save_grid` writes: the grid, upscaled, with its labels if any."""
    batch = _as_image_batch(images)
    img = _to_pil(make_grid(batch, nrow, padding, pad_value), scale)
    if row_labels is None and title is None and header is None:
        return img
    spans = _row_spans(len(batch), nrow, batch.shape[2], padding, scale)
    return label_image(img, spans, row_labels=row_labels, title=title, header=header)


def sampling_title(
    model: str,
    sampler: str,
    steps: int,
    seed: int,
    guidance: float | None = None,
    *,
    asked: str | None = None,
    step: int | None = None,
    autoguidance: float | None = None,
    interval: tuple[float, float] | None = None,
    sigma_max: float | None = None,
    rho: float | None = None,
    relation_guidance: float | None = None,
    binding_guidance: float | None = None,
    relation_regions: bool = False,
    negative: str | None = None,
) -> str:
    """A grid's title: "fashion-mnist-cond · Bag · dpmpp_2m, 20 steps, guidance 2, seed 0"
    (`asked`: the class or prompt every sample shares; `step`: a training run's step;
    `interval`: the noise levels (low, high] the guidance applies at, when not every step;
    `sigma_max`, `rho`: the Karras grid, when not the sampler's own; `relation_guidance`,
    `binding_guidance`: their scales, when on; `relation_regions`: whether on; `negative`:
    the negative prompt every sample shares, quoted)."""
    parts = [str(model)]
    if step is not None:
        parts.append(f"step {step:,}")
    if asked is not None:
        parts.append(asked)
    how = (f"{sampler}, {steps} step{'s' if steps != 1 else ''}"
           + schedules.describe_karras_grid(sigma_max, rho))
    if guidance is not None:
        how += f", guidance {guidance:g}"
    if negative is not None:
        how += f" away from {negative}"
    if autoguidance is not None:
        how += f", autoguidance {autoguidance:g}"
    if interval is not None:  # callers pass it only for a guided draw
        how += f" at noise levels {interval[0]:g} to {interval[1]:g}"
    if relation_guidance:
        how += f", relation guidance {relation_guidance:g}"
    if binding_guidance:
        how += f", binding guidance {binding_guidance:g}"
    if relation_regions:
        how += ", relation regions"
    parts.append(f"{how}, seed {seed}")
    return " · ".join(parts)


# ----------------------------------------------------------------------------- labels
#
# Labels go on a white margin added left of (row labels) and above (title, a GIF frame's
# step) the grid, never on the images: the grid is pasted unchanged at the bottom right, so a
# labelled picture still shows every sample exactly as `to_uint8` maps it.

LABEL_GAP = 6  # pixels between a label and the grid or the picture's edge
MAX_ROW_LABEL_PX = 240  # longer row labels (prompts) are cut with an ellipsis
# A title over a grid narrower than this gets this width (a wider left margin): over one 28x28
# sample at scale 2 it would otherwise wrap to a line per word, taller than the picture.
MIN_TITLE_PX = 320


@functools.lru_cache(maxsize=8)
def label_font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans at `size` pixels: matplotlib ships it, so it is there wherever difflab
    runs; else the system's copy, else PIL's own default font."""
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    candidates = [Path("/usr/share/fonts/truetype/dejavu") / name]
    try:
        import matplotlib

        candidates.insert(0, Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name)
    except ImportError:
        pass
    for font in candidates:
        if font.is_file():
            return ImageFont.truetype(str(font), size)
    return ImageFont.load_default(size)


def _font_size(row_px: int) -> int:
    """About a quarter of a grid row: readable (>= 11 px) and never louder than the images."""
    return max(11, min(16, row_px // 4))


def _text_width(text: str, font) -> int:
    return math.ceil(font.getlength(text))


def _cut(text: str, font, width: int) -> str:
    """`text`, or as much of it as fits in `width` pixels followed by an ellipsis."""
    if _text_width(text, font) <= width:
        return text
    while text and _text_width(text + "…", font) > width:
        text = text[:-1]
    return text.rstrip() + "…"


def _wrap(text: str, font, width: int) -> list[str]:
    """Break `text` at spaces into lines of at most `width` pixels (a word too long on its own
    is cut), so that a title fits a narrow grid instead of widening the picture."""
    lines: list[str] = []
    for word in text.split():
        if lines and _text_width(f"{lines[-1]} {word}", font) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(_cut(word, font, width))
    return lines


def _row_spans(
    n: int, nrow: int, cell_h: int, padding: int, scale: int
) -> list[tuple[int, int]]:
    """The (top, bottom) pixel rows of each row of a `make_grid` grid upscaled by `scale`."""
    tops = [padding + r * (cell_h + padding) for r in range(math.ceil(n / nrow))]
    return [(top * scale, (top + cell_h) * scale) for top in tops]


def label_image(
    img: Image.Image,
    row_spans: Sequence[tuple[int, int]],
    *,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    header: str | None = None,
) -> Image.Image:
    """`img` on a larger white canvas: `row_labels` left of the grid rows (`row_spans`, the
    (top, bottom) pixel rows of each), `title` (wrapped to the width) and `header` (one line,
    e.g. a GIF frame's step and t) above. `img` is pasted unchanged at the bottom right, so
    the margins are (canvas width - img width) on the left and the difference in height on top.
    """
    row_px = max((bottom - top for top, bottom in row_spans), default=img.height)
    font = label_font(_font_size(row_px))
    bold = label_font(_font_size(row_px), bold=True)  # the header, apart from the title
    line_h = math.ceil(sum(font.getmetrics()) * 1.15)
    left = 0
    if row_labels is not None:
        if len(row_labels) != len(row_spans):
            raise ValueError(
                f"got {len(row_labels)} row labels for a grid of {len(row_spans)} rows"
            )
        widest = max((_text_width(str(s), font) for s in row_labels), default=0)
        left = min(widest, MAX_ROW_LABEL_PX) + 2 * LABEL_GAP
    if title and left + img.width < MIN_TITLE_PX:
        left = MIN_TITLE_PX - img.width
    width = left + img.width
    lines = _wrap(title, font, width - 2 * LABEL_GAP) if title else []
    if header is not None:
        lines.append(_cut(header, bold, width - 2 * LABEL_GAP))
    top = len(lines) * line_h + 2 * LABEL_GAP if lines else 0
    canvas = Image.new(img.mode, (width, top + img.height), "white")
    canvas.paste(img, (left, top))
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        is_header = header is not None and k == len(lines) - 1
        face = bold if is_header else font
        draw.text((LABEL_GAP, LABEL_GAP + k * line_h), line, fill="black", font=face)
    for label, (y0, y1) in zip(row_labels or [], row_spans, strict=False):
        text = _cut(str(label), font, left - 2 * LABEL_GAP)
        box = draw.textbbox((0, 0), text, font=font)
        y = top + (y0 + y1) // 2 - (box[1] + box[3]) // 2  # the text's middle on the row's
        draw.text((LABEL_GAP, y), text, fill="black", font=font)
    return canvas


# ----------------------------------------------------------------------------- reverse-process GIFs


def select_frames(n_total: int, n_frames: int = 60, power: float = 2.0) -> list[int]:
    """Pick at most `n_frames` of `n_total` frame indices, denser near the end.

    A reverse process spends most of its steps on noise; the image forms in the last ones,
    so index i of k is placed at (n_total - 1) (1 - (1 - i / (k - 1))^power) and collisions
    are pushed apart. The result is sorted, unique, starts at 0 (the pure noise), always ends
    at n_total - 1 (the final sample), and has exactly min(n_total, n_frames) entries.
    """
    if n_total < 1:
        raise ValueError(f"n_total must be >= 1, got {n_total}")
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if power <= 0:
        raise ValueError(f"power must be > 0, got {power}")
    if n_total <= n_frames:
        return list(range(n_total))
    if n_frames == 1:
        return [n_total - 1]
    u = np.linspace(0.0, 1.0, n_frames)
    idx = np.round((n_total - 1) * (1.0 - (1.0 - u) ** power)).astype(int)
    for i in range(1, n_frames):  # forward pass: strictly increasing
        idx[i] = max(idx[i], idx[i - 1] + 1)
    idx[-1] = n_total - 1
    for i in range(n_frames - 2, -1, -1):  # backward pass: stay below the next index
        idx[i] = min(idx[i], idx[i + 1] - 1)
    return [int(i) for i in idx]


def save_gif(
    frames: Sequence[Tensor],
    path: PathLike,
    nrow: int = 8,
    duration_ms: int = 50,
    hold_last_ms: int = 1500,
    scale: int = 1,
    max_frames: int | None = None,
    padding: int = 2,
    pad_value: int = 255,
    loop: int = 0,
    *,
    frame_labels: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Write a GIF of the reverse process: one grid per frame, the last held `hold_last_ms`.

    `frames` is a list of (N, C, H, W) batches (uint8 or [-1, 1] floats, e.g. from
    `FrameRecorder`), earliest (noise) first. With `max_frames`, a longer list is thinned by
    `select_frames` (denser near the end). GIF stores durations in 10 ms units and browsers
    slow down frames shorter than 20 ms, so durations must be >= 20 ms. Intermediate x_t
    have values outside [-1, 1]; they are clamped like everything else, not rescaled.
    Note that GIF writers merge consecutive identical frames into one longer frame.

    `frame_labels` (one per frame, e.g. `FrameRecorder.labels`: the step and t) are written
    above each frame, `row_labels` and `title` as in `save_grid`, all on a margin.
    """
    if len(frames) == 0:
        raise ValueError("frames is empty; nothing to animate")
    if duration_ms < 20 or hold_last_ms < 20:
        raise ValueError(
            f"GIF frame durations must be >= 20 ms (browsers slow shorter ones to 100 ms), "
            f"got duration_ms={duration_ms}, hold_last_ms={hold_last_ms}"
        )
    if frame_labels is not None and len(frame_labels) != len(frames):
        raise ValueError(f"got {len(frame_labels)} frame labels for {len(frames)} frames")
    if max_frames is not None:
        keep = select_frames(len(frames), max_frames)
        frames = [frames[i] for i in keep]
        frame_labels = [frame_labels[i] for i in keep] if frame_labels is not None else None
    headers = frame_labels if frame_labels is not None else [None] * len(frames)
    images = [
        grid_image(f, nrow, scale, padding, pad_value, row_labels=row_labels, title=title,
                   header=h)
        for f, h in zip(frames, headers, strict=True)
    ]
    if len({im.size for im in images}) != 1:
        raise ValueError("all frames must have the same batch size and image shape")
    durations = [int(duration_ms)] * (len(images) - 1) + [int(hold_last_ms)]

    def write(tmp: str) -> None:
        images[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=durations,
            loop=loop,
            optimize=False,
            comment=MARK,
        )

    return _write_atomic(path, write)


def step_label(info: Mapping[str, Any], key: str = "x") -> str:
    """What a sampler callback's frame shows: "step 3/20, t = 812" (x_t), with
    ", predicted x0" for the denoised prediction; an adaptive solver, which does not know its
    step count, gives "evaluation 7, t = 0.41"."""
    t = info.get("t")
    when = "" if t is None else f", t = {float(t):.4g}"
    what = ", predicted x0" if key == "denoised" else ""
    if info.get("total"):
        return f"step {int(info['i']) + 1}/{int(info['total'])}{when}{what}"
    return f"evaluation {int(info.get('nfe', int(info.get('i', 0)) + 1))}{when}{what}"


class FrameRecorder:
    """A sampler callback that keeps every `every`-th x (or `key`) as uint8, for `save_gif`.

    Storing uint8 pixels instead of float tensors takes a quarter of the memory, which matters
    for 1,000-step DDPM runs. `finish()` returns the frames with the final step appended when
    `every` skipped it; `labels` holds each kept frame's step and t (`step_label`):

        rec = FrameRecorder(every=10)
        x = sample_ddpm(denoiser, x, timesteps, callback=rec)
        save_gif(rec.finish(), "reverse.gif", max_frames=60, frame_labels=rec.labels)
    """

    def __init__(
        self,
        every: int = 1,
        key: str = "x",
        decode: Callable[[Tensor], Tensor] | None = None,
    ):
        """decode: maps the recorded tensor to uint8 pixels (e.g. a latent model's decoder);
        default: the fixed [-1, 1] -> [0, 255] map."""
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every, self.key = every, key
        self.decode = decode or to_uint8
        self.frames: list[Tensor] = []
        self.labels: list[str] = []
        self._calls = 0
        self._last: tuple[Tensor, str] | None = None

    def __call__(self, info: Mapping[str, Any]) -> None:
        frame = self.decode(info[self.key]).cpu()
        label = step_label(info, self.key)
        if self._calls % self.every == 0:
            self.frames.append(frame)
            self.labels.append(label)
            self._last = None
        else:
            self._last = (frame, label)
        self._calls += 1

    def finish(self) -> list[Tensor]:
        """The recorded frames, with the very last step appended if `every` skipped it."""
        if self._last is not None:
            self.frames.append(self._last[0])
            self.labels.append(self._last[1])
            self._last = None
        return self.frames


# ----------------------------------------------------------------------------- figures


def _new_figure(width: float, height: float):
    """A matplotlib Figure drawn by the Agg canvas, independent of pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig, path: PathLike) -> Path:
    return _write_atomic(path, lambda tmp: fig.savefig(
        tmp, format="png", dpi=fig.dpi, metadata={"Software": MARK}))


def _imshow(ax, img: np.ndarray) -> None:
    """Show a uint8 (H, W, C) image as is: grey pinned to [0, 255], never min-max normalised."""
    if img.shape[2] == 1:
        ax.imshow(img[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(img, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def forward_process_grid(
    process: NoiseProcess,
    images: Tensor,
    path: PathLike,
    fractions: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    generator: torch.Generator | None = None,
    decode: Callable[[Tensor], Tensor] | None = None,
) -> Path:
    """Plot q(x_t | x_0): one row per image, one column per fraction of the process's time.

    ``images`` are x_0 in the space the process runs in. For a latent model that is the
    autoencoder's latents: pass them with ``decode`` (latents -> pixels in [-1, 1]) and each
    column shows the decoded x_t, what the noise does to the picture the model sees.

    Discrete processes: fraction f is step t = round(f (T - 1)), so 100 % is t = T - 1.
    Continuous processes: t = t_min + f (t_max - t_min). Fraction 0 is always the clean
    image x_0 itself. Each image uses one noise draw eps for all its columns, so a row shows
    x_t = alpha(t) x_0 + sigma(t) eps fading along one path. Columns are labelled with the
    percentage, t, alpha(t) and sigma(t). Values are shown through `to_uint8` (clamped, not
    rescaled), which for a VE process saturates the noisy columns: that is what x_t is.
    """
    fractions = [float(f) for f in fractions]
    if not fractions:
        raise ValueError("fractions is empty; give at least one fraction of T in [0, 1]")
    bad = [f for f in fractions if not 0.0 <= f <= 1.0]
    if bad:
        raise ValueError(f"fractions must lie in [0, 1], got {bad}")
    x0 = torch.as_tensor(images)
    if x0.ndim != 4:
        raise ValueError(f"images must be shaped (N, C, H, W), got {tuple(x0.shape)}")
    x0 = x0.detach().to(torch.float32).cpu()
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    n = x0.shape[0]

    columns, titles = [], []
    for f in fractions:
        if process.discrete:
            t = float(round(f * (process.T - 1)))
            t_text = f"t = {int(t)}"
        else:
            t = process.t_min + f * (process.t_max - process.t_min)
            t_text = f"t = {t:.3g}"
        if f == 0.0:
            columns.append(x0)
            titles.append("0 %\nx_0 (clean)")
            continue
        columns.append(process.q_sample(x0, torch.tensor(t), noise).to(torch.float32))
        a = float(process.alpha(torch.tensor(t)))
        s = float(process.sigma(torch.tensor(t)))
        titles.append(f"{100 * f:g} %  {t_text}\nα={a:.3f} σ={s:.3f}")

    if decode is not None:
        with torch.no_grad():
            columns = [decode(col).float().cpu() for col in columns]
    cell = 1.7
    fig = _new_figure(cell * len(columns), cell * n + 0.5)
    axes = fig.subplots(n, len(columns), squeeze=False)
    for j, (col, title) in enumerate(zip(columns, titles, strict=True)):
        pixels = to_uint8(col).numpy().transpose(0, 2, 3, 1)  # (N, H, W, C)
        for i in range(n):
            _imshow(axes[i, j], pixels[i])
        axes[0, j].set_title(title, fontsize=8)
    what = "forward process q(x_t | x_0)" + (", on latents, decoded" if decode else "")
    fig.suptitle(what, fontsize=10)
    fig.tight_layout()
    return _save_figure(fig, path)


def plot_schedules(path: PathLike, T: int = 1000, names: Iterable[str] | None = None) -> Path:
    """Plot alpha_bar(t) and log-SNR(t) = log(alpha_bar / (1 - alpha_bar)) of discrete schedules.

    `names` defaults to every schedule in `schedules.BETA_SCHEDULES`; an unknown name raises
    ValueError listing the allowed ones.
    """
    names = list(schedules.BETA_SCHEDULES) if names is None else list(names)
    if not names:
        raise ValueError("names is empty; give at least one schedule name")
    fig = _new_figure(11, 4.2)
    ax_ab, ax_snr = fig.subplots(1, 2)
    steps = torch.arange(T, dtype=torch.float64)
    for name in names:
        process = DiscreteProcess.from_schedule(name, T)
        ax_ab.plot(steps.numpy(), process.alphas_cumprod.numpy(), label=name)
        ax_snr.plot(steps.numpy(), process.log_snr(steps).numpy(), label=name)
    ax_ab.set_xlabel("t (step)")
    ax_ab.set_ylabel("alpha_bar(t)  (signal variance kept)")
    ax_ab.set_title(f"cumulative signal alpha_bar, T = {T}")
    ax_snr.set_xlabel("t (step)")
    ax_snr.set_ylabel("log SNR = log(alpha_bar / (1 - alpha_bar))")
    ax_snr.set_title("log signal-to-noise ratio")
    for ax in (ax_ab, ax_snr):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return _save_figure(fig, path)


# What each number a trainer logs must be: a row where one is something else is damaged.
_METRIC_TYPES: dict[str, tuple[type, ...]] = {
    "step": (int,), "loss": (int, float), "lr": (int, float), "images_per_sec": (int, float),
    "elapsed_sec": (int, float), "fid": (int, float),
}


def _whole_row(row: Any) -> bool:
    return isinstance(row, dict) and all(
        not isinstance(row[k], bool) and isinstance(row[k], types)
        for k, types in _METRIC_TYPES.items() if k in row
    )


def read_metrics(metrics: PathLike | Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows of a metrics.jsonl (or a list of rows, as given). A last line still being
    written is left out; a damaged row elsewhere (not JSON, not an object, a logged number
    that is not one: a disk error, a hand edit) is skipped with one warning that counts them,
    so one bad line does not cost a finished run its report or the web app its Runs tab."""
    if not isinstance(metrics, str | os.PathLike):
        return list(metrics)
    lines = Path(metrics).read_bytes().decode("utf-8", errors="replace").splitlines()
    rows, damaged = [], []
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if _whole_row(row):
            rows.append(row)
        elif k < len(lines) - 1:
            damaged.append(k + 1)
    if damaged:
        where = ", ".join(map(str, damaged[:5])) + (", ..." if len(damaged) > 5 else "")
        warnings.warn(f"{metrics}: skipped {len(damaged)} damaged row(s) (line {where})",
                      stacklevel=2)
    return rows


def _ema(values: np.ndarray, smoothing: float) -> np.ndarray:
    """Bias-corrected exponential moving average (as TensorBoard's smoothing slider)."""
    out, acc = np.empty_like(values), 0.0
    for k, v in enumerate(values):
        acc = smoothing * acc + (1 - smoothing) * v
        out[k] = acc / (1 - smoothing ** (k + 1))
    return out


def plot_loss(
    metrics: PathLike | Sequence[Mapping[str, Any]],
    path: PathLike,
    key: str = "loss",
    smoothing: float | None = None,
) -> Path:
    """Plot `key` against step (see `loss_figure`) and write it as a PNG."""
    return _save_figure(loss_figure(metrics, key, smoothing), path)


# Fewer points than this are drawn with a marker on each: a run's first logged steps (even a
# single one) must show as points, not as an invisible line.
MARKER_POINTS = 30
# A log y-axis only when the values span more than about a decade: on a narrower range it
# only squeezes the curve and hides the ticks.
LOG_SCALE_SPAN = 10.0


def loss_figure(
    metrics: PathLike | Sequence[Mapping[str, Any]],
    key: str = "loss",
    smoothing: float | None = None,
):
    """The matplotlib Figure of `plot_loss`: `key` against step, an EMA-smoothed line over
    many points, lr on a twin axis, the legend below the axes (never over the curve).

    `metrics` is a JSON-lines file (one dict per line, as the trainer writes) or a list of
    dicts. The x-axis is each row's "step" (the row index where absent); rows without `key`
    (e.g. evaluation rows) are skipped. `smoothing` is the EMA factor; by default it spans
    about a fiftieth of the points, so the smoothed line lags little (no smoothing, and no
    second line, below 50 points). Few points get markers, so one logged step is a visible
    point. The y-axis is logarithmic when the positive values span more than LOG_SCALE_SPAN.
    Non-finite values are left out of the lines and counted in the title, never silently.
    """
    from matplotlib.ticker import MaxNLocator

    rows = read_metrics(metrics)
    pts = [(float(r.get("step", k)), float(r[key])) for k, r in enumerate(rows) if key in r]
    if not pts:
        seen = sorted({k for r in rows for k in r})
        raise ValueError(f"no {key!r} values in the metrics; keys seen: {seen}")
    steps, values = np.array(pts).T
    finite = np.isfinite(values)
    steps, values, n_bad = steps[finite], values[finite], int((~finite).sum())
    if smoothing is None:
        smoothing = 1.0 - min(1.0, 50.0 / max(len(values), 1))
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must lie in [0, 1), got {smoothing}")

    fig = _new_figure(8, 4.8)
    ax = fig.subplots()
    lines = []
    if len(values):
        smoothed = smoothing > 0
        lines += ax.plot(
            steps, values, color="tab:blue", alpha=0.3 if smoothed else 1.0,
            lw=0.8 if smoothed else 1.5, label=key, **_markers(len(values)),
        )
        if smoothed:
            lines += ax.plot(
                steps, _ema(values, smoothing), color="tab:blue", lw=1.8,
                label=f"{key} (EMA {smoothing:.3g})",
            )
        if (values > 0).all() and values.max() > LOG_SCALE_SPAN * values.min():
            ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(steps) and steps.max() - steps.min() < 2:  # one step: room either side, whole steps
        ax.set_xlim(steps.min() - 1, steps.max() + 1)
    ax.set_ylabel(key + (" (log scale)" if ax.get_yscale() == "log" else ""))
    ax.grid(alpha=0.3, which="both")
    lr = [(float(r.get("step", k)), float(r["lr"])) for k, r in enumerate(rows) if "lr" in r]
    if lr:
        ax_lr = ax.twinx()
        lr_steps, lr_values = np.array(lr).T
        markers = {"marker": "x", "markersize": 7} if len(lr) < MARKER_POINTS else {}
        lines += ax_lr.plot(lr_steps, lr_values, color="tab:orange", lw=1.2, label="lr", **markers)
        ax_lr.set_ylabel("learning rate")
        # The loss above the lr: a twin axis is drawn last, and would hide a lone loss point.
        ax.set_zorder(ax_lr.get_zorder() + 1)
        ax.patch.set_visible(False)
    # Below the axes, in one row: a legend inside would sit on the curve somewhere.
    fig.legend(
        lines, [ln.get_label() for ln in lines], loc="lower center", ncol=len(lines),
        frameon=False,
    )
    title = f"{key} vs step"
    if len(values):
        title += f": {values[-1]:.4g} at step {steps[-1]:,.0f} ({len(values):,} logged)"
    if n_bad:
        title += f"; {n_bad} non-finite values not drawn"
    ax.set_title(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))  # room for the legend below
    return fig


def _markers(n: int) -> dict[str, Any]:
    return {"marker": "o", "markersize": 4} if n < MARKER_POINTS else {}


def plot_points_2d(
    samples: Tensor | np.ndarray,
    path: PathLike,
    reference: Tensor | np.ndarray | None = None,
    title: str | None = None,
) -> Path:
    """Scatter 2-D samples (N, 2), optionally over reference data drawn in grey.

    With a reference, the view is fixed to the reference's extent plus a margin, so samples
    that diverge do not shrink the picture; how many fall outside the view (and how many are
    non-finite) is written in the legend.
    """
    pts = _points(samples, "samples")
    fig = _new_figure(5.5, 5.5)
    ax = fig.subplots()
    finite = np.isfinite(pts).all(axis=1)
    label = f"samples (n={len(pts)})"
    if reference is not None:
        ref = _points(reference, "reference")
        ref = ref[np.isfinite(ref).all(axis=1)]
        ax.scatter(ref[:, 0], ref[:, 1], s=4, c="0.6", alpha=0.5, label=f"reference (n={len(ref)})")
        lo, hi = ref.min(axis=0), ref.max(axis=0)
        margin = 0.25 * np.maximum(hi - lo, 1e-6)
        lo, hi = lo - margin, hi + margin
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        inside = finite & (pts >= lo).all(axis=1) & (pts <= hi).all(axis=1)
        if (finite & ~inside).any():
            label += f", {int((finite & ~inside).sum())} outside view"
    if (~finite).any():
        label += f", {int((~finite).sum())} non-finite"
    ax.scatter(pts[finite, 0], pts[finite, 1], s=4, c="tab:blue", alpha=0.7, label=label)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("x_1")
    ax.set_ylabel("x_2")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save_figure(fig, path)


def _points(x: Tensor | np.ndarray, what: str) -> np.ndarray:
    arr = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, float)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{what} must be shaped (N, 2), got {tuple(arr.shape)}")
    return arr
