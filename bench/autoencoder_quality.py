"""How much an autoencoder loses: reconstruction PSNR and FID of reconstructions.

    python bench/autoencoder_quality.py CHECKPOINT [--n 10000] [--out bench/results/ae_NAME]

CHECKPOINT is an autoencoder (a ``kl-f*`` run) or a latent diffusion pipeline (its bundled
autoencoder is used). The dataset's test split is encoded (posterior mean) and decoded; PSNR is
per image for pixels in [-1, 1] (peak-to-peak 2), averaged. FID compares the reconstructions
with the same real test images in the dataset's feature-classifier space (difflab.metrics;
Inception weights cannot be had offline): it is the floor any latent model built on this
autoencoder can reach, since its samples are decoded by the same decoder.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from difflab.checkpoints.components import autoencoder_from_weights
from difflab.checkpoints.names import resolve_checkpoint
from difflab.checkpoints.store import load_checkpoint
from difflab.data.transforms import to_uint8
from difflab.metrics.evaluate import evaluate_images
from difflab.metrics.features import metric_split
from difflab.models.autoencoder import psnr
from difflab.viz import save_grid


def load(path: str):
    ck = load_checkpoint(resolve_checkpoint(path))
    if ck.config.get("kind") == "autoencoder":
        return autoencoder_from_weights(ck.config["network"], ck.weights(True), path), ck.config
    if ck.config.get("kind") == "latent-diffusion":
        spec = ck.config["autoencoder"]["network"]
        return autoencoder_from_weights(spec, ck.components["autoencoder"], path), ck.config
    raise SystemExit(f"{path} holds no autoencoder (kind {ck.config.get('kind')!r})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--n", type=int, default=10_000, help="test images to reconstruct")
    p.add_argument("--out", default=None, help="path prefix for .json and .png")
    args = p.parse_args()
    ae, config = load(args.checkpoint)
    dataset = config["run"]["data"]["name"]
    real = metric_split(dataset, "test").images[: args.n]
    x = real.float() / 127.5 - 1
    recon = []
    with torch.no_grad():
        for i in range(0, len(x), 500):
            recon.append(ae.decode(ae.encode(x[i : i + 500]).mode()))
    recon = torch.cat(recon)
    pixels = to_uint8(recon)
    # PSNR of what a user gets: the uint8 image, against the real uint8 image.
    db = psnr(pixels.float() / 127.5 - 1, x)
    report = evaluate_images(pixels, dataset, n_reference=None)
    out = Path(args.out or f"bench/results/ae_{Path(args.checkpoint).name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "checkpoint": args.checkpoint, "dataset": dataset, "n": len(x),
        "latent_shape": list(ae.latent_shape),
        "parameters": sum(q.numel() for q in ae.parameters()),
        "psnr_db": float(db.mean()), "psnr_db_std": float(db.std()),
        "fid_reconstructions": report["fid"], "precision": report["precision"],
        "recall": report["recall"], "feature_space": report["feature_space"],
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
    }
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    rows = [t for i in range(0, 32, 8) for t in (real[i : i + 8], pixels[i : i + 8])]
    save_grid(torch.cat(rows), out.with_suffix(".png"), nrow=8, scale=2)
    print(f"command: {result['command']}")
    print(f"{dataset} test, {len(x)} images -> latents {tuple(ae.latent_shape)}; "
          f"{result['feature_space']}")
    print("| PSNR (dB) | FID of reconstructions | precision | recall |\n|---|---|---|---|")
    print(f"| {result['psnr_db']:.2f} ± {result['psnr_db_std']:.2f} | "
          f"{result['fid_reconstructions']:.2f} | {result['precision']:.3f} | "
          f"{result['recall']:.3f} |")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')} (real / reconstructed "
          "rows)")


if __name__ == "__main__":
    main()
