"""difflab: train and sample diffusion models on your own images.

DDPM and its samplers, score-based SDE models, and a small latent text-to-image system,
built to be read in an afternoon. See README.md for the tour.
"""

__version__ = "0.1.0"
