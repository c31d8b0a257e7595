"""What the attention-guidance learning tests count: how many images of the shipped
`shapes-text` the GenEval-style scorer reads right, for prompts drawn at given settings."""

import functools

import pytest
import torch

from difflab.checkpoints.names import WEIGHTS_DIR
from difflab.metrics.geneval import score_images
from difflab.pipeline import Generator

SHIPPED = pytest.mark.skipif(not (WEIGHTS_DIR / "shapes-text").is_dir(),
                             reason="no shipped shapes-text pipeline")


@functools.cache
def shapes_text() -> Generator:
    return Generator.from_checkpoint("shapes-text", device="cpu")


def correct_images(prompts: list[str], category: str, per_prompt: int = 16, seed: int = 1,
                   **settings) -> int:
    """Images right on `category`'s question, `per_prompt` of each prompt at `seed`."""
    gen = shapes_text()
    images = torch.cat([gen.generate(per_prompt, prompt=p, seed=seed, **settings)
                        for p in prompts])
    texts = [p for p in prompts for _ in range(per_prompt)]
    return score_images(images, texts)["categories"][category]["correct"]
