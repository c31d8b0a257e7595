"""What the shapes scorer still reads through an autoencoder: the ceiling of a latent model.

    python bench/shapes_autoencoder_ceiling.py CHECKPOINT [--rounds 4] [--out FILE.json]

A latent text-to-image model on the shapes world draws through its autoencoder's decoder, so
no sample can be better than a decoded latent. This encodes (posterior mean) and decodes the
ground-truth scenes of the test prompts (`make_test_set`: `rounds` scenes for each prompt)
and scores the reconstructions with the GenEval-style scorer, beside the scenes themselves
(100 % by construction). It also gives the PSNR of the reconstructions. CHECKPOINT is an
autoencoder run on RGB 32x32 scenes or a latent pipeline holding one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from autoencoder_quality import load

from difflab.data.shapes import geneval_prompts, make_test_set
from difflab.data.transforms import to_uint8
from difflab.metrics.geneval import format_geneval_report, score_images
from difflab.models.autoencoder import psnr


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--rounds", type=int, default=4, help="scenes for each test prompt")
    p.add_argument("--out", help="write the reports here (JSON)")
    args = p.parse_args()
    ae, _ = load(args.checkpoint)
    n_prompts = sum(len(v) for v in geneval_prompts().values())
    test = make_test_set(args.rounds * n_prompts)
    images = torch.from_numpy(test.images)
    prompts = [c[0] for c in test.captions]
    recon = []
    with torch.no_grad():
        for i in range(0, len(images), 256):
            x = images[i:i + 256].float() / 127.5 - 1
            recon.append(ae.decode(ae.encode(x).mean).clamp(-1, 1))
    recon = torch.cat(recon)
    quality = float(psnr(recon, images.float() / 127.5 - 1).mean())
    reports = {"scenes": score_images(images, prompts),
               "reconstructions": score_images(to_uint8(recon), prompts)}
    for name, report in reports.items():
        print(f"{name}:\n{format_geneval_report(report)}")
    print(f"reconstruction PSNR {quality:.2f} dB over {len(images)} scenes")
    if args.out:
        summary = {name: {k: v for k, v in r.items() if k != "results"}
                   for name, r in reports.items()}
        wrong = [r for r in reports["reconstructions"]["results"] if not r["correct"]]
        Path(args.out).write_text(json.dumps({
            "command": " ".join(sys.argv), "checkpoint": args.checkpoint,
            "scenes": len(images), "psnr_db": quality, **summary,
            "wrong_reconstructions": wrong[:50]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
