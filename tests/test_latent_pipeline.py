"""Latent text-to-image end to end on the 8x8 digits: autoencoder -> latent diffusion with the
real MiniLM text encoder -> one checkpoint folder -> Generator: prompts, guidance, negative
prompts, img2img, inpainting, and the errors for bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.checkpoints.components import add_caption_bank
from difflab.checkpoints.store import export_for_inference, load_checkpoint, save_checkpoint
from difflab.config import config_from_dict
from difflab.data.captions import caption_table
from difflab.data.transforms import to_uint8
from difflab.diffusion.denoiser import InpaintingDenoiser
from difflab.diffusion.oracles import GaussianMixtureOracle
from difflab.diffusion.process import make_process
from difflab.models.caption_bank import COMPONENT
from difflab.pipeline import Generator
from difflab.samplers import default_timesteps, get_sampler
from difflab.samplers.timesteps import truncate_timesteps
from difflab.training.trainer import Trainer

DATA = {"name": "digits", "limit": 300}
TRAIN = {
    "batch_size": 32,
    "max_steps": 4,
    "precision": "fp32",
    "log_every": 2,
    "sample_every": 1000,
    "checkpoint_every": 100,
    "warmup_steps": 1,
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    ae_cfg = config_from_dict(
        {
            "data": DATA,
            "model": {"preset": "kl-f4-28", "overrides": {"channels": [8, 16], "groups": 4}},
            "train": TRAIN,
        }
    )
    ae = Trainer(ae_cfg, root / "ae", quiet=True)
    ae.train()
    txt_cfg = config_from_dict(
        {
            "data": DATA,
            "latent": {"autoencoder": str(root / "ae" / "last")},
            "text": {"encoder": "minilm"},
            "model": {
                "preset": "ddpm-small-28",
                "overrides": {
                    "base_channels": 16,
                    "groups": 4,
                    "channel_mults": [1, 2],
                    "attention_resolutions": [],
                    "transformer_resolutions": [4],
                    "context_dim": 384,
                    "transformer_head_dim": 8,
                },
            },
            "train": TRAIN,
            "sample": {"sampler": "ddim", "steps": 5, "clip": "none"},
        }
    )
    trainer = Trainer(txt_cfg, root / "txt", quiet=True)
    trainer.train()
    return root, trainer


@pytest.fixture(scope="module")
def gen(folders):
    root, _ = folders
    return Generator.from_checkpoint(root / "txt" / "last", device="cpu")


def test_checkpoint_is_one_folder_with_its_autoencoder(folders, tmp_path):
    root, trainer = folders
    ck = load_checkpoint(root / "txt" / "last")
    assert ck.config["kind"] == "latent-diffusion"
    assert ck.config["text_encoder"]["name"] == "minilm"
    assert ck.config["model_shape"] == [4, 4, 4] and ck.config["image_shape"] == [1, 8, 8]
    scale = ck.config["autoencoder"]["latent_scale"]
    assert ck.components["autoencoder"]["scale_factor"].item() == pytest.approx(scale)
    # The latent scale was fitted on the data: unit-std latents.
    z = trainer.autoencoder.to_latent(
        trainer.data.images[:200].float() / 127.5 - 1, torch.Generator().manual_seed(0)
    )
    assert float(z.std()) == pytest.approx(1.0, abs=0.1)
    out = export_for_inference(root / "txt" / "last", tmp_path / "exp", dtype=torch.float16)
    assert (out / "autoencoder.safetensors").is_file()
    # An export is shared: it names the autoencoder by its run, not by a path on this machine.
    exported = load_checkpoint(out).config
    assert ck.config["autoencoder"]["source"].startswith(str(root))
    assert exported["autoencoder"]["source"] == "ae/last"
    assert exported["run"]["latent"]["autoencoder"] == "ae/last"
    g16 = Generator.from_checkpoint(out, device="cpu")
    assert g16.generate(2, prompt="a zero", steps=3).shape == (2, 1, 8, 8)


def test_report_of_a_latent_run(folders, tmp_path):
    """The report of a latent run draws its forward process on latents, decoded."""
    from difflab.runs import report

    _, trainer = folders
    paths = report.write_report(trainer, tmp_path / "rep", command=["difflab", "train"])
    assert Image.open(paths["forward"]).size[0] > 300 and paths["samples"].is_file()


def test_prompts_guidance_and_batch_invariance(gen):
    a = gen.generate(4, prompt=["a seven", "the digit one"], guidance=3.0, steps=4, seed=3)
    assert a.shape == (4, 1, 8, 8) and a.dtype == torch.uint8
    b = torch.cat([
        gen.generate(4, prompt=["a seven", "the digit one"], guidance=3.0, steps=4, seed=3,
                     batch_size=3),
    ])
    assert torch.equal(a, b)  # each sample's noise is its own, whatever the batch size
    neg = gen.generate(4, prompt="a seven", guidance=3.0, negative_prompt="a one", steps=4)
    assert neg.shape == a.shape


def test_bad_text_input_is_refused(gen):
    with pytest.raises(ValueError, match="empty"):
        gen.generate(1, prompt="   ", steps=2)
    with pytest.raises(ValueError, match="negative prompt needs guidance"):
        gen.generate(1, prompt="a two", negative_prompt="a three", steps=2)
    with pytest.raises(ValueError, match="negative prompt steers a prompt .*: give a prompt"):
        gen.generate(1, negative_prompt="a three", guidance=3.0, steps=2)  # not: "guidance"
    with pytest.warns(UserWarning, match="truncat"):
        gen.generate(1, prompt=" ".join(["seven"] * 200), steps=2)


def test_img2img_strength(gen, folders):
    _, trainer = folders
    image = trainer.data.images[:2]
    same = gen.img2img(image, "a zero", strength=0.0)
    ae = gen.autoencoder
    with torch.no_grad():
        recon = ae.decode(ae.encode(image.float() / 127.5 - 1).mode())
    assert torch.equal(same, to_uint8(recon))
    out = gen.img2img(image, "a zero", strength=0.5, steps=10, seed=1)
    assert out.shape == (2, 1, 8, 8)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"strength must be a number in \[0, 1\]"):
            gen.img2img(image, "a zero", strength=bad)


def test_truncated_grid_starts_at_strength():
    process = make_process("discrete", schedule="cosine", T=1000)
    ts = default_timesteps("ddim", process, 50)
    kept = truncate_timesteps(ts, process, 0.3)
    assert float(kept[0]) <= 0.3 * 999 + 1e-6 and float(kept[-1]) == float(ts[-1])
    assert 10 <= len(kept) <= 20


def test_inpaint_keeps_known_pixels_exactly(gen, folders):
    _, trainer = folders
    image = trainer.data.images[5]
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:, 4:] = True
    out = gen.inpaint(image, mask, "a four", n=3, steps=5)
    assert out.shape == (3, 1, 8, 8)
    assert torch.equal(out[:, :, :, :4], image[None, :, :, :4].expand(3, -1, -1, -1))
    with pytest.raises(ValueError, match="mask is 7x7, image 8x8"):
        gen.inpaint(image, torch.ones(7, 7, dtype=torch.bool), "a four")


def test_images_of_another_size_or_mode(gen):
    with pytest.raises(ValueError, match="resize it to 8x8"):
        gen.img2img(torch.zeros(1, 28, 28, dtype=torch.uint8), "a one", strength=0.5)
    with pytest.raises(ValueError, match="looks like 0..255 pixels"):  # floats are 0..1
        gen.img2img(torch.full((1, 8, 8), 200.0), "a one", strength=0.5)
    rgb = Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8), "RGB")  # converted to L
    assert gen.img2img(rgb, "a one", strength=0.0).shape == (1, 1, 8, 8)


def test_inpainting_denoiser_pins_the_known_region_for_any_sampler():
    """With the exact denoiser of a Gaussian mixture, every sampler's result equals the known
    image outside the mask (up to float error) and differs inside it."""
    process = make_process("discrete", schedule="cosine", T=1000)
    means = torch.tensor([[1.0] * 8 + [-1.0] * 8, [-1.0] * 8 + [1.0] * 8]) * 0.8
    oracle = GaussianMixtureOracle(process, means, 0.2)
    known = torch.full((2, 1, 4, 4), 0.3)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 2:] = 1
    for name in ("ddim", "dpmpp_2m", "heun", "ddpm"):
        den = InpaintingDenoiser(oracle, known, mask)
        ts = default_timesteps(name, process, 10 if name != "ddpm" else 100)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 1, 4, 4, generator=g) * process.prior_std()
        out = get_sampler(name)(den, x, ts, generator=g)
        assert torch.allclose(out[..., :2], known[..., :2], atol=1e-4), name
        assert not torch.allclose(out[..., 2:], known[..., 2:], atol=1e-2), name


def test_cli_sample_img2img_inpaint(folders, tmp_path, capsys):
    from difflab.cli import main

    root, trainer = folders
    ckpt = str(root / "txt" / "last")
    Image.fromarray(trainer.data.images[0, 0].numpy()).convert("RGB").save(tmp_path / "in.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[4:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    common = ["--steps", "3", "-n", "2"]
    assert main(["sample", ckpt, "--prompt", "a three", "--guidance", "2",
                 "--negative-prompt", "an eight", *common,
                 "--out", str(tmp_path / "s.png")]) == 0
    assert main(["img2img", ckpt, str(tmp_path / "in.png"), "--prompt", "a three",
                 "--strength", "0.5", *common, "--out", str(tmp_path / "i.png")]) == 0
    assert main(["inpaint", ckpt, str(tmp_path / "in.png"), str(tmp_path / "mask.png"),
                 "--prompt", "a three", *common, "--out", str(tmp_path / "p.png")]) == 0
    for name in ("s.png", "i.png", "p.png"):
        assert Image.open(tmp_path / name).size[0] > 2 * 8  # a grid of two upscaled images
    assert main(["img2img", ckpt, str(tmp_path / "in.png"), "--prompt", "a three",
                 "--strength", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "--strength" in err and ">= 0 and <= 1, got 1.5" in err
    assert main(["sample", str(root / "ae" / "last")]) == 2
    assert "autoencoder" in capsys.readouterr().err


def test_trainable_text_encoder_trains_with_the_net(folders, tmp_path):
    """text.encoder = "trainable": the small encoder is part of the checkpointed net, gets
    gradients, and the Generator reloads it with the net's weights (not fresh ones)."""
    root, _ = folders
    cfg = config_from_dict({
        "data": DATA,
        "latent": {"autoencoder": str(root / "ae" / "last")},
        "text": {"encoder": "trainable", "width": 32, "depth": 1},
        "model": {"preset": "ddpm-small-28", "overrides": {
            "base_channels": 16, "groups": 4, "channel_mults": [1, 2],
            "attention_resolutions": [], "transformer_resolutions": [4],
            "context_dim": 32, "transformer_head_dim": 8}},
        "train": TRAIN,
    })
    trainer = Trainer(cfg, tmp_path / "run", quiet=True)
    before = trainer.net.text.token_embedding.weight.detach().clone()
    trainer.train()
    assert not torch.equal(before, trainer.net.text.token_embedding.weight)
    gen = Generator.from_checkpoint(tmp_path / "run" / "last", device="cpu")
    assert torch.equal(
        gen.text_encoder.token_embedding.weight, trainer.ema.model.text.token_embedding.weight
    )
    assert gen.generate(2, prompt="a five", guidance=2.0, steps=3).shape == (2, 1, 8, 8)
    bad = config_from_dict({**cfg.to_dict(), "text": {"encoder": "minilm"}})
    with pytest.raises(ValueError, match="context_dim = 384"):
        Trainer(bad, tmp_path / "bad", quiet=True)


def pooled_text_config(root, text=None, train=None):
    """A tiny latent text model reading MiniLM's sentence embedding (text.tokens = "pooled")."""
    return config_from_dict({
        "data": DATA,
        "latent": {"autoencoder": str(root / "ae" / "last")},
        "text": {"encoder": "minilm", "tokens": "pooled", **(text or {})},
        "model": {"preset": "ddpm-small-28", "overrides": {
            "base_channels": 16, "groups": 4, "channel_mults": [1, 2],
            "attention_resolutions": [], "transformer_resolutions": [4],
            "context_dim": 384, "transformer_head_dim": 8, "pooled_text": True}},
        "train": train or TRAIN,
    })


def test_pooled_sentence_embedding_run_round_trips(folders, tmp_path):
    """text.tokens = "pooled" with pooled_text: the run trains on MiniLM's sentence embedding
    alone, and its checkpoint rebuilds the same encoder (one token per prompt)."""
    root, _ = folders
    cfg = pooled_text_config(root)
    trainer = Trainer(cfg, tmp_path / "run", quiet=True)
    assert trainer.objective.text.tokens[0].shape[1:] == (1, 384)  # cached: one token per caption
    trainer.train()
    gen = Generator.from_checkpoint(tmp_path / "run" / "last", device="cpu")
    assert gen.text_encoder.tokens == "pooled" and gen.net.config.pooled_text
    assert gen.generate(2, prompt="a handwritten five", guidance=2.0, steps=3).shape == (2, 1, 8, 8)
    bad = config_from_dict(
        {**cfg.to_dict(), "text": {"encoder": "trainable", "width": 384, "tokens": "pooled"}}
    )
    with pytest.raises(ValueError, match="text.tokens = 'pooled' applies to the pretrained"):
        Trainer(bad, tmp_path / "bad", quiet=True)
    bad = config_from_dict({**cfg.to_dict(), "text": {"encoder": "trainable", "layer": 5}})
    with pytest.raises(ValueError, match="text.layer = 5 applies to the pretrained minilm"):
        Trainer(bad, tmp_path / "bad", quiet=True)
    bad = config_from_dict({**cfg.to_dict(), "text": {**cfg.to_dict()["text"], "layer": 4}})
    with pytest.raises(ValueError, match="text.layer = 4 chooses the word-piece states"):
        Trainer(bad, tmp_path / "bad", quiet=True)


def test_pooled_run_reads_prompts_through_its_caption_bank(folders, tmp_path):
    """A "pooled" run saves its captions' sentence embeddings in every checkpoint; sampling
    reads a prompt as the blend of its nearest captions: k = 1 turns an unseen prompt into
    exactly its nearest caption's embedding, the run's default k is used unless told, and
    0 gives the prompt's own embedding. Older checkpoints get their bank with
    add_caption_bank; checkpoints without one refuse retrieval clearly."""
    root, _ = folders
    cfg = pooled_text_config(root, {"nearest_captions": 4}, {**TRAIN, "max_steps": 2})
    trainer = Trainer(cfg, tmp_path / "run", quiet=True)
    trainer.train()
    ck = load_checkpoint(tmp_path / "run" / "last")
    assert COMPONENT in ck.components
    gen = Generator.from_checkpoint(tmp_path / "run" / "last", device="cpu")
    bank = gen.caption_bank
    assert bank.texts == caption_table("digits").texts
    own = gen.text_encoder.encode(bank.texts[:3]).tokens[:, 0]
    torch.testing.assert_close(bank.embeddings[:3], own, rtol=0, atol=1e-6)

    unseen = "the digit you get from three plus four"
    (nearest_text, _), = gen.read_prompts([unseen], k=1)[0]
    snapped = gen._text([unseen], 1, nearest=1).tokens[:, 0]
    torch.testing.assert_close(snapped, bank.embeddings[bank.texts.index(nearest_text)][None])
    raw = gen._text([unseen], 1, nearest=0).tokens[:, 0]
    assert (snapped - raw).abs().max() > 1e-3  # it did move the prompt
    assert gen.nearest_captions() == 4
    # Two steps leave the zero-initialised text paths near zero: jolt the weights so that
    # the pictures depend on the text, and the three readings can be told apart.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in gen.net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    kw = dict(prompt=unseen, guidance=2.0, steps=3, seed=1)
    assert torch.equal(gen.generate(2, **kw), gen.generate(2, nearest_captions=4, **kw))
    assert not torch.equal(gen.generate(2, **kw), gen.generate(2, nearest_captions=0, **kw))
    with pytest.raises(ValueError, match="integer >= 0"):
        gen.generate(1, prompt=unseen, nearest_captions=-1, steps=2)

    # fp16 export keeps the bank; a checkpoint saved without one gets it back.
    out = export_for_inference(tmp_path / "run" / "last", tmp_path / "exp", dtype=torch.float16)
    assert Generator.from_checkpoint(out, device="cpu").caption_bank.texts == bank.texts
    save_checkpoint(tmp_path / "old", config=ck.model_config(), model=ck.model,
                    components={"autoencoder": ck.components["autoencoder"]})
    old = Generator.from_checkpoint(tmp_path / "old", device="cpu")
    assert old.caption_bank is None and old.nearest_captions() == 0
    with pytest.raises(ValueError, match="has none: use nearest_captions=0"):
        old.generate(1, prompt=unseen, nearest_captions=2, steps=2)
    add_caption_bank(tmp_path / "old")
    again = Generator.from_checkpoint(tmp_path / "old", device="cpu").caption_bank
    assert again.texts == bank.texts
    torch.testing.assert_close(again.embeddings, bank.embeddings, rtol=0, atol=1e-6)


def test_per_token_models_have_no_caption_bank(gen):
    assert gen.caption_bank is None and gen.nearest_captions() == 0
    with pytest.raises(ValueError, match="caption bank"):
        gen.generate(1, prompt="a seven", nearest_captions=3, steps=2)


def test_a_latent_checkpoint_lends_its_autoencoder_to_a_new_run(folders, tmp_path):
    """latent.autoencoder may name a latent diffusion checkpoint (a run or a shipped pipeline):
    its own autoencoder is used, the same weights as the autoencoder run it was trained on;
    a checkpoint that carries none is refused by name."""
    from difflab.checkpoints.components import load_autoencoder
    from difflab.checkpoints.store import CheckpointError

    root, _ = folders
    own = load_autoencoder(root / "ae" / "last").state_dict()
    lent = load_autoencoder(root / "txt" / "last").state_dict()
    assert own.keys() == lent.keys()
    # the scale factor is refitted by each run; every weight is the autoencoder run's
    assert all(torch.equal(own[k], lent[k]) for k in own if k != "scale_factor")
    pixel = config_from_dict({"data": DATA, "model": {"preset": "ddpm-tiny-28", "overrides": {
        "base_channels": 8, "groups": 4}}, "train": TRAIN})
    Trainer(pixel, tmp_path / "pixel", quiet=True).train()
    with pytest.raises(CheckpointError, match="'pixel-diffusion' model, not an autoencoder"):
        load_autoencoder(tmp_path / "pixel" / "last")
