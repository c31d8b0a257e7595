"""What a run learns, one class per kind of run; the training loop (difflab.training.trainer)
is the same for all of them.

An objective builds its network and owns what differs between kinds of run:
- what the batches are drawn from (images, or an autoencoder's posterior moments),
- `loss(model, x, labels, generator, autocast)`: the per-batch loss,
- what its checkpoint carries beside the network (`checkpoint_config`, `components`).

`make_objective(cfg, data, process, device)` picks it from the config: an autoencoder preset
trains an `AutoencoderObjective`; `latent.autoencoder` set gives a `LatentDiffusionObjective`;
otherwise a `DiffusionObjective` in pixel space. A process that trains its own network (EDM,
flow matching: `diffusion.denoiser.OwnNetworkProcess`) gives their preconditioned
counterparts, whose loss is the process' own. Every diffusion objective takes class labels or
captions (text.encoder) as its condition.
"""

from __future__ import annotations

import torch

from difflab.build import build_network
from difflab.config import RunConfig
from difflab.data import ImageData
from difflab.diffusion.denoiser import OwnNetworkProcess
from difflab.diffusion.process import NoiseProcess
from difflab.training.objectives.autoencoder import AutoencoderObjective
from difflab.training.objectives.diffusion import DiffusionObjective
from difflab.training.objectives.latent import LatentDiffusionObjective, encode_dataset
from difflab.training.objectives.preconditioned import (
    LatentPreconditionedObjective,
    PreconditionedObjective,
)
from difflab.training.objectives.text import CaptionConditioning

Objective = AutoencoderObjective | DiffusionObjective


def make_objective(cfg: RunConfig, data: ImageData, process: NoiseProcess,
                   device: torch.device, quiet: bool = True) -> Objective:
    """The objective the config describes, its network built on `device`; unless `quiet`,
    slow preparation (encoding a large caption set) says what it is doing.

    Order matters for an exact reproduction: the latents are encoded first (loading the
    autoencoder draws from the global RNG), then the seed is set and the network built, then
    a trainable text encoder."""
    latents = encode_dataset(cfg, data, device) if cfg.latent.autoencoder is not None else None
    model_shape = latents.model_shape if latents is not None else data.image_shape
    torch.manual_seed(cfg.train.seed)  # the same seed gives the same initial weights
    net, net_config = build_network(cfg.model, model_shape, data.num_classes)
    if net_config["type"] == "autoencoder":
        if latents is not None:
            raise ValueError("an autoencoder preset cannot itself train on latent.autoencoder")
        return AutoencoderObjective(cfg, net.to(device), net_config)
    net.to(device)
    text = None
    if cfg.text.encoder is not None:
        text = CaptionConditioning(cfg, data, net, net_config, device, quiet)
        net, net_config = text.net, text.net_config
    check_classes(net_config.get("num_classes"), data, cfg, text is not None, quiet)
    own = isinstance(process, OwnNetworkProcess)  # EDM, flow: the process' loss
    if latents is not None:
        latent_cls = LatentPreconditionedObjective if own else LatentDiffusionObjective
        return latent_cls(cfg, process, net, net_config, device, text, latents)
    pixel_cls = PreconditionedObjective if own else DiffusionObjective
    return pixel_cls(cfg, process, net, net_config, device, text, model_shape)


__all__ = [
    "AutoencoderObjective",
    "DiffusionObjective",
    "LatentDiffusionObjective",
    "LatentPreconditionedObjective",
    "Objective",
    "PreconditionedObjective",
    "make_objective",
]


def check_classes(num_classes: int | None, data: ImageData, cfg: RunConfig, text: bool,
                  quiet: bool) -> None:
    """A class-conditional network must take as many classes as the data names (a checkpoint
    whose class names and network disagree cannot be sampled); labels an unconditional run
    will not use are said, not dropped in silence."""
    if text:  # a text run's labels index its captions, not the network's classes
        return
    names = data.class_names or ()
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    if num_classes is not None and data.labels is None:
        raise ValueError(
            f"the model is class-conditional (model.overrides.num_classes = {num_classes}) but "
            f"the dataset {data.name!r} has no labels: for an image folder of one sub-folder "
            "per class set data.folder_labels=true, or train an unconditional preset "
            "(difflab train fashion_mnist ...)")
    if num_classes is not None and data.num_classes not in (None, num_classes):
        raise ValueError(
            f"the dataset {data.name!r} names {data.num_classes} classes ({shown}) and the "
            f"network takes {num_classes} (model.overrides.num_classes): add --set "
            f"model.overrides.num_classes={data.num_classes}")
    if num_classes is None and names and cfg.data.folder_labels and not quiet:
        print(f"difflab: data.folder_labels gives {len(names)} "
              f"class{'' if len(names) == 1 else 'es'} ({shown}); this model "
              "is unconditional, so they are not used (a class-conditional preset such as "
              f"fashion_mnist_cond with --set model.overrides.num_classes={len(names)} would "
              "learn them)", flush=True)
