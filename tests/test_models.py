"""Tests of difflab.models: shapes, embeddings, conditioning, validation, learning."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from difflab.models import (
    PRESETS,
    ArticleUNet,
    CrossAttention,
    GaussianFourierFeatures,
    LinearAttention2d,
    SelfAttention2d,
    SinusoidalEmbedding,
    SinusoidalTable,
    UNet,
    UNetConfig,
    count_parameters,
    estimate_flops,
    get_preset,
    preset_config,
    sinusoidal_embedding,
)
from difflab.models.blocks import Downsample, Upsample


def perturb_zero_inits(net: nn.Module, seed: int = 0) -> nn.Module:
    """Give the zero-initialised layers random weights, so every path affects the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return net


def small(**kw) -> UNetConfig:
    """A fast config: base 16, two levels, unless overridden."""
    base = dict(base_channels=16, channel_mults=(1, 2), attention_resolutions=(), image_size=8)
    return UNetConfig(**{**base, **kw})


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    ("config", "shape"),
    [
        (UNetConfig(), (2, 1, 28, 28)),
        (UNetConfig(block="convnext", skip="add"), (2, 1, 28, 28)),
        # 28 -> 14 -> 7 -> 4 must come back up as 7, 14, 28.
        (
            UNetConfig(base_channels=16, channel_mults=(1, 2, 2, 4), attention_resolutions=(4,)),
            (2, 1, 28, 28),
        ),
        (
            UNetConfig(
                base_channels=16,
                channel_mults=(1, 2, 2),
                attention_resolutions=(7,),
                linear_attention_resolutions=(28, 14),
                downsample="pixel_unshuffle",
                skip="add",
            ),
            (2, 1, 28, 28),
        ),
        (
            UNetConfig(
                in_channels=3,
                image_size=32,
                base_channels=16,
                channel_mults=(1, 2, 2, 2),
                attention_resolutions=(8,),
                linear_attention_resolutions=(16,),
                num_classes=10,
                num_res_blocks=2,
            ),
            (2, 3, 32, 32),
        ),
        (small(attention_resolutions=(4,), block="convnext"), (3, 1, 8, 8)),
        (small(time_embedding="fourier", scale_shift=False, dropout=0.1), (3, 1, 8, 8)),
        # A net built for 8x8 still takes other sizes, including odd ones.
        (small(), (2, 1, 9, 9)),
    ],
    ids=[
        "default",
        "convnext-add",
        "odd-4-levels",
        "linear-unshuffle",
        "rgb32-class",
        "8x8",
        "fourier",
        "odd-9",
    ],
)
def test_output_shape_matches_input(config: UNetConfig, shape: tuple[int, ...]) -> None:
    net = UNet(config)
    x = torch.randn(shape)
    t = torch.rand(shape[0]) * 999
    cond = torch.randint(0, 10, (shape[0],)) if config.num_classes else None
    out = net(x, t, cond)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_out_channels() -> None:
    net = UNet(small(in_channels=3, out_channels=6))
    assert net(torch.randn(2, 3, 8, 8), torch.tensor([1.0, 2.0])).shape == (2, 6, 8, 8)


def test_upsample_uses_skip_size_for_odd_sides() -> None:
    down, up = Downsample(4, 4), Upsample(4, 4)
    for side in (28, 14, 7, 5, 1):
        x = torch.randn(1, 4, side, side)
        assert up(down(x), size=x.shape[-2:]).shape == x.shape
    assert Downsample(4, 8, "pixel_unshuffle")(torch.randn(1, 4, 7, 7)).shape == (1, 8, 4, 4)


DENOISER_PRESETS = sorted(n for n, p in PRESETS.items() if p.kind != "autoencoder")


@pytest.mark.parametrize("name", DENOISER_PRESETS)
def test_presets_build_and_keep_shape(name: str) -> None:
    net = get_preset(name)
    config = PRESETS[name].config
    c, side = (config.in_channels, config.image_size) if config is not None else (1, 28)
    x = torch.randn(2, c, side, side)
    t = torch.tensor([0.01, 1.0]) if name.startswith("score") else torch.tensor([0.0, 999.0])
    assert net(x, t).shape == x.shape


def test_unknown_preset_lists_names() -> None:
    with pytest.raises(ValueError, match="ddpm-small-28") as err:
        get_preset("no-such-net")
    assert "fashion-article" in str(err.value)


def test_preset_overrides() -> None:
    net = get_preset("ddpm-small-28", num_classes=10, in_channels=3)
    assert net.config.num_classes == 10 and net.config.in_channels == 3
    with pytest.raises(ValueError, match="unknown override.*'num_classes'"):
        get_preset("fashion-article", num_classes=10)
    with pytest.raises(ValueError, match="unknown override.*'width'"):
        get_preset("ddpm-small-28", width=3)


def test_default_preset_parameter_count() -> None:
    n = count_parameters(get_preset("ddpm-small-28"))
    assert 1.2e6 <= n <= 1.5e6, n
    assert preset_config("ddpm-small-28") == UNetConfig()


def test_article_unet_matches_the_article_layout() -> None:
    net = ArticleUNet()
    # The article prints 606,852: its count includes the frozen 1000 x 100 table and the
    # LayerNorm(10, 28, 28) it builds but never uses in the last block.
    assert count_parameters(net) == 606_852 - 100 * 1000 - 2 * 10 * 28 * 28
    with pytest.raises(ValueError, match="unconditional"):
        net(torch.randn(1, 1, 28, 28), 3.0, torch.tensor([1]))


def _fingerprint(build) -> tuple[int, str, int, float, float]:
    """Keys + shapes (hashed), parameter count and a forward checksum of a seeded net."""
    torch.manual_seed(0)
    net = build()
    sd = net.state_dict()
    keys = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in sd.items())
    digest = hashlib.sha256(keys.encode()).hexdigest()[:16]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():  # zero-initialised layers: give them weights, so all count
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 1, 28, 28, generator=g)
    sinusoidal = net.config.time_embedding == "sinusoidal"
    t = torch.tensor([3.0, 500.0]) if sinusoidal else torch.tensor([0.1, 0.9])
    cond = torch.tensor([3, 10]) if net.config.num_classes else None
    with torch.no_grad():
        y = net(x, t, cond).double()
    numel = sum(v.numel() for v in sd.values())
    return len(sd), digest, numel, float(y.sum()), float(y.abs().sum())


# Recorded before spatial transformers were added to UNet: checkpoints of these presets are
# being trained and will ship, so their keys, shapes, initialisation and outputs must stay.
_SHIPPED = {
    "ddpm-small-28": (88, "2ed7f596b795e23e", 1389537, -213.49040290992707, 514.9379731984809),
    "ddpm-small-28+classes": (
        89,
        "e727e222a9a28447",
        1392353,
        -471.83291201433167,
        625.6405698196031,
    ),
    "score-unet-28": (109, "e5f72f8b9ae46583", 4777057, -60.10043719224632, 529.4934988114983),
}


@pytest.mark.parametrize("name", sorted(_SHIPPED))
def test_shipped_presets_are_unchanged(name: str) -> None:
    build = {
        "ddpm-small-28": lambda: UNet(UNetConfig()),
        "ddpm-small-28+classes": lambda: UNet(UNetConfig(num_classes=10)),
        "score-unet-28": lambda: get_preset("score-unet-28"),
    }[name]
    n_keys, digest, numel, total, magnitude = _fingerprint(build)
    want = _SHIPPED[name]
    assert (n_keys, digest, numel) == want[:3], "state_dict keys or shapes changed"
    assert total == pytest.approx(want[3], abs=1e-3), "forward output changed"
    assert magnitude == pytest.approx(want[4], rel=1e-5), "forward output changed"


def test_score_presets_differ_only_in_skip() -> None:
    concat, add = preset_config("score-unet-28"), preset_config("score-unet-28-add")
    assert (concat.skip, add.skip) == ("concat", "add")
    assert concat.time_embedding == "fourier" and concat.channels == (32, 64, 128, 256)


# ---------------------------------------------------------------- embeddings


def test_sinusoidal_matches_closed_form() -> None:
    dim = 8
    t = torch.tensor([0.0, 1.0, 17.0, 999.0])
    emb = sinusoidal_embedding(t, dim)
    for row, tv in enumerate(t.tolist()):
        for i in range(dim // 2):
            w = 10000.0 ** (-2 * i / dim)  # Vaswani: 10000^(2i/d) in the denominator
            assert emb[row, i].item() == pytest.approx(math.sin(tv * w), abs=1e-5)
            assert emb[row, dim // 2 + i].item() == pytest.approx(math.cos(tv * w), abs=1e-5)
    inter = sinusoidal_embedding(t, dim, interleave=True)
    assert torch.equal(inter[:, 0::2], emb[:, : dim // 2])
    assert torch.equal(inter[:, 1::2], emb[:, dim // 2 :])
    assert sinusoidal_embedding(t, 7).shape == (4, 7)  # odd: a zero column is appended


def test_sinusoidal_distinct_steps_distinct_embeddings() -> None:
    emb = SinusoidalEmbedding(32)(torch.arange(1000).float())
    dist = torch.cdist(emb, emb) + torch.eye(1000) * 1e3
    assert dist.min() > 1e-2
    # Continuous times in [0, 1] scaled by 1000 land on the same code as the steps.
    assert torch.allclose(SinusoidalEmbedding(32)(torch.tensor([0.5]) * 1000), emb[500:501])


def test_sinusoidal_table_is_frozen_lookup() -> None:
    table = SinusoidalTable(1000, 16)
    t = torch.tensor([0.0, 3.0, 2.6, 999.0])
    expected = sinusoidal_embedding(torch.tensor([0.0, 3.0, 3.0, 999.0]), 16, interleave=True)
    assert torch.allclose(table(t), expected, atol=1e-5)
    assert list(table.parameters()) == [] and "table" not in table.state_dict()
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        table(torch.tensor([1000.0]))


def test_fourier_features_shape_and_determinism() -> None:
    t = torch.rand(5)
    a, b = GaussianFourierFeatures(64, scale=16.0), GaussianFourierFeatures(64, scale=16.0)
    fa = a(t)
    assert fa.shape == (5, 64)
    assert torch.equal(fa, b(t)) and torch.equal(fa, a(t))
    assert not torch.allclose(fa, GaussianFourierFeatures(64, seed=1)(t))
    assert torch.allclose(fa[:, :32] ** 2 + fa[:, 32:] ** 2, torch.ones(5, 32), atol=1e-5)
    assert torch.equal(a.weight, a.state_dict()["weight"])  # W travels with the weights
    with pytest.raises(ValueError, match="even"):
        GaussianFourierFeatures(5)


def test_scalar_t_and_time_scale() -> None:
    torch.manual_seed(0)
    net = perturb_zero_inits(UNet(small()))
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(net(x, 250.0), net(x, torch.full((3,), 250.0)))
    scaled = perturb_zero_inits(UNet(small(time_scale=1000.0)))
    scaled.load_state_dict(net.state_dict())
    assert torch.allclose(scaled(x, torch.full((3,), 0.25)), net(x, 250.0), atol=1e-5)
    assert not torch.allclose(net(x, 10.0), net(x, 500.0))
    with pytest.raises(ValueError, match="t must"):
        net(x, torch.zeros(2))


# ---------------------------------------------------------------- attention


def test_self_attention_matches_naive() -> None:
    torch.manual_seed(0)
    layer = perturb_zero_inits(SelfAttention2d(16, num_heads=2, groups=4))
    x = torch.randn(2, 16, 5, 5)
    tokens = layer.norm(x).flatten(2).transpose(1, 2)  # (B, N, C)
    q, k, v = layer.qkv(tokens).chunk(3, dim=-1)
    outs = []
    for h in range(2):
        sl = slice(8 * h, 8 * h + 8)
        a = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(8), dim=-1)
        outs.append(a @ v[..., sl])
    expected = x + layer.proj(torch.cat(outs, -1)).transpose(1, 2).reshape(2, 16, 5, 5)
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_linear_attention_matches_formula() -> None:
    torch.manual_seed(0)
    layer = perturb_zero_inits(LinearAttention2d(8, num_heads=1, groups=2))
    x = torch.randn(1, 8, 4, 4)
    tokens = layer.norm(x).flatten(2).transpose(1, 2)[0]  # (N, C)
    q, k, v = layer.qkv(tokens).chunk(3, dim=-1)
    out = q.softmax(dim=-1) @ (k.softmax(dim=0).T @ v)  # (N, d): Shen et al., eq. (5)
    expected = x + layer.proj(out).T.reshape(1, 8, 4, 4)
    assert torch.allclose(layer(x), expected, atol=1e-5)


@pytest.mark.parametrize("length", [6, 300])  # matmul path and fused path
def test_cross_attention_ignores_masked_context(length: int) -> None:
    torch.manual_seed(0)
    layer = CrossAttention(16, context_dim=12, num_heads=4, zero_out=False)
    x, ctx = torch.randn(2, 300, 16), torch.randn(2, length, 12)
    mask = torch.ones(2, length, dtype=torch.bool)
    mask[:, length // 2 :] = False
    out = layer(x, ctx, mask)
    changed = ctx.clone()
    changed[:, length // 2 :] = 100.0
    assert out.shape == x.shape
    assert torch.allclose(layer(x, changed, mask), out, atol=1e-5)
    assert not torch.allclose(layer(x, changed), layer(x, ctx))
    # A row with nothing to attend to gives exactly zero (no NaN from an empty softmax).
    mask[1] = False
    out = layer(x, ctx, mask)
    assert torch.equal(out[1], torch.zeros_like(out[1])) and torch.isfinite(out).all()
    assert torch.allclose(out[0], layer(x[:1], ctx[:1], mask[:1])[0], atol=1e-6)


# ---------------------------------------------------------------- conditioning


def test_class_label_changes_output_and_null_label_works() -> None:
    torch.manual_seed(0)
    net = perturb_zero_inits(UNet(small(num_classes=3)))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([100.0, 700.0])
    out0 = net(x, t, torch.tensor([0, 0]))
    out1 = net(x, t, torch.tensor([1, 1]))
    null = net(x, t, torch.tensor([3, 3]))  # label == num_classes: the null token
    assert not torch.allclose(out0, out1) and not torch.allclose(out0, null)
    assert torch.allclose(net(x, t), null)  # cond=None means unconditional
    assert net.class_embed.num_embeddings == 4
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        net(x, t, torch.tensor([4, 0]))
    with pytest.raises(ValueError, match="unconditional"):
        UNet(small())(x, t, torch.tensor([0, 1]))


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("block", "transformer"),
        ("skip", "multiply"),
        ("downsample", "maxpool"),
        ("time_embedding", "learned"),
        ("groups", 7),
        ("num_heads", 3),
        ("attention_resolutions", (5,)),
        ("linear_attention_resolutions", (7,)),  # also in attention_resolutions
        ("channel_mults", ()),
        ("dropout", 1.5),
        ("base_channels", 0),
        ("context_dim", 384),
        ("time_scale", -1.0),
    ],
)
def test_bad_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"UNetConfig.{field}"):
        UNetConfig(**{field: value})


def test_bad_config_lists_allowed_values() -> None:
    with pytest.raises(ValueError, match="resnet, convnext"):
        UNetConfig(block="transformer")
    with pytest.raises(ValueError, match=r"allowed: \[7, 14, 28\]"):
        UNetConfig(attention_resolutions=(8,))
    with pytest.raises(ValueError, match="unknown key.*'chanels'"):
        UNet.from_config({"chanels": 3})


def test_config_round_trip_through_json() -> None:
    net = UNet(small(num_classes=10, channel_mults=[1, 2]))
    data = json.loads(json.dumps(net.config_dict()))
    again = UNet.from_config(data)
    assert again.config == net.config
    again.load_state_dict(net.state_dict())


# ---------------------------------------------------------------- training behaviour


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    net = get_preset("ddpm-small-28", num_classes=10)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([5.0, 900.0])
    # At initialisation: every parameter takes part (DDP needs no unused parameters).
    net(x, t, torch.tensor([1, 10])).square().mean().backward()
    assert [n for n, p in net.named_parameters() if p.grad is None] == []
    # With the zero-initialised layers perturbed, every gradient is non-zero.
    perturb_zero_inits(net)
    net.zero_grad(set_to_none=True)
    net(x, t, torch.tensor([1, 10])).square().mean().backward()
    assert [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()] == []


def test_small_unet_overfits_a_fixed_batch() -> None:
    torch.manual_seed(0)
    net = UNet(small(attention_resolutions=(4,)))
    x0, eps = torch.randn(8, 1, 8, 8), torch.randn(8, 1, 8, 8)
    t = torch.linspace(50, 950, 8)
    alpha_bar = torch.cos(t / 1000 * math.pi / 2)[:, None, None, None] ** 2
    xt = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    # Each input comes again at another time with another target: only a net that reads t
    # can fit both (one that ignores t is stuck near half the initial loss).
    xt, t, eps = torch.cat([xt, xt]), torch.cat([t, t.flip(0)]), torch.cat([eps, eps.flip(0)])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = F.mse_loss(net(xt, t), eps).item()
    for _ in range(150):
        loss = F.mse_loss(net(xt, t), eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = F.mse_loss(net(xt, t), eps).item()
    assert final < first / 5, (first, final)


def test_bf16_autocast_forward_and_backward() -> None:
    torch.manual_seed(0)
    net = perturb_zero_inits(UNet(small(attention_resolutions=(4,), num_classes=2)))
    x, t, c = torch.randn(4, 1, 8, 8), torch.tensor([0.0, 10.0, 500.0, 999.0]), torch.arange(4) % 3
    ref = net(x, t, c)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, t, c)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert (out.float() - ref).norm() / ref.norm() < 0.05
    out.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


# ---------------------------------------------------------------- utils


class _OneConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x, t, cond=None):
        return self.conv(x)


def test_estimate_flops_counts_a_conv() -> None:
    expected = 2 * 3 * 8 * 9 * 16 * 16  # multiply-adds x 2 per output pixel
    assert estimate_flops(_OneConv(), (3, 16, 16)) == expected
    assert estimate_flops(_OneConv(), (4, 3, 16, 16)) == expected  # per image
    assert count_parameters(_OneConv()) == 3 * 8 * 9 + 8


def test_estimate_flops_of_default_unet() -> None:
    flops = estimate_flops(UNet(), (1, 28, 28))
    assert 1e8 < flops < 1e9


@pytest.mark.parametrize("side, attends", [(28, [7]), (32, [8]), (64, [16]), (8, [2])])
def test_a_preset_at_another_image_size_attends_at_the_same_level(side: int, attends) -> None:
    """A user's own pictures at 32 or 64 px keep the preset's architecture: attention at its
    third level (7 of 28), where a side of 7 would not exist; a config's own sides win."""
    from difflab.build import build_network, network_spec
    from difflab.config import ModelConfig

    net, spec = build_network(ModelConfig(preset="ddpm-tiny-28"), (3, side, side), None)
    assert spec["config"]["attention_resolutions"] == attends
    x = torch.randn(2, 3, side, side)
    assert net(x, torch.tensor([1, 500])).shape == x.shape
    mine = ModelConfig(preset="ddpm-tiny-28", overrides={"attention_resolutions": [side]})
    assert network_spec(mine, (3, side, side), None)["config"]["attention_resolutions"] == [side]
