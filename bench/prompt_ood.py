"""Out-of-domain prompts: how far (in MiniLM's sentence space) a prompt must be from every
training caption before `difflab sample` says the model does not know it.

A prompt's familiarity is its cosine similarity to the nearest training caption in the
checkpoint's caption bank (difflab.models.caption_bank). The threshold is chosen on one pair of
prompt sets and its error rates reported on another, written apart and never used to choose:

- choose: in-domain = the dataset's held-out paraphrases (difflab.data.captions, not training
  captions); out-of-domain = bench/prompts/ood_select.txt;
- report: in-domain = bench/prompts/indomain_check.txt (free wording, colours, patterns);
  out-of-domain = bench/prompts/ood_check.txt.

For a model trained on tone and pattern captions (data.captions = "attributes") the in-domain
sets also hold the attribute prompts: held_out_attribute_prompts() to choose on, and
bench/prompts/attribute_check.txt to report on. Beside the threshold chosen for the checkpoint,
the rates at the library's OUT_OF_DOMAIN_BELOW are reported, which is what `difflab sample`
uses.

The threshold minimises the choose sets' balanced error (false flags of in-domain prompts +
missed out-of-domain ones, each as a rate), the midpoint between the two neighbouring
similarities where several tie.

    .venv/bin/python bench/prompt_ood.py [--checkpoint fashion-text]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from difflab.data.captions import held_out_prompts
from difflab.data.fashion_attributes import held_out_attribute_prompts, read_attribute_prompts
from difflab.hardware import describe_cpu
from difflab.models.caption_bank import OUT_OF_DOMAIN_BELOW
from difflab.pipeline import Generator

HERE = Path(__file__).resolve().parent


def read_prompts(name: str) -> list[str]:
    lines = (HERE / "prompts" / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def familiarity(gen: Generator, prompts: list[str]) -> list[float]:
    return [float(s) for s in gen.prompt_familiarity(prompts)]


def choose_threshold(inside: list[float], outside: list[float]) -> float:
    """The threshold (flag below it) with the least balanced error on these sets."""
    values = sorted(set(inside) | set(outside))
    pairs = zip(values, values[1:], strict=False)
    candidates = [values[0] - 1e-6] + [(a + b) / 2 for a, b in pairs]
    candidates.append(values[-1] + 1e-6)

    def error(t: float) -> float:
        false_flags = sum(v < t for v in inside) / len(inside)
        missed = sum(v >= t for v in outside) / len(outside)
        return false_flags + missed

    return min(candidates, key=lambda t: (error(t), t))


def rates(inside: list[float], outside: list[float], t: float) -> dict[str, float]:
    return {
        "in_domain_flagged": sum(v < t for v in inside) / len(inside),
        "out_of_domain_missed": sum(v >= t for v in outside) / len(outside),
        "in_domain_prompts": len(inside),
        "out_of_domain_prompts": len(outside),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="fashion-text")
    ap.add_argument("--out", default=str(HERE / "results" / "prompt_ood.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    gen = Generator.from_checkpoint(args.checkpoint, device="cpu")
    data = gen.config["run"]["data"]
    check_in_prompts = read_prompts("indomain_check.txt")
    if data.get("captions") == "attributes":
        held_out = [q.text for q in held_out_attribute_prompts()]
        held_out += [p for ps in held_out_prompts(data["name"]).values() for p in ps]
        check_in_prompts += [q.text for q in read_attribute_prompts(
            HERE / "prompts" / "attribute_check.txt")]
    else:
        held_out = [p for ps in held_out_prompts(data["name"], gen.class_names).values()
                    for p in ps]
    choose_in, choose_out = familiarity(gen, held_out), familiarity(gen, read_prompts(
        "ood_select.txt"))
    t = choose_threshold(choose_in, choose_out)
    check_out_prompts = read_prompts("ood_check.txt")
    check_in, check_out = familiarity(gen, check_in_prompts), familiarity(gen, check_out_prompts)
    result = {
        "checkpoint": args.checkpoint,
        "threshold": round(t, 4),
        "choose": rates(choose_in, choose_out, t),
        "report": rates(check_in, check_out, t),
        "report_at_library_threshold": {"threshold": OUT_OF_DOMAIN_BELOW,
                                        **rates(check_in, check_out, OUT_OF_DOMAIN_BELOW)},
        "flagged_in_domain": [p for p, v in zip(check_in_prompts, check_in, strict=True) if v < t],
        "missed_out_of_domain": [
            p for p, v in zip(check_out_prompts, check_out, strict=True) if v >= t
        ],
        "cpu": describe_cpu(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
