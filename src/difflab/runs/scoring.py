"""FID while a run trains: fid_samples images from the EMA weights, drawn as `difflab sample`
draws them (the run's [sample] settings), scored against the dataset's real images."""

from __future__ import annotations

from typing import Any

from difflab.evaluation import evaluate_generator
from difflab.pipeline import Generator
from difflab.runs.report import sample_kwargs


def score_fid(trainer: Any) -> dict[str, Any]:
    """The evaluation report (FID, KID, ...) of a live trainer's EMA weights: the `score`
    hook of `Trainer.train`, called every train.fid_every steps."""
    return evaluate_generator(
        Generator.from_trainer(trainer),
        trainer.cfg.data.name,
        trainer.cfg.train.fid_samples,
        classes=trainer.cfg.data.classes,
        seed=trainer.cfg.train.seed,
        # Eager: a build of ~2 minutes inside a timed run would come out of its training budget.
        compile="off",
        **sample_kwargs(trainer),
    )
