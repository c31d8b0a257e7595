"""What a training run does besides training, wired to the loop from above: the fixed-seed
sample grids, FID while it trains, the files a finished run writes, and its last line.

The Trainer (difflab.training) takes these as hooks, `train(on_sample=..., score=...)`, so
that training never imports the pipeline that draws the samples (docs/design.md):

    from difflab.runs import report, score_fid
    trainer.train(on_sample=lambda tr: report.save_sample_grid(tr, path), score=score_fid)
"""

from difflab.runs.scoring import score_fid

__all__ = ["score_fid"]
