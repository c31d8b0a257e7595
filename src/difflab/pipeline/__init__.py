"""Sampling trained models: the `Generator` and what it takes from users.

- `generator`: Generator, a trained network with its noise process (and autoencoder, text
  encoder), from a checkpoint or a live trainer; text-to-image, img2img, inpainting.
- `settings`: sampling settings, their defaults and checks.
- `inputs`: user images and masks in any usual form -> tensors of a model's shape.
- `progress`: progress bars that count network evaluations.
- `compiled`: torch.compile for long sampling jobs, when it pays and with an eager fall-back.
"""

from difflab.pipeline.generator import Generator
from difflab.pipeline.inputs import as_image_tensor, as_mask_tensor, read_image_file
from difflab.pipeline.settings import (
    DEFAULT_IMG2IMG_STRENGTH,
    FALLBACK_SAMPLER,
    SamplingSettings,
)

__all__ = [
    "DEFAULT_IMG2IMG_STRENGTH",
    "FALLBACK_SAMPLER",
    "Generator",
    "SamplingSettings",
    "as_image_tensor",
    "as_mask_tensor",
    "read_image_file",
]
