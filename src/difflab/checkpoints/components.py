"""The parts of a checkpoint beside its network: the frozen autoencoder of a latent model and
the caption bank of a text model, each stored as a component (`components/NAME.safetensors`).

`autoencoder_from_weights` rebuilds the autoencoder a latent checkpoint carries;
`load_autoencoder` reads an autoencoder checkpoint for a new latent diffusion run;
`add_caption_bank` gives a text checkpoint saved before caption banks existed its bank;
`guide_component` / `guide_of` store and rebuild autoguidance's guide network.
"""

from __future__ import annotations

from pathlib import Path

import torch

from difflab.build import network_from_spec
from difflab.checkpoints.names import resolve_checkpoint
from difflab.checkpoints.store import (
    CheckpointError,
    load_checkpoint,
    load_weights_into,
    save_checkpoint,
)
from difflab.data.captions import caption_table
from difflab.models.autoencoder import Autoencoder
from difflab.models.caption_bank import COMPONENT as CAPTION_BANK
from difflab.models.caption_bank import CaptionBank
from difflab.models.text import text_encoder_from_spec

AUTOENCODER = "autoencoder"  # the component holding a latent model's autoencoder weights
# The component holding autoguidance's guide: the network's EMA weights at an earlier point of
# its own run (train.guide_at), in the network's own layout.
GUIDE = "guide"


def guide_component(weights: dict[str, torch.Tensor] | None) -> dict[str, dict[str, torch.Tensor]]:
    """The guide's weights as a checkpoint component, or no component when there is none."""
    return {} if weights is None else {GUIDE: weights}


def guide_of(spec: dict, components: dict[str, dict[str, torch.Tensor]], source: str
             ) -> torch.nn.Module | None:
    """The guide network a checkpoint carries (the network of `spec` with the guide's weights,
    each checked against it), or None when it carries none."""
    if GUIDE not in components:
        return None
    net = network_from_spec(spec)
    load_weights_into(net, components[GUIDE], f"{source} ({GUIDE})")
    return net.float().eval().requires_grad_(False)


def autoencoder_from_weights(spec: dict, weights: dict[str, torch.Tensor], source: str
                             ) -> Autoencoder:
    """Rebuild a frozen autoencoder from its network spec and weights."""
    if spec.get("type") != "autoencoder":
        raise CheckpointError(f"{source}: expected an autoencoder, got a {spec.get('type')!r}")
    ae = network_from_spec(spec)
    load_weights_into(ae, weights, source)
    ae.float().eval().requires_grad_(False)
    return ae


def load_autoencoder(path: str | Path) -> Autoencoder:
    """The frozen autoencoder (EMA weights) of an autoencoder checkpoint, or the one a latent
    diffusion checkpoint carries: a folder or the name of a shipped model."""
    try:
        path = resolve_checkpoint(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"latent.autoencoder = {str(path)!r} is not there: a latent diffusion run needs a "
            "trained autoencoder first (difflab train fashion_autoencoder writes "
            "runs/fashion_autoencoder/last), or --set latent.autoencoder=FOLDER naming one"
        ) from None
    ck = load_checkpoint(path)
    kind = ck.config.get("kind")
    if kind == "latent-diffusion" and AUTOENCODER in ck.components:
        # a latent pipeline's own autoencoder: continue it (--init-from) or train another
        # latent model in the same space without the autoencoder's run at hand
        return autoencoder_from_weights(ck.config[AUTOENCODER]["network"],
                                        ck.components[AUTOENCODER], f"{path} ({AUTOENCODER})")
    if kind != "autoencoder":
        raise CheckpointError(
            f"latent.autoencoder = {str(path)!r} holds a {kind!r} model, not an autoencoder "
            "or a latent diffusion model that carries one; train one with a kl-f* preset "
            "(configs/fashion_autoencoder.toml)"
        )
    return autoencoder_from_weights(ck.config["network"], ck.weights(True), str(path))


def caption_bank_of(components: dict[str, dict[str, torch.Tensor]], source: str
                    ) -> CaptionBank | None:
    """The caption bank a checkpoint's components hold, or None."""
    if CAPTION_BANK not in components:
        return None
    return CaptionBank.from_state_dict(components[CAPTION_BANK], source)


def add_caption_bank(path: str | Path) -> Path:
    """Give a text-to-image checkpoint saved before caption banks existed its bank: the
    captions of its dataset (:func:`difflab.data.captions.caption_table`) encoded by its
    text encoder, valid while the caption text in this code is what the model was trained
    on. Rewrites the folder atomically, in the dtype its weights already have; returns it."""
    ck = load_checkpoint(path, with_training_state=True)
    spec = ck.config.get("text_encoder")
    if not spec:
        raise ValueError(f"{path} is not a text-conditioned checkpoint: it has no text encoder")
    table = caption_table(ck.config["run"]["data"]["name"], ck.config.get("class_names"))
    bank = CaptionBank.build(table.texts, text_encoder_from_spec(spec))
    half = any(v.dtype == torch.float16 for v in ck.model.values())
    return save_checkpoint(
        ck.path,
        config=ck.model_config(),
        model=ck.model,
        ema=ck.ema,
        optimizer=ck.optimizer,
        state=ck.state or None,
        components={**ck.components, CAPTION_BANK: bank.state_dict()},
        dtype=torch.float16 if half else None,
    )
