"""`difflab info CHECKPOINT`: what a checkpoint is, how it was trained, its size.

A crash can leave a run's newest complete checkpoint as last.prev/ beside no last/; info then
describes the folder it fell back to (load_checkpoint warns that it did).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from difflab.checkpoints.names import shipped_models
from difflab.checkpoints.store import load_checkpoint
from difflab.cli.errors import reading_checkpoint
from difflab.cli.inputs import resolve_checkpoint
from difflab.config import ConfigError, config_from_dict, process_settings
from difflab.pipeline.settings import SamplingSettings
from difflab.training.run_state import describe_init_from, describe_machine


def add_info_arguments(i: argparse.ArgumentParser) -> None:
    """The flags of `difflab info`; sets func=cmd_info."""
    i.add_argument("checkpoint", nargs="?",
                   help="a checkpoint or run folder, or a shipped model (without it: their "
                   "names)")
    i.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    """Print describe_checkpoint's lines; without a checkpoint, the shipped models."""
    if args.checkpoint is None:
        print("shipped models (difflab info NAME describes one; difflab sample NAME draws):")
        for name in shipped_models():
            print(f"  {name}")
        return 0
    path = resolve_checkpoint(args.checkpoint)
    with reading_checkpoint(path):
        ck = load_checkpoint(path, with_training_state=True)
        print("\n".join(describe_checkpoint(ck.path, ck)))  # the folder it fell back to
    return 0


def describe_checkpoint(path: Path, ck) -> list[str]:
    """`difflab info`'s lines."""
    c = ck.config
    run = c.get("run", {})
    trained = c.get("trained", {})
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in ck.weights().values()})
    lines = [
        f"checkpoint   {path}",
        f"kind         {c.get('kind')}",
        f"network      {c.get('network', {}).get('type')} "
        f"{c.get('parameters', 0) / 1e6:.2f} M parameters ({', '.join(dtypes)})",
        f"data         {c.get('dataset')} {tuple(c.get('image_shape', []))}",
        f"classes      {c.get('class_names') if c['network'].get('num_classes') else 'none'}",
        f"diffusion    {process_settings(run.get('diffusion') or {})}",
        f"training     step {ck.state.get('step', trained.get('step', '?'))}, "
        f"{ck.state.get('elapsed_seconds', 60 * trained.get('train_minutes', 0)) / 60:.1f} "
        f"min of optimizer steps{_warm_start(ck.state.get('init_from', trained.get('init_from')))}",
        f"files        {size / 1e6:.2f} MB: {', '.join(sorted(f.name for f in path.iterdir()))}",
    ]
    if (run.get("sample") or {}).get("sampler"):
        lines.append(f"sampling     {_sample_settings(run)}")
    posthoc = trained.get("posthoc_ema") if isinstance(trained, dict) else None
    train = run.get("train") if isinstance(run.get("train"), dict) else {}
    length, guide_length = train.get("ema_length"), train.get("guide_ema_length")
    if isinstance(posthoc, dict):  # difflab export --ema-length
        lines.append(f"weights      {_posthoc(posthoc)}")
    elif isinstance(length, (int, float)):
        lines.append(f"weights      a power EMA of length {length:g} (train.ema_length)")
    if "guide" in c:  # autoguidance's guide (train.guide_at), a component of its own
        guide = trained.get("guide_posthoc_ema") if isinstance(trained, dict) else None
        step = c["guide"].get("step", "?")
        what = _posthoc(guide) if isinstance(guide, dict) else (
            f"a power EMA of length {guide_length:g} at step {step}"
            if isinstance(guide_length, (int, float)) else f"the EMA weights at step {step}")
        lines.append(f"guide        {what}, for autoguidance")
    if "autoencoder" in c:
        ae = c["autoencoder"]
        lines.insert(3, f"latent       {tuple(c.get('model_shape', []))} from an autoencoder "
                        f"(scale {ae['latent_scale']:.4f}, trained as {ae['source']})")
    if c.get("text_encoder"):
        lines.insert(3, f"text         {c['text_encoder']}")
    if c.get("trained_on"):
        on = c["trained_on"]
        lines.append(f"trained on   {describe_machine(on)}")
        if on.get("why"):
            lines.append(f"             ({on['why']})")
    if "trained" in c:
        lines.append(f"provenance   {json.dumps(c['trained'])}")
    return lines


def _posthoc(record: dict) -> str:
    """A post-hoc EMA's export record in words."""
    return (f"the post-hoc EMA of length {record.get('sigma_rel', '?')} at step "
            f"{record.get('step', '?')}, rebuilt from {record.get('snapshots', '?')} snapshots")


def _warm_start(init_from: object) -> str:
    """', started from PATH (step N)' for a run that began from another checkpoint's weights,
    so its step count is not read as the whole training."""
    return f", started from {describe_init_from(init_from)}" if isinstance(init_from, dict) else ""


def _sample_settings(run: dict) -> str:
    """A checkpoint's [sample] settings as `difflab sample`'s line names them
    (SamplingSettings.summary), its guidance shown as the checkpoint's."""
    try:
        sc = config_from_dict(run).sample
    except ConfigError as e:  # info still describes a checkpoint that sampling would refuse
        return f"its [sample] settings are not usable: {e}"
    source = {"guidance": "checkpoint"} if sc.guidance is not None else {}
    settings = SamplingSettings(sc.sampler, sc.steps, sc.guidance, None, source,
                                sc.guidance_interval, sc.autoguidance, sc.sigma_max, sc.rho,
                                sc.relation_guidance, sc.binding_guidance,
                                bool(sc.relation_regions))
    return f"{settings.summary()} (its [sample] settings)"
