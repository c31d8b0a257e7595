"""What a training checkpoint holds beyond weights, for an exact resume (state.json): the step,
the EMA's update count, best losses, the data order, every random state, the loss scaler, the
step settings, and the length of metrics.jsonl to rewind it to. A checkpoint from elsewhere is
untrusted input: every field is type-checked before any of it is used."""

from __future__ import annotations

import json
import math
from typing import Any

import torch

from difflab.build import complete_network_spec, grown_network_spec, network_from_spec
from difflab.checkpoints import store as ckpt_io
from difflab.checkpoints.components import GUIDE, guide_of
from difflab.checkpoints.names import WEIGHTS_DIR
from difflab.training.posthoc_snapshots import component_name
from difflab.training.step_settings import StepSettings

# state.json as resume reads it: each key's JSON types; the optional ones older checkpoints
# may lack (resume then takes the defaults those versions meant).
STATE_FIELDS: dict[str, tuple[type, ...]] = {
    "step": (int,), "best_loss": (int, float), "data": (dict,), "generator": (str,),
    "torch_rng": (str,), "ema_updates": (int,), "best_fid": (int, float),
    "loss_ema": (int, float), "elapsed_seconds": (int, float), "scaler": (dict,),
    "step_settings": (dict,), "metrics_bytes": (int,), "init_from": (dict,),
    "guide_step": (int,), "posthoc_ema": (list,), "guide_ema_length": (int, float),
    "marks_pictures": (bool,),
}  # fmt: skip
OPTIONAL_STATE = ("ema_updates", "best_fid", "loss_ema", "elapsed_seconds", "scaler",
                  "step_settings", "metrics_bytes", "init_from", "guide_step", "posthoc_ema",
                  "guide_ema_length", "marks_pictures")


def differences(saved: Any, mine: Any, prefix: str = "") -> str:
    """The first few keys where two JSON configs differ, as 'key: a vs b'."""
    if isinstance(saved, dict) and isinstance(mine, dict):
        parts = [
            differences(saved.get(k), mine.get(k), f"{prefix}{k}.")
            for k in sorted(set(saved) | set(mine), key=str)
            if saved.get(k) != mine.get(k)
        ]
        return "; ".join(parts[:3])
    return f"{prefix.rstrip('.') or 'network'}: {saved!r:.80} vs {mine!r:.80}"


def training_state(trainer: Any) -> dict[str, Any]:
    """state.json of a checkpoint of `trainer` now."""
    return {
        "step": trainer.step,
        "ema_updates": trainer.ema.num_updates,
        "best_loss": trainer.best_loss,
        # None until a FID is scored: JSON has no Infinity, and other tools reading state.json
        # would refuse the file (restore reads None back as infinity)
        "best_fid": trainer.best_fid if math.isfinite(trainer.best_fid) else None,
        "loss_ema": trainer.loss_ema,
        "elapsed_seconds": trainer.elapsed,
        "data": trainer.batches.state_dict(),
        "generator": ckpt_io.encode_bytes(trainer.gen.get_state()),
        "torch_rng": ckpt_io.encode_bytes(torch.get_rng_state()),
        "scaler": trainer.scaler.state_dict(),
        "step_settings": trainer.step_settings.to_dict() if trainer.step_settings else None,
        "metrics_bytes": trainer.metrics.durable_size() if trainer.dist.is_main else None,
        "init_from": trainer.init_from,
        "guide_step": trainer.guide_step,
        "posthoc_ema": [ema.sigma_rel for ema in trainer.posthoc] or None,
        "guide_ema_length": trainer.guide_ema.sigma_rel if trainer.guide_ema else None,
        # every picture this run writes carries difflab's mark, so an unmarked one beside it
        # is a user's (difflab.cli.runs: --overwrite and a new run leave it alone)
        "marks_pictures": True,
    }


def require_same_network(trainer: Any, ck: ckpt_io.Checkpoint, verb: str, *,
                         grow: bool = False) -> list[str]:
    """CheckpointError unless `ck` holds the network this run builds (its config.json
    "network" equals the run's, once settings added since it was written take their
    defaults). With `grow` (a warm start), the run may also turn on settings that only add
    zero-initialised layers (build.grown_network_spec); their names are returned."""
    mine = complete_network_spec(json.loads(json.dumps(trainer.net_config)))
    saved = complete_network_spec(ck.config.get("network"))
    grown: list[str] = []
    if grow:
        saved, grown = grown_network_spec(saved, mine)
    if saved != mine:
        found = differences(saved, mine)
        # The network's size and channels follow the images', which [model] does not set.
        images = ("; the network follows the images: give data.image_size and data.channels "
                  "as the run had them" if "image_size" in found or "in_channels" in found
                  else "")
        raise ckpt_io.CheckpointError(
            f"cannot {verb} {ck.path}: it was trained with a different network "
            f"({found}; checkpoint vs this run){images}{_how_it_was_built(ck)}"
        )
    return grown


def _how_it_was_built(ck: ckpt_io.Checkpoint) -> str:
    """Where to find the network a checkpoint needs: the config of the command that trained
    it (an export records it), else its run's [model] settings."""
    command = str((ck.config.get("trained") or {}).get("command") or "").split()
    if "train" in command[:-1]:
        return f"; it was trained from the config {command[command.index('train') + 1]}"
    model = (ck.config.get("run") or {}).get("model")
    return f"; its run's [model] settings were {model}" if isinstance(model, dict) else ""


def warm_start(trainer: Any, ck: ckpt_io.Checkpoint) -> None:
    """Begin a new run from a checkpoint's weights: fine-tuning, or more training of a model
    under a new budget or schedule. The network and its EMA copy both start from the
    checkpoint's best weights (its EMA ones when it has them, as fine-tuning starts from a
    released model); the optimizer, learning-rate schedule, step count, data order and time
    budget start afresh. The source is recorded in every checkpoint of the run (init_from).
    A setting that only adds zero-initialised layers (build.grown_network_spec) may be on
    here and off in the checkpoint: those layers keep their zero start, so the run begins
    from the checkpoint's function exactly, and init_from names them ("added")."""
    grown = require_same_network(trainer, ck, "start from", grow=True)
    weights = ck.weights(prefer_ema=True)
    if grown:  # the layers the grown settings add: all this network has beyond the saved one
        saved = set(network_from_spec(ck.config["network"]).state_dict())
        own = trainer.net.state_dict()
        weights = {**{k: v for k, v in own.items() if k not in saved}, **weights}
    source = str(ck.path / (ckpt_io.EMA_FILE if ck.ema is not None else ckpt_io.MODEL_FILE))
    ckpt_io.load_weights_into(trainer.net, weights, source)
    ckpt_io.load_weights_into(trainer.ema.model, weights, source)
    state = ck.state if isinstance(ck.state, dict) else {}
    trained = ck.config.get("trained") if isinstance(ck.config.get("trained"), dict) else {}
    step = ckpt_io.saved_step(state, ck.config)
    # A shipped model is recorded by its name, as `--init-from NAME` takes it, not by where
    # this machine happens to keep the package: the record travels with the exported model.
    shipped = ck.path.parent.resolve() == WEIGHTS_DIR.resolve()
    trainer.init_from = {"path": ck.path.name if shipped else str(ck.path), "step": step,
                         **({"added": grown} if grown else {})}
    # A checkpoint that itself began from another counts that one's steps too.
    earlier = state.get("init_from", trained.get("init_from"))
    if step is not None and isinstance(earlier, dict):
        before = earlier.get("steps_in_all", earlier.get("step"))
        if isinstance(before, int) and not isinstance(before, bool) and before >= 0:
            trainer.init_from["steps_in_all"] = step + before


def describe_init_from(init_from: dict) -> str:
    """A warm start's record (`trainer.init_from`) in words, as `difflab train` and `difflab
    info` say it: 'PATH (step N[ of its last run, M in all]), adding X (zero-initialised
    layers)'."""
    step, total = init_from.get("step"), init_from.get("steps_in_all")
    at = f" (step {step:,})" if isinstance(step, int) else ""
    if isinstance(step, int) and isinstance(total, int) and not isinstance(total, bool):
        at = f" (step {step:,} of its last run, {total:,} in all)"
    added = init_from.get("added")
    plus = (f", adding {', '.join(map(str, added))} (zero-initialised layers)"
            if isinstance(added, list) and added else "")
    return f"{init_from.get('path')}{at}{plus}"


def describe_machine(on: dict) -> str:
    """A run's machine record (`trainer.machine_record`, a checkpoint's "trained_on") in
    words, as `difflab info` and an export's provenance say it: 'AMD EPYC, 2 cores, flags
    avx2 fma, cpu fp32 x2 threads, torch 2.13.0'."""
    how = [str(on[k]) for k in ("device", "precision") if on.get(k)]
    if on.get("threads"):
        how.append(f"x{on['threads']} threads")
    parts = [str(on.get("cpu") or ""), " ".join(how)]
    if on.get("torch"):
        parts.append(f"torch {on['torch']}")
    return ", ".join(part for part in parts if part)


def restore(trainer: Any, ck: ckpt_io.Checkpoint) -> None:
    """Put a trainer where the checkpoint `ck` left off: weights, EMA, optimizer, data order,
    random states, loss scaler, step settings, counters. Refuses (CheckpointError) a
    checkpoint of another network or one whose state does not fit this run."""
    path = ck.path
    require_same_network(trainer, ck, "resume from")
    ckpt_io.load_weights_into(trainer.net, ck.model, str(path))
    s = ck.state
    source = str(path / ckpt_io.STATE_FILE)
    ckpt_io.require_fields(s, STATE_FIELDS, source, optional=OPTIONAL_STATE)
    if s["step"] < 0:
        raise ckpt_io.CheckpointError(f"{source}: 'step' must be >= 0, got {s['step']}")
    try:
        what = "the EMA weights"
        ckpt_io.load_weights_into(trainer.ema.model, ck.ema, str(path / ckpt_io.EMA_FILE))
        trainer.ema.num_updates = s.get("ema_updates") or 0
        what = "the optimizer state"
        trainer.optimizer.load_state_dict(ck.optimizer)
        what = "the data order"
        trainer.batches.load_state_dict(s["data"])
        what = "the random states"
        trainer.gen.set_state(ckpt_io.decode_bytes(s["generator"]))
        torch.set_rng_state(ckpt_io.decode_bytes(s["torch_rng"]))
        what = "the loss scaler"
        if s.get("scaler"):
            trainer.scaler.load_state_dict(s["scaler"])
        what = "the step settings"
        if s.get("step_settings"):
            trainer.tuner.recorded = StepSettings.from_dict(s["step_settings"])
        what = "the guide's weights"
        trainer.guide, trainer.guide_step = _guide(trainer, ck, s.get("guide_step"))
        what = "the guide's average"
        _restore_guide_ema(trainer, ck, s.get("guide_ema_length"), s["step"])
        what = "the post-hoc EMAs"
        _restore_posthoc(trainer, ck, s.get("posthoc_ema") or [], s["step"])
    except ckpt_io.CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        raise ckpt_io.CheckpointError(
            f"cannot resume from {path}: {what} it holds do not fit this run ({e})"
        ) from e
    trainer.step, trainer.best_loss = s["step"], s["best_loss"]
    trainer.best_fid = s["best_fid"] if s.get("best_fid") is not None else math.inf
    trainer.loss_ema, trainer.elapsed = s.get("loss_ema"), s.get("elapsed_seconds") or 0.0
    trainer.init_from = s.get("init_from")


def _guide(trainer: Any, ck: ckpt_io.Checkpoint, step: int | None
           ) -> tuple[dict[str, torch.Tensor] | None, int | None]:
    """The guide weights and step a checkpoint holds (autoguidance), checked against the
    run's network; (None, None) for a checkpoint saved before its run kept them."""
    if step is None:
        return None, None
    # the network is the run's: require_same_network compared the two specs before this
    guide = guide_of(ck.config["network"], ck.components, str(ck.path))
    if guide is None or step < 0:
        raise ckpt_io.CheckpointError(
            f"{ck.path}: state.json names a guide at step {step} but the checkpoint holds no "
            f"valid {GUIDE} weights"
        )
    return {k: v.detach() for k, v in guide.state_dict().items()}, step


def _restore_posthoc(trainer: Any, ck: ckpt_io.Checkpoint, lengths: list, step: int) -> None:
    """The power EMAs of train.posthoc_ema where the checkpoint left them; refuses a run that
    asks for other lengths than the checkpoint kept (its averages would start over)."""
    mine = [ema.sigma_rel for ema in trainer.posthoc]
    if lengths != mine:
        raise ckpt_io.CheckpointError(
            f"cannot resume from {ck.path}: it kept post-hoc EMAs of lengths {lengths or 'none'} "
            f"and this run asks for {mine or 'none'} (train.posthoc_ema); resume with the "
            "same setting"
        )
    for i, ema in enumerate(trainer.posthoc):
        name = component_name(i)
        if name not in ck.components:
            raise ckpt_io.CheckpointError(f"{ck.path}: the post-hoc EMA {name} is missing")
        ckpt_io.load_weights_into(ema.model, ck.components[name], f"{ck.path} ({name})")
        ema.num_updates = step


def _restore_guide_ema(trainer: Any, ck: ckpt_io.Checkpoint, length: float | None,
                       step: int) -> None:
    """The power EMA the guide is to be kept from (train.guide_ema_length) where the checkpoint
    left it (it goes on after the guide is kept, for a budget that grows: Trainer.move_guide);
    none for a checkpoint from before it went on, whose guide is kept. Refuses a run that asks
    for another length than the checkpoint kept (the guide would silently come from another
    average)."""
    if trainer.guide is not None and ckpt_io.GUIDE_EMA not in ck.components:
        trainer.guide_ema = None
        return
    mine = trainer.guide_ema.sigma_rel if trainer.guide_ema else None
    if length != mine:
        raise ckpt_io.CheckpointError(
            f"cannot resume from {ck.path}: it kept its guide's average at length "
            f"{length or 'none'} and this run asks for {mine or 'none'} "
            "(train.guide_ema_length); resume with the same setting: --set "
            f"train.guide_ema_length={length if length is not None else 'none'}"
        )
    if trainer.guide_ema is None:
        return
    if ckpt_io.GUIDE_EMA not in ck.components:
        raise ckpt_io.CheckpointError(f"{ck.path}: the guide's average {ckpt_io.GUIDE_EMA} "
                                      "is missing")
    ckpt_io.load_weights_into(trainer.guide_ema.model, ck.components[ckpt_io.GUIDE_EMA],
                              f"{ck.path} ({ckpt_io.GUIDE_EMA})")
    trainer.guide_ema.num_updates = step
