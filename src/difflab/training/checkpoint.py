"""Checkpoints as folders: config.json + model.safetensors (+ ema, optimizer, training state).

Writes are atomic: the folder is written under a temporary name beside the target and renamed
into place, so a crash mid-write leaves the previous checkpoint intact (DESIGN.md,
"Contracts"). Loading never unpickles code: weights come from safetensors and the optimizer
from `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
MODEL_FILE, EMA_FILE, OPTIMIZER_FILE = "model.safetensors", "ema.safetensors", "optimizer.pt"
CONFIG_FILE, STATE_FILE = "config.json", "state.json"
_WRITTEN_BY_SAVE = ("format", "format_version", "components")


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, incomplete or from an incompatible model."""


@dataclass
class Checkpoint:
    path: Path
    config: dict[str, Any]
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None = None
    optimizer: dict[str, Any] | None = None
    state: dict[str, Any] = field(default_factory=dict)
    # Separately built parts saved beside the model (e.g. "autoencoder" of a latent
    # diffusion model), each its own NAME.safetensors, as diffusers keeps one file per part.
    components: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def weights(self, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
        """The weights to sample with: the EMA copy when there is one."""
        return self.ema if (prefer_ema and self.ema is not None) else self.model

    def model_config(self) -> dict[str, Any]:
        """config.json less what `save_checkpoint` writes itself (format, components): what
        to hand `save_checkpoint` to write this model again."""
        return {k: v for k, v in self.config.items() if k not in _WRITTEN_BY_SAVE}


def encode_bytes(t: torch.Tensor) -> str:
    """A uint8 tensor (e.g. an RNG state) as base64 text for state.json."""
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def decode_bytes(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def _prepare(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.contiguous().clone()  # safetensors refuses tensors that share storage
    return out


def save_checkpoint(
    path: str | Path,
    *,
    config: dict[str, Any],
    model: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor] | None = None,
    optimizer: dict[str, Any] | None = None,
    state: dict[str, Any] | None = None,
    components: dict[str, dict[str, torch.Tensor]] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a checkpoint folder atomically. `dtype` (e.g. torch.float16) casts float weights.
    `components` are further weight sets (a frozen autoencoder, ...) written as NAME.safetensors
    and listed in config.json so that loading finds them."""
    components = components or {}
    reserved = {Path(MODEL_FILE).stem, Path(EMA_FILE).stem}
    if reserved & set(components):
        raise ValueError(f"component names {sorted(reserved)} are reserved")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    meta = {"format": "difflab", "format_version": FORMAT_VERSION}
    if components:
        meta["components"] = sorted(components)
    (tmp / CONFIG_FILE).write_text(json.dumps({**config, **meta}, indent=2, default=list))
    save_file(_prepare(model, dtype), str(tmp / MODEL_FILE), metadata=None)
    if ema is not None:
        save_file(_prepare(ema, dtype), str(tmp / EMA_FILE))
    for name, weights in components.items():
        save_file(_prepare(weights, dtype), str(tmp / f"{name}.safetensors"))
    if optimizer is not None:
        torch.save(optimizer, tmp / OPTIMIZER_FILE)
    if state is not None:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    for f in tmp.iterdir():  # make the bytes durable before the rename makes them visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(path: str | Path, *, with_training_state: bool = False) -> Checkpoint:
    """Read a checkpoint folder; optimizer and training state only when asked for."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a folder; a difflab checkpoint is a folder with "
            f"{CONFIG_FILE} and {MODEL_FILE}"
        )
    for name in (CONFIG_FILE, MODEL_FILE):
        if not (path / name).is_file():
            raise CheckpointError(
                f"checkpoint {str(path)!r} has no {name}; it is incomplete or "
                "not a difflab checkpoint"
            )
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / CONFIG_FILE} is not valid JSON: {e}") from e
    if config.get("format") != "difflab":
        raise CheckpointError(
            f"{path} was not written by difflab (no 'format: difflab' in {CONFIG_FILE})"
        )
    try:
        model = load_file(str(path / MODEL_FILE))
        ema = load_file(str(path / EMA_FILE)) if (path / EMA_FILE).is_file() else None
        components = {
            name: load_file(str(path / f"{name}.safetensors"))
            for name in config.get("components", [])
        }
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint {path} is incomplete: {e}") from e
    except Exception as e:  # safetensors raises its own error types on corrupt files
        raise CheckpointError(f"cannot read the weights in {path}: {e}") from e
    ckpt = Checkpoint(path, config, model, ema, components=components)
    if with_training_state:
        if (path / OPTIMIZER_FILE).is_file():
            ckpt.optimizer = torch.load(
                path / OPTIMIZER_FILE, weights_only=True, map_location="cpu"
            )
        if (path / STATE_FILE).is_file():
            ckpt.state = json.loads((path / STATE_FILE).read_text())
    return ckpt


def load_weights_into(net: torch.nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict with an error that says which model the weights belong to."""
    own = net.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    bad_shape = [k for k in own if k in weights and own[k].shape != weights[k].shape]
    if missing or unexpected or bad_shape:
        detail = "; ".join(
            part
            for part in (
                f"missing {missing[:3]}" if missing else "",
                f"unexpected {unexpected[:3]}" if unexpected else "",
                f"shape mismatch in {bad_shape[:3]}" if bad_shape else "",
            )
            if part
        )
        raise CheckpointError(f"the weights in {source} belong to a different model ({detail})")
    net.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()})


def export_for_inference(src: str | Path, dst: str | Path, *, dtype: torch.dtype | None = None,
                         provenance: dict[str, Any] | None = None) -> Path:
    """Write a sampling-only copy of a checkpoint: the EMA weights (when present) as the model,
    optionally cast (fp16 halves the size), no optimizer or training state, and a 'trained'
    record of how it was made (command, time, hardware) in config.json."""
    ck = load_checkpoint(src, with_training_state=True)
    config = ck.model_config()
    config["trained"] = {
        "step": ck.state.get("step"),
        "train_minutes": round(ck.state.get("elapsed_seconds", 0.0) / 60, 1),
        "weights": "ema" if ck.ema is not None else "model",
        **(provenance or {}),
    }
    return save_checkpoint(
        dst,
        config=config,
        model=ck.weights(prefer_ema=True),
        components=ck.components,
        dtype=dtype,
    )
