"""Spatial transformers (self-attention, cross-attention, feed-forward) and UNet conditioning
through them: class tokens, text tokens with padding masks, the null token, validation."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from difflab.build import TEXT_SETTINGS, grown_network_spec
from difflab.models import UNet, UNetConfig, count_parameters, get_preset, preset_config
from difflab.models.attention import SpatialTransformer, TransformerBlock, attention
from difflab.models.conditioning import TextCondition
from difflab.models.text_refiner import TextRefiner


def perturb_zero_inits(net: nn.Module, seed: int = 0) -> nn.Module:
    """Give the zero-initialised layers random weights, so every path affects the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return net


def small(**kw) -> UNetConfig:
    """Two levels on 8x8 inputs (sides 8 and 4, 4 = the middle), width 16/32."""
    base = dict(
        base_channels=16,
        channel_mults=(1, 2),
        attention_resolutions=(),
        image_size=8,
        time_embed_dim=32,
    )
    return UNetConfig(**{**base, **kw})


def class_net(**kw) -> UNet:
    torch.manual_seed(0)
    cfg = small(num_classes=3, class_context=True, transformer_resolutions=(8, 4), **kw)
    return perturb_zero_inits(UNet(cfg))


def text_net(**kw) -> UNet:
    torch.manual_seed(0)
    return perturb_zero_inits(UNet(small(context_dim=6, transformer_resolutions=(8, 4), **kw)))


X = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
T = torch.tensor([10.0, 700.0])


# ---------------------------------------------------------------- the layer


@pytest.mark.parametrize(("head_dim", "gated"), [(None, True), (4, False)])
def test_spatial_transformer_shapes_and_identity_at_init(head_dim, gated) -> None:
    torch.manual_seed(0)
    layer = SpatialTransformer(16, 12, num_heads=4, depth=2, head_dim=head_dim, gated=gated)
    x, ctx = torch.randn(2, 16, 5, 3), torch.randn(2, 7, 12)
    assert torch.equal(layer(x, ctx), x)  # zero-initialised proj_out: starts as identity
    perturb_zero_inits(layer)
    out = layer(x, ctx)
    assert out.shape == x.shape and not torch.allclose(out, x)
    assert len(layer.blocks) == 2 and layer.proj_in.out_features == 4 * (head_dim or 4)
    with pytest.raises(ValueError, match=r"context must be \(B, L, 12\)"):
        layer(x, torch.randn(2, 7, 5))


def test_spatial_transformer_mask_is_exact_and_empty_context_adds_nothing() -> None:
    torch.manual_seed(0)
    layer = perturb_zero_inits(SpatialTransformer(16, 12, num_heads=2))
    x, ctx = torch.randn(2, 16, 4, 4), torch.randn(2, 5, 12)
    mask = torch.tensor([[True, True, False, True, False], [True] * 5])
    out = layer(x, ctx, mask)
    changed = ctx.clone()
    changed[0, 2], changed[0, 4] = 1e4, -3.0
    assert torch.equal(layer(x, changed, mask), out)  # masked tokens: no effect at all
    changed[0, 1] = 1.0
    assert not torch.allclose(layer(x, changed, mask)[0], out[0])
    none = layer(x, torch.zeros(2, 5, 12), torch.zeros(2, 5, dtype=torch.bool))
    assert torch.isfinite(none).all()
    assert torch.equal(none, layer(x, None))  # attend to nothing == no cross-attention


def test_without_a_position_code_the_transformer_cannot_tell_where_a_token_is() -> None:
    """Every layer of a spatial transformer acts on each token alike and attention is
    permutation-equivariant, so moving the map's pixels around moves its output the same way:
    nothing in it knows left from right. The position code breaks exactly that, and starts
    as nothing at all (zero-initialised), so a trained transformer is unchanged by adding it."""
    torch.manual_seed(0)
    plain = perturb_zero_inits(SpatialTransformer(16, 12, num_heads=2))
    placed = SpatialTransformer(16, 12, num_heads=2, position=True)
    missing, _ = placed.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["position.bias", "position.weight"]
    x, ctx = torch.randn(2, 16, 4, 6), torch.randn(2, 5, 12)
    assert torch.equal(placed(x, ctx), plain(x, ctx))  # zero start: the same function
    mirror = lambda m: m.flip(-1)  # noqa: E731  left <-> right
    assert torch.allclose(plain(mirror(x), ctx), mirror(plain(x, ctx)), atol=1e-5)
    perturb_zero_inits(placed)
    assert not torch.allclose(placed(mirror(x), ctx), mirror(placed(x, ctx)), atol=1e-3)
    # the code is that of each token's row and column, for any map size
    assert placed(torch.randn(1, 16, 3, 5), ctx[:1]).shape == (1, 16, 3, 5)


def test_a_unet_with_transformer_position_has_the_code_in_every_transformer() -> None:
    net = UNet(small(context_dim=6, transformer_resolutions=(8, 4), transformer_position=True))
    transformers = [m for m in net.modules() if isinstance(m, SpatialTransformer)]
    assert transformers and all(t.position is not None for t in transformers)
    assert all(t.position is None for t in text_net().modules()
               if isinstance(t, SpatialTransformer))


@pytest.mark.parametrize("n", [6, 300])  # plain matmul path and fused kernel path
def test_attention_fully_masked_row_is_zero(n: int) -> None:
    q, k, v = torch.randn(3, 2, 1, n, 8).unbind(0)  # each (B=2, nh=1, n, 8)
    mask = torch.ones(2, 1, 1, n, dtype=torch.bool)
    mask[1] = False
    out = attention(q, k, v, mask)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.allclose(out[0], attention(q[:1], k[:1], v[:1]), atol=1e-5)


# ---------------------------------------------------------------- UNet, class tokens


def test_transformer_unet_shapes_and_layout() -> None:
    net = class_net()
    for cond in (None, torch.tensor([0, 2])):
        assert net(X, T, cond).shape == X.shape
    assert net.mid_transformer is not None  # 4 is the middle level
    assert all(s.transformer is not None for st in net.down_stages for s in st)
    assert all(s.transformer is not None for st in net.up_stages for s in st)
    # No text: the class token is time_embed_dim wide; one row per label + the null token.
    assert tuple(net.class_token.weight.shape) == (4, 32)
    assert net.mid_transformer.context_dim == 32


def test_class_token_changes_the_output() -> None:
    net = class_net()
    labels = torch.tensor([1, 1])
    before = net(X, T, labels)
    with torch.no_grad():
        net.class_token.weight[1] += 1.0  # only the cross-attention path sees this
    after = net(X, T, labels)
    assert not torch.allclose(before, after)
    assert torch.equal(net(X, T, torch.tensor([0, 0])), class_net()(X, T, torch.tensor([0, 0])))


def test_null_label_is_a_learned_token() -> None:
    net = class_net()
    null = net(X, T, torch.tensor([3, 3]))  # num_classes = the null label
    assert torch.equal(net(X, T), null)  # cond=None means unconditional
    assert not torch.allclose(null, net(X, T, torch.tensor([0, 0])))
    with torch.no_grad():
        net.class_token.weight[3] += 1.0
    assert not torch.allclose(net(X, T), null)  # the null token is a parameter
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        net(X, T, torch.tensor([4, 0]))


# ---------------------------------------------------------------- UNet, text tokens


def test_text_condition_mask_is_exact() -> None:
    net = text_net(num_classes=3, class_context=True)
    tokens = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(3))
    mask = torch.tensor([[True, True, True, False, False], [True, False, True, True, True]])
    labels = torch.tensor([0, 3])
    out = net(X, T, TextCondition(tokens, mask, labels))
    assert out.shape == X.shape
    changed = tokens.clone()
    changed[0, 3:] = 50.0
    changed[1, 1] = -7.0
    assert torch.equal(net(X, T, TextCondition(changed, mask, labels)), out)
    changed[0, 0] += 1.0  # a real token does matter
    assert not torch.allclose(net(X, T, TextCondition(changed, mask, labels))[0], out[0])
    # Class token appended after the text: context_dim wide.
    assert tuple(net.class_token.weight.shape) == (4, 6)
    assert net(X, T, TextCondition(tokens, None, labels)).shape == X.shape  # no mask


def test_fully_masked_text_is_finite_and_means_no_text() -> None:
    net = text_net()
    empty = TextCondition(torch.zeros(2, 4, 6), torch.zeros(2, 4, dtype=torch.bool))
    out = net(X, T, empty)
    assert torch.isfinite(out).all()
    assert torch.equal(out, net(X, T))  # the empty prompt == unconditional
    text = TextCondition(torch.randn(2, 4, 6), torch.ones(2, 4, dtype=torch.bool))
    assert not torch.allclose(net(X, T, text), out)
    out.square().mean().backward()  # no NaN gradients from the empty softmax either
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_pooled_text_joins_the_time_embedding() -> None:
    """pooled_text adds an MLP of the first text token to the time embedding: a no-op at
    initialisation (zero last layer), "no text" is a zero pooled vector, and it is a path
    of its own: with the transformers' cross-attention cut, the pooled token still matters."""
    cfg = small(context_dim=6, transformer_resolutions=(8, 4))
    tokens = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(3))
    text = TextCondition(tokens, torch.ones(2, 4, dtype=torch.bool))
    torch.manual_seed(0)
    plain = UNet(cfg)
    torch.manual_seed(0)
    pooled = UNet(dataclasses.replace(cfg, pooled_text=True))
    assert torch.equal(pooled(X, T, text), plain(X, T, text))  # created last, zero output

    net = text_net(pooled_text=True)
    empty = TextCondition(torch.randn(2, 3, 6), torch.zeros(2, 3, dtype=torch.bool))
    assert torch.equal(net(X, T, empty), net(X, T))  # the empty prompt == unconditional
    for module in net.modules():  # cut cross-attention: only the pooled path reads text
        if isinstance(module, TransformerBlock):
            nn.init.zeros_(module.attn2.to_v.weight)
    changed = tokens.clone()
    changed[:, 1:] += 1.0  # the per-token states: no effect without cross-attention
    out = net(X, T, text)
    assert torch.equal(net(X, T, TextCondition(changed, text.mask)), out)
    changed[:, 0] += 1.0  # the pooled token: an effect through the time embedding
    assert not torch.allclose(net(X, T, TextCondition(changed, text.mask)), out)


@pytest.mark.parametrize("kind", ["class", "text+class", "text+pooled"])
def test_gradients_reach_every_parameter(kind: str) -> None:
    if kind == "class":
        net, cond = class_net(), torch.tensor([1, 3])
    else:
        extra = dict(pooled_text=True) if kind == "text+pooled" else {}
        net = text_net(num_classes=3, class_context=True, **extra)
        mask = torch.tensor([[True, False, True], [True, True, True]])
        cond = TextCondition(torch.randn(2, 3, 6), mask, torch.tensor([2, 3]))
    net(X, T, cond).square().mean().backward()
    # Every parameter takes part (DDP needs no unused parameters) ...
    assert [n for n, p in net.named_parameters() if p.grad is None] == []
    zero = {n for n, p in net.named_parameters() if not p.grad.any()}
    if kind == "class":
        # ... but a one-token context makes the cross-attention weights identically 1
        # (softmax over one key), so its queries, keys and the norm before them get exactly
        # zero gradient: cross-attending to one class token is a per-class bias at every
        # position, as in the write-up. A text context (several tokens) uses them.
        inert = ("norm2.weight", "norm2.bias", "attn2.to_q.weight", "attn2.to_k.weight")
        assert len(zero) == 3 * len(inert) and all(n.endswith(inert) for n in zero), zero
    else:
        assert zero == set()


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        (dict(num_classes=3, class_context=True, transformer_resolutions=(5,)), "transformer_res"),
        (dict(class_context=True, transformer_resolutions=(4,)), "class_context"),
        (dict(transformer_resolutions=(4,)), "transformer_resolutions"),  # no context
        (dict(context_dim=6), "context_dim"),  # no transformer reads it
        (dict(num_classes=3, class_context=True), "class_context"),
        (dict(context_dim=6, transformer_resolutions=(4,), transformer_depth=0), "transformer_d"),
        (dict(context_dim=6, transformer_resolutions=(4,), num_heads=3), "num_heads"),
        (dict(context_dim=0, transformer_resolutions=(4,)), "context_dim"),
        (dict(pooled_text=True), "pooled_text"),  # no text to pool
        (dict(context_dim=6, transformer_resolutions=(4,), pooled_text=1), "pooled_text"),
        (dict(transformer_position=True), "transformer_position"),  # no transformer to add to
        (dict(context_dim=6, transformer_resolutions=(4,), transformer_position=1),
         "transformer_position"),
    ],
)
def test_bad_config_names_the_field(kw: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"UNetConfig.{field}"):
        small(**kw)


def test_transformer_resolutions_lists_allowed_sides() -> None:
    with pytest.raises(ValueError, match=r"allowed: \[4, 8\]"):
        small(context_dim=6, transformer_resolutions=(2,))
    # An explicit head width lifts the divisibility requirement on num_heads.
    small(
        context_dim=6,
        transformer_resolutions=(4,),
        num_heads=3,
        transformer_head_dim=8,
        mid_attention=False,
    )


def test_bad_conditions_raise_clear_errors() -> None:
    tokens = torch.randn(2, 5, 6)
    with pytest.raises(ValueError, match="context_dim is None"):
        class_net()(X, T, TextCondition(tokens))
    net = text_net()
    with pytest.raises(ValueError, match="context_dim=6"):
        net(X, T, TextCondition(torch.randn(2, 5, 7)))
    with pytest.raises(ValueError, match=r"mask must have shape \(2, 5\)"):
        net(X, T, TextCondition(tokens, torch.ones(2, 4, dtype=torch.bool)))
    with pytest.raises(ValueError, match="mask must be bool"):
        net(X, T, TextCondition(tokens, torch.ones(2, 5)))
    with pytest.raises(ValueError, match="unconditional"):
        net(X, T, TextCondition(tokens, labels=torch.tensor([0, 1])))


def test_config_round_trip_keeps_transformer_fields() -> None:
    cfg = small(context_dim=6, num_classes=3, class_context=True, transformer_resolutions=[4])
    again = UNetConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.transformer_resolutions == (4,)
    UNet(again).load_state_dict(UNet(cfg).state_dict())


# ---------------------------------------------------------------- the text layers
# UNetConfig.text_layers (difflab.models.text_refiner): padding is never read, the empty
# prompt still means "no text", every new weight learns, and configs and checkpoints without
# them load as before.


def refined(**kw) -> UNetConfig:
    """small() with text tokens 6 wide, re-read by two layers 8 wide."""
    base = dict(context_dim=6, transformer_resolutions=(8, 4), transformer_head_dim=4,
                text_layers=2, text_width=8)  # fmt: skip
    return small(**{**base, **kw})


def refiner_net(**kw) -> UNet:
    torch.manual_seed(0)
    return perturb_zero_inits(UNet(refined(**kw)))


def test_refined_states_ignore_padding() -> None:
    torch.manual_seed(0)
    refiner = TextRefiner(6, 8, depth=2, head_dim=4)
    tokens = torch.randn(1, 3, 6)
    padded = torch.cat([tokens, torch.full((1, 4, 6), 9.0)], dim=1)
    mask = torch.tensor([[True] * 3 + [False] * 4])
    alone = refiner(tokens)
    with_padding = refiner(padded, mask)[:, :3]
    torch.testing.assert_close(with_padding, alone)
    assert not torch.allclose(refiner(padded)[:, :3], alone)  # unmasked padding is read


def test_the_unet_reads_refined_tokens_and_not_padding() -> None:
    model = refiner_net(pooled_text=True)
    tokens = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(3))
    mask = torch.tensor([[True, True, True, False, False], [True, False, True, True, True]])
    out = model(X, T, TextCondition(tokens, mask))
    changed = tokens.clone()
    changed[0, 3:] = 50.0
    changed[1, 1] = -7.0
    assert torch.equal(model(X, T, TextCondition(changed, mask)), out)
    changed[0, 2] += 1.0  # a real word piece matters
    assert not torch.allclose(model(X, T, TextCondition(changed, mask))[0], out[0])


def test_text_layers_keep_the_empty_prompt_as_no_text() -> None:
    model = refiner_net(pooled_text=True)
    empty = TextCondition(torch.randn(2, 4, 6), torch.zeros(2, 4, dtype=torch.bool))
    out = model(X, T, empty)
    assert torch.equal(out, model(X, T))
    out.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_text_layers_every_weight_gets_a_gradient() -> None:
    model = refiner_net()
    mask = torch.tensor([[True, False, True], [True, True, True]])
    model(X, T, TextCondition(torch.randn(2, 3, 6), mask)).square().mean().backward()
    refiner = {n: p for n, p in model.named_parameters() if n.startswith("text_refiner.")}
    assert refiner and all(p.grad is not None and p.grad.any() for p in refiner.values())
    # The transformers' keys and values now read the refined width.
    key = next(m for n, m in model.named_modules() if n.endswith("attn2.to_k"))
    assert key.in_features == 8


def test_text_layers_width_defaults_to_the_token_width() -> None:
    model = refiner_net(text_width=None, context_dim=8)
    assert isinstance(model.text_refiner.proj_in, torch.nn.Identity)
    assert refined(text_width=None, context_dim=8).context_width == 8


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        (dict(text_layers=-1), "text_layers"),
        (dict(text_layers=True), "text_layers"),
        (dict(text_layers=0), "text_width"),  # a width with no layers to run at it
        (dict(text_width=10), "text_width"),  # not a multiple of the head width 4
        (dict(text_width=0), "text_width"),
    ],
)
def test_text_layers_bad_settings_name_the_field(kw: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"UNetConfig.{field}"):
        refined(**kw)


def test_text_layers_need_text() -> None:
    with pytest.raises(ValueError, match="UNetConfig.text_layers: needs context_dim"):
        UNetConfig(text_layers=1)


def test_configs_and_checkpoints_without_text_layers_load_as_before() -> None:
    old = refined(text_layers=0, text_width=None).to_dict()
    del old["text_layers"], old["text_width"]  # a checkpoint from before these settings
    model = UNet(UNetConfig.from_dict(old))
    assert model.text_refiner is None
    assert not any(k.startswith("text_refiner") for k in model.state_dict())
    again = UNetConfig.from_dict(refined().to_dict())
    assert again == refined()
    UNet(again).load_state_dict(refiner_net().state_dict())


# ---------------------------------------------------------------- the preset


def test_score_transformer_preset() -> None:
    cfg = preset_config("score-transformer-28")
    base = preset_config("score-unet-28")
    assert cfg.num_classes == 10 and cfg.class_context and cfg.transformer_resolutions == (7, 4)
    assert cfg.level_sides == (28, 14, 7, 4)
    changed = {
        f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(base, f.name)
    }
    assert changed == {
        "num_classes",
        "class_context",
        "transformer_resolutions",
        "transformer_head_dim",
        "transformer_ff_mult",
    }
    torch.manual_seed(0)
    net = get_preset("score-transformer-28")
    assert 5.0e6 < count_parameters(net) < 6.0e6, count_parameters(net)
    x = torch.randn(2, 1, 28, 28)
    assert net(x, torch.tensor([0.2, 0.9]), torch.tensor([7, 10])).shape == x.shape


def test_every_text_setting_added_over_an_unconditional_unet_starts_at_zero() -> None:
    """build.TEXT_SETTINGS, all at once and at non-default values, over a UNet without a
    context: the grown spec is the text UNet's, and with the unconditional weights loaded the
    text UNet computes exactly what the unconditional one does, whatever the text."""
    plain = UNet(small(attention_resolutions=(4,), num_classes=3))
    text = dict(context_dim=12, transformer_resolutions=(8, 4), transformer_head_dim=4,
                transformer_depth=2, transformer_ff_mult=2, transformer_position=True,
                pooled_text=True, text_layers=1, text_width=8)
    assert set(text) == set(TEXT_SETTINGS)
    grown = UNet(small(attention_resolutions=(4,), num_classes=3, **text))
    spec = {"type": "unet", "config": plain.config_dict()}
    mine = {"type": "unet", "config": grown.config_dict()}
    assert grown_network_spec(spec, mine) == (mine, list(TEXT_SETTINGS))
    missing, unexpected = grown.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing
    torch.manual_seed(0)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 700.0])
    cond = TextCondition(tokens=torch.randn(2, 5, 12), mask=torch.ones(2, 5, dtype=torch.bool),
                         labels=torch.tensor([1, 3]))
    with torch.no_grad():
        assert torch.equal(grown(x, t, cond), plain(x, t, torch.tensor([1, 3])))
