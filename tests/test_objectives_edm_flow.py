"""EDM and flow matching as run settings, end to end on the 8x8 digits: the config refuses what
does not apply to them, tiny runs train, checkpoint and resume bit for bit, the Generator and
`difflab sample` draw from their checkpoints with any sampler and with guidance, a latent run
trains on an autoencoder's latents, and a tiny model learns (its held-out loss under a fixed
bar). The math itself is oracle-tested in test_edm.py and test_flow.py."""

import json

import pytest
import torch
from tiny_run import ROOT, tiny_config

from difflab.build import build_process
from difflab.cli import main
from difflab.config import ConfigError, config_from_dict, load_config
from difflab.data import load_dataset
from difflab.diffusion.denoiser import GuidedDenoiser, ModelDenoiser, network_denoiser
from difflab.diffusion.edm import EDMDenoiser, EDMProcess
from difflab.diffusion.flow import FlowDenoiser, FlowProcess
from difflab.diffusion.process import DiscreteProcess
from difflab.pipeline import Generator
from difflab.samplers import make_timesteps
from difflab.training.objectives import (
    LatentPreconditionedObjective,
    PreconditionedObjective,
)
from difflab.training.trainer import Trainer

# What each process's network needs: EDM's sees c_noise = ln(sigma) / 4, flow's t in [0, 1],
# each scaled as the presets scale it (configs/fashion_mnist_edm.toml, _flow.toml).
PROCESS_SETS = {
    "edm": ["diffusion.process=edm", "model.overrides.time_scale=250"],
    "flow": ["diffusion.process=flow", "model.overrides.time_scale=1000"],
}
DENOISERS = {"edm": EDMDenoiser, "flow": FlowDenoiser}


def train(out, process, steps, *extra, resume=False):
    cfg = tiny_config(
        f"train.max_steps={steps}",
        "train.precision=fp32",
        "train.threads=1",
        *PROCESS_SETS[process],
        *extra,
    )
    tr = Trainer(cfg, out, device="cpu", quiet=True)
    if resume:
        tr.resume()
    tr.train()
    return tr


@pytest.fixture(scope="module", params=["edm", "flow"])
def run(request, tmp_path_factory):
    """A class-conditional tiny run of each process, 4 steps: (process name, its folder, a
    Generator of its last checkpoint)."""
    out = tmp_path_factory.mktemp(request.param) / "run"
    train(
        out,
        request.param,
        4,
        "model.overrides.num_classes=10",
        "sample.sampler=heun",
        "sample.steps=4",
        "sample.guidance=2",
    )
    return request.param, out, Generator.from_checkpoint(out / "last", device="cpu")


# ------------------------------------------------------------------ the config
@pytest.mark.parametrize("process", ["edm", "flow"])
@pytest.mark.parametrize(
    ("setting", "default"),
    [
        ("diffusion.snr_gamma=5", "none"),
        ("diffusion.loss=huber", "'l2'"),
        ("diffusion.zero_terminal_snr=true", "false"),
        ("diffusion.parameterization=eps", "'v'"),
    ],
)
def test_settings_of_the_other_processes_are_refused(process, setting, default):
    name = setting.split("=")[0]
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"diffusion.process={process}", setting])
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"{name} = ")
    assert f"does not apply to diffusion.process = {process!r}" in message
    assert f"applies to the discrete, vp and ve processes: leave it at {default}" in message
    load_config(None, [f"diffusion.process={process}", f"{name}={default.strip(chr(39))}"])


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["diffusion.process=edm", "diffusion.edm_sigma_min=100"],
            "diffusion.edm_sigma_min = 100 must be below diffusion.edm_sigma_max = 80",
        ),
        (["diffusion.edm_sigma_max=0"], "diffusion.edm_sigma_max must be > 0"),
        (["diffusion.sigma_data=-1"], "diffusion.sigma_data must be > 0 and <= 100, got -1"),
        (["diffusion.edm_p_std=0"], "diffusion.edm_p_std must be > 0"),
        (["diffusion.flow_logit_std=nan"], "diffusion.flow_logit_std must be a finite number"),
        (
            ["diffusion.flow_time_sampling=beta"],
            "diffusion.flow_time_sampling = 'beta' is not allowed; choose one of: logit_normal, "
            "uniform",
        ),
        (
            ["diffusion.process=rectified"],
            "diffusion.process = 'rectified' is not allowed; choose one of: discrete, vp, ve, edm, "
            "flow",
        ),
    ],
)
def test_bad_values_are_named(sets, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, sets)


def test_build_process_reads_every_setting():
    edm = build_process(
        load_config(
            None,
            [
                "diffusion.process=edm",
                "diffusion.edm_sigma_min=0.01",
                "diffusion.edm_sigma_max=40",
                "diffusion.sigma_data=1",
                "diffusion.edm_p_mean=-1",
                "diffusion.edm_p_std=1.5",
            ],
        ).diffusion
    )
    assert isinstance(edm, EDMProcess)
    assert (edm.t_min, edm.t_max, edm.sigma_data, edm.p_mean, edm.p_std) == (
        0.01,
        40.0,
        1.0,
        -1.0,
        1.5,
    )
    flow = build_process(
        load_config(
            None,
            [
                "diffusion.process=flow",
                "diffusion.t_min=0.01",
                "diffusion.flow_time_sampling=uniform",
                "diffusion.flow_logit_mean=0.5",
                "diffusion.flow_logit_std=2",
            ],
        ).diffusion
    )
    assert isinstance(flow, FlowProcess)
    assert (flow.t_min, flow.t_max, flow.time_sampling, flow.logit_mean, flow.logit_std) == (
        0.01,
        0.999,
        "uniform",
        0.5,
        2.0,
    )


def test_the_presets_train_each_objective_with_the_large_presets_network():
    """EDM and flow differ from configs/fashion_mnist_large.toml only in the process (and the
    time input's scale), so bench/objectives.py compares objectives, not networks."""
    default = load_config(ROOT / "configs" / "fashion_mnist_large.toml")
    for name, process, time_scale in (
        ("fashion_mnist_edm", "edm", 250),
        ("fashion_mnist_flow", "flow", 1000),
    ):
        cfg = load_config(ROOT / "configs" / f"{name}.toml")
        assert cfg.diffusion.process == process
        assert cfg.model.preset == default.model.preset
        assert cfg.model.overrides == {"time_scale": time_scale}
        assert (cfg.train, cfg.data) == (default.train, default.data)


# ------------------------------------------------------------------ training and resume
@pytest.mark.parametrize("process", ["edm", "flow"])
def test_runs_checkpoint_and_resume_bit_for_bit(tmp_path, process):
    straight = train(tmp_path / "a", process, 6)
    assert type(straight.objective) is PreconditionedObjective
    assert isinstance(straight.process, EDMProcess if process == "edm" else FlowProcess)
    train(tmp_path / "b", process, 3)
    resumed = train(tmp_path / "b", process, 6, resume=True)
    assert resumed.step == 6
    for (key, a), b in zip(
        straight.net.state_dict().items(), resumed.net.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), key
    for a, b in zip(straight.ema.model.parameters(), resumed.ema.model.parameters(), strict=True):
        assert torch.equal(a, b)
    rows = [
        [json.loads(line)["loss"] for line in open(tmp_path / d / "metrics.jsonl")]
        for d in ("a", "b")
    ]
    assert rows[0] == rows[1] and len(rows[0]) == 6


def test_a_bf16_step_runs(tmp_path):
    """The network runs under bf16 autocast, the loss stays float32 and finite."""
    tr = Trainer(
        tiny_config(
            "train.max_steps=1", "train.precision=bf16", "train.threads=1", *PROCESS_SETS["edm"]
        ),
        tmp_path,
        device="cpu",
        quiet=True,
    )
    batch = tr.batches.next_batch()
    loss = tr.batch_loss(batch.images, batch.labels, precision="bf16")
    assert loss.dtype == torch.float32 and loss.ndim == 0 and bool(torch.isfinite(loss))


# ------------------------------------------------------------------ sampling a checkpoint
def test_generator_uses_the_process_own_denoiser(run):
    process, _, gen = run
    labels = torch.tensor([0, 1])
    assert type(gen.denoiser(labels, clip=None)) is DENOISERS[process]
    # One helper builds every sampling path's denoiser; other processes keep ModelDenoiser.
    assert type(network_denoiser(gen.net, DiscreteProcess.from_schedule("cosine", 10), "v")) is (
        ModelDenoiser
    )


@pytest.mark.parametrize(
    "sampler", ["heun", "dpmpp_2m", "ddim", "flow_euler", "euler_ancestral", "deis"]
)
def test_every_kind_of_sampler_draws_the_same_images_at_any_batch_size(run, sampler):
    _, _, gen = run
    kw = dict(sampler=sampler, steps=4, seed=3, classes=[0, 5, 9])
    whole = gen.generate(3, batch_size=3, **kw)
    split = gen.generate(3, batch_size=2, **kw)
    assert whole.dtype == torch.uint8 and whole.shape == (3, 1, 8, 8)
    assert torch.equal(whole, split)


def test_guidance_combines_the_process_own_predictions(run):
    _, _, gen = run
    labels = torch.tensor([2, 7])
    guided = gen.denoiser(labels, guidance=3.0, clip=None)
    cond = gen.process.denoiser(gen.net, labels)
    uncond = gen.process.denoiser(gen.net, torch.full_like(labels, 10))  # the null class
    assert isinstance(guided, GuidedDenoiser)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = make_timesteps(gen.process, 5, "karras")[2]
    with torch.no_grad():
        got, c, u = guided(x, t), cond(x, t), uncond(x, t)
    torch.testing.assert_close(got.x0, u.x0 + 3.0 * (c.x0 - u.x0))
    torch.testing.assert_close(got.eps, u.eps + 3.0 * (c.eps - u.eps))
    plain = gen.generate(2, classes=[2, 7], guidance=1.0, seed=0)
    assert not torch.equal(gen.generate(2, classes=[2, 7], guidance=3.0, seed=0), plain)


def test_edm_samples_on_the_karras_grid_whatever_the_sampler(run):
    """EDM's time is its noise level: a sampler whose own default grid is uniform (DDIM) gets
    the Karras grid of eq. 5 on it when no spacing is asked for; on flow it keeps its uniform
    grid in t, which suits the straight paths."""
    process, _, gen = run
    seen = []
    gen.generate(1, sampler="ddim", steps=6, callback=seen.append)
    want = make_timesteps(gen.process, 6, "karras" if process == "edm" else "uniform")
    assert [info["t"] for info in seen] == pytest.approx(want.tolist(), rel=1e-12)


def test_difflab_sample_says_what_it_samples_with(run, tmp_path, capsys):
    _, folder, _ = run
    out = tmp_path / "s.png"
    assert main(["sample", str(folder / "last"), "--class", "3", "-n", "2", "--out", str(out)]) == 0
    assert out.is_file()
    assert (
        "difflab: sampling with heun, 4 steps, guidance 2 (the checkpoint's [sample] "
        "settings; --sampler/--steps/--guidance override)"
    ) in capsys.readouterr().out


def test_difflab_info_shows_only_the_settings_the_process_reads(run, capsys):
    process, folder, _ = run
    assert main(["info", str(folder / "last")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("diffusion"))
    read = {"edm": "'edm_sigma_max': 80.0", "flow": "'flow_time_sampling': 'logit_normal'"}
    assert f"'process': '{process}'" in line and read[process] in line
    for other in ("schedule", "snr_gamma", "ve_sigma", "flow_" if process == "edm" else "edm_"):
        assert other not in line


# ------------------------------------------------------------------ latent runs
def test_a_latent_edm_run_trains_and_samples(tmp_path):
    data = {"name": "digits", "limit": 200}
    steps = {
        "max_steps": 2,
        "precision": "fp32",
        "threads": 1,
        "batch_size": 16,
        "warmup_steps": 1,
        "log_every": 1,
    }
    ae = Trainer(
        config_from_dict(
            {
                "data": data,
                "train": steps,
                "model": {"preset": "kl-f4-28", "overrides": {"channels": [8, 16], "groups": 4}},
            }
        ),
        tmp_path / "ae",
        quiet=True,
    )
    ae.train()
    tr = Trainer(
        config_from_dict(
            {
                "data": data,
                "train": steps,
                "latent": {"autoencoder": str(tmp_path / "ae" / "last")},
                "diffusion": {"process": "edm", "sigma_data": 1.0},
                "model": {
                    "preset": "ddpm-small-28",
                    "overrides": {
                        "base_channels": 16,
                        "groups": 4,
                        "channel_mults": [1, 2],
                        "attention_resolutions": [],
                        "time_scale": 250,
                    },
                },
                "sample": {"sampler": "heun", "steps": 3, "clip": "none"},
            }
        ),
        tmp_path / "ldm",
        quiet=True,
    )
    assert type(tr.objective) is LatentPreconditionedObjective
    tr.train()
    gen = Generator.from_checkpoint(tmp_path / "ldm" / "last", device="cpu")
    assert gen.process.sigma_data == 1.0 and gen.autoencoder is not None
    images = gen.generate(2, seed=0)
    assert images.shape == (2, 1, 8, 8) and images.dtype == torch.uint8


# ------------------------------------------------------------------ learning
def held_out_loss(process, net, images, seed=7):
    """The process' loss on fixed images, noise levels and noise."""
    g = torch.Generator().manual_seed(seed)
    x0 = images.float() / 127.5 - 1
    t = process.sample_t(len(x0), g)
    noise = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        return float(process.loss_at(net, x0, t, noise).mean())


# process -> held-out loss at initialisation, and the bar after 60 steps (measured 0.97 for
# EDM and 0.71 for flow on an AMD EPYC, from 1.72 and 1.75).
LEARNING_BARS = {"edm": (1.72, 1.2), "flow": (1.75, 1.0)}


@pytest.mark.parametrize("process", ["edm", "flow"])
def test_a_tiny_model_learns(tmp_path, process):
    """60 steps of batch 16 on 200 digits (a few seconds); the held-out loss on 200 other
    digits at fixed noise must fall under a bar well below where it started."""
    start, bar = LEARNING_BARS[process]
    tr = Trainer(
        tiny_config(
            "train.max_steps=60",
            "train.precision=fp32",
            "train.threads=1",
            "train.log_every=60",
            *PROCESS_SETS[process],
        ),
        tmp_path,
        device="cpu",
        quiet=True,
    )
    held = load_dataset(config_from_dict({"data": {"name": "digits"}}).data).images[-200:]
    before = held_out_loss(tr.process, tr.net, held)
    tr.train()
    after = held_out_loss(tr.process, tr.net, held)
    assert before == pytest.approx(start, rel=0.05)
    assert after < bar < before
