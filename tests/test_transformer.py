"""The DiT backbone: shapes, adaLN-Zero start, the UNet's conditioning contract (labels, null
label, text tokens with padding masks), validation, config round trips, gradient flow, and a
small fitting test with a fixed bar."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from difflab.models.conditioning import TextCondition
from difflab.models.transformer import DIT_PRESETS, DiT, DiTConfig, position_embedding_2d


def small(**kw) -> DiTConfig:
    """8x8 grey images, 2x2 patches (16 tokens), two blocks 32 wide."""
    base = dict(image_size=8, patch_size=2, width=32, depth=2, num_heads=2, mlp_ratio=2.0)
    return DiTConfig(**{**base, **kw})


def perturb(net: nn.Module, seed: int = 0) -> nn.Module:
    """Give the zero-initialised layers random weights, so every path affects the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net


def build(seed: int = 0, **kw) -> DiT:
    torch.manual_seed(seed)
    return perturb(DiT(small(**kw)))


G = torch.Generator().manual_seed(1)
X = torch.randn(3, 1, 8, 8, generator=G)
T = torch.tensor([10.0, 400.0, 900.0])
TOKENS = torch.randn(3, 5, 6, generator=G)


# ------------------------------------------------------------------------ shapes, init


@pytest.mark.parametrize(
    "kw",
    [
        dict(),  # pixel 8x8x1, patch 2
        dict(image_size=7, in_channels=4, patch_size=1),  # a 7x7x4 latent, one token per pixel
        dict(image_size=7, in_channels=4, patch_size=7),  # one token for the whole latent
        dict(out_channels=2, patch_size=4),  # e.g. eps and a variance channel
    ],
)
def test_output_shape(kw) -> None:
    net = perturb(DiT(small(**kw)))
    c = net.config
    x = torch.randn(2, c.in_channels, c.image_size, c.image_size)
    for t in (torch.tensor([3.0, 7.0]), 5.0, torch.tensor([5.0])):  # (B,), scalar, one-element
        out = net(x, t)
        assert out.shape == (2, c.out_channels or c.in_channels, c.image_size, c.image_size)
        assert torch.isfinite(out).all()


def test_unpatchify_inverts_patchify_layout() -> None:
    """Token k's values fill patch k: with an identity-like patch embedding and output, the
    net's reshapes put every pixel back where it came from."""
    net = DiT(small(width=4, num_heads=1, depth=1))
    x = torch.arange(64.0).reshape(1, 1, 8, 8)
    patches = net.patch_embed.weight.shape[-1] ** 2  # 4 values per token
    with torch.no_grad():
        net.patch_embed.weight.copy_(torch.eye(patches).reshape(4, 1, 2, 2))
        tokens = net.patchify(x) - net.pos_embed  # (1, 16, 4)
    assert torch.equal(net.unpatchify(tokens), x)


def test_zero_output_at_init_then_not_after_one_step() -> None:
    torch.manual_seed(0)
    net = DiT(small(num_classes=3, context_dim=6))
    cond = TextCondition(TOKENS, labels=torch.tensor([0, 1, 3]))
    assert torch.equal(net(X, T, cond), torch.zeros_like(X))  # adaLN-Zero + zero final layer
    h = net.patchify(X)
    cvec = torch.nn.functional.silu(net.embed(T, cond.labels, 3, X.device))
    for block in net.blocks:  # each block starts as the identity
        assert torch.equal(block(h, cvec, TOKENS), h)

    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss = (net(X, T, cond) - torch.randn_like(X)).square().mean()
    loss.backward()
    opt.step()
    assert net(X, T, cond).abs().min() > 0


def test_position_embedding() -> None:
    code = position_embedding_2d(3, 8)
    assert code.shape == (9, 8)
    assert len({tuple(r.tolist()) for r in code}) == 9  # every token position is distinct
    # Tokens of one row share the row half; tokens of one column share the column half.
    assert torch.equal(code[0, :4], code[2, :4]) and torch.equal(code[1, 4:], code[7, 4:])


# ------------------------------------------------------------------------------ classes


def test_class_labels_null_label_and_errors() -> None:
    net = build(num_classes=3)
    a = net(X, T, torch.tensor([0, 0, 0]))
    b = net(X, T, torch.tensor([1, 2, 1]))
    assert (a - b).abs().amax(dim=(1, 2, 3)).min() > 1e-4  # every row depends on its label
    null = torch.full((3,), 3)
    torch.testing.assert_close(net(X, T), net(X, T, null), rtol=0, atol=0)  # None = null label
    assert (net(X, T, null) - a).abs().max() > 1e-4
    torch.testing.assert_close(net(X, T, torch.tensor([1, 2, 1], dtype=torch.int32)), b)

    for bad in (torch.tensor([0, 4, 1]), torch.tensor([-1, 0, 0])):
        with pytest.raises(ValueError, match=r"\[0, 3\]"):
            net(X, T, bad)
    with pytest.raises(ValueError, match=r"integer tensor of shape \(3,\)"):
        net(X, T, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"integer tensor of shape \(3,\)"):
        net(X, T, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unconditional.*num_classes is None"):
        build()(X, T, torch.tensor([0, 1, 2]))


# --------------------------------------------------------------------------------- text


def test_padding_tokens_do_not_change_the_output() -> None:
    net = build(context_dim=6, num_classes=2)
    labels = torch.tensor([0, 1, 2])
    plain = net(X, T, TextCondition(TOKENS, labels=labels))  # every token real, no mask
    junk = torch.randn(3, 4, 6) * 10
    padded = torch.cat([TOKENS, junk], dim=1)  # (3, 9, 6)
    mask = torch.cat([torch.ones(3, 5), torch.zeros(3, 4)], dim=1).bool()
    out = net(X, T, TextCondition(padded, mask, labels))
    torch.testing.assert_close(out, plain, rtol=0, atol=1e-5)
    # An integer mask (a tokenizer's attention_mask) means the same.
    torch.testing.assert_close(net(X, T, TextCondition(padded, mask.long(), labels)), out)
    # ...and the text matters: other tokens, other output. (Not their order: the context
    # has no position code of its own; a text encoder's tokens carry their positions.)
    other = net(X, T, TextCondition(TOKENS + 1, labels=labels))
    assert (other - plain).abs().amax(dim=(1, 2, 3)).min() > 1e-4


def test_all_masked_row_means_no_text() -> None:
    net = build(context_dim=6, num_classes=2)
    labels = torch.tensor([1, 0, 2])
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False  # row 1: the empty prompt of classifier-free guidance
    out = net(X, T, TextCondition(TOKENS, mask, labels))
    no_text = net(X, T, labels)  # labels only: the blocks skip cross-attention
    torch.testing.assert_close(out[1], no_text[1], rtol=0, atol=1e-6)
    assert (out[0] - no_text[0]).abs().max() > 1e-4  # real text does change the others
    # No labels in the TextCondition: the null label, as cond=None.
    empty = TextCondition(TOKENS, torch.zeros(3, 5, dtype=torch.bool))
    torch.testing.assert_close(net(X, T, empty), net(X, T), rtol=0, atol=1e-6)
    # Rows are independent: row 0 alone gives the same as row 0 in the batch.
    alone = net(X[:1], T[:1], TextCondition(TOKENS[:1], mask[:1], labels[:1]))
    torch.testing.assert_close(alone, out[:1], rtol=0, atol=1e-5)


def test_pooled_text_is_a_no_op_at_init_and_reads_the_first_token() -> None:
    cfg = small(context_dim=6)
    text = TextCondition(TOKENS, torch.ones(3, 5, dtype=torch.bool))
    torch.manual_seed(0)
    plain = perturb(DiT(cfg))
    torch.manual_seed(0)
    net = perturb(DiT(dataclasses.replace(cfg, pooled_text=True)), seed=0)
    # perturb gave the zero layers of both the same values, all but pooled_text's last
    # layer, which it also filled: zero it again to check the no-op start.
    nn.init.zeros_(net.pooled_text.mlp[-1].weight)
    nn.init.zeros_(net.pooled_text.mlp[-1].bias)
    torch.testing.assert_close(net(X, T, text), plain(X, T, text), rtol=0, atol=0)
    perturb(net.pooled_text, seed=1)
    changed = TOKENS.clone()
    changed[:, 0] += 1.0
    assert not torch.allclose(net(X, T, TextCondition(changed, text.mask)), net(X, T, text))
    empty = TextCondition(TOKENS, torch.zeros(3, 5, dtype=torch.bool))
    torch.testing.assert_close(net(X, T, empty), net(X, T), rtol=0, atol=1e-6)


def test_text_errors() -> None:
    net = build(context_dim=6)
    with pytest.raises(ValueError, match="context_dim=6"):
        net(X, T, TextCondition(torch.randn(3, 5, 7)))
    with pytest.raises(ValueError, match="float tensor"):
        net(X, T, TextCondition(torch.ones(3, 5, 6, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"mask must have shape \(3, 5\)"):
        net(X, T, TextCondition(TOKENS, torch.ones(3, 4, dtype=torch.bool)))
    with pytest.raises(ValueError, match="mask must be bool"):
        net(X, T, TextCondition(TOKENS, torch.ones(3, 5)))
    with pytest.raises(ValueError, match="unconditional"):  # labels need num_classes
        net(X, T, TextCondition(TOKENS, labels=torch.tensor([0, 1, 0])))
    with pytest.raises(ValueError, match="takes no text.*context_dim is None"):
        build()(X, T, TextCondition(TOKENS))


# ----------------------------------------------------------------- inputs and settings


def test_input_errors() -> None:
    net = build()
    with pytest.raises(ValueError, match=r"x must be \(B, 1, 8, 8\)"):
        net(torch.randn(2, 3, 8, 8), 1.0)
    with pytest.raises(ValueError, match=r"x must be \(B, 1, 8, 8\)"):
        net(torch.randn(2, 1, 16, 16), 1.0)
    with pytest.raises(ValueError, match="t must be a scalar"):
        net(X, torch.ones(2))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(image_size=7, patch_size=2), r"DiTConfig.patch_size: 2 does not divide.*\[1, 7\]"),
        (dict(image_size=28, patch_size=3), r"patch_size.*allowed: \[1, 2, 4, 7, 14, 28\]"),
        (dict(num_heads=3), "DiTConfig.num_heads: 3 does not divide width 32"),
        (dict(time_embedding="learned"), "time_embedding.*allowed: sinusoidal, fourier"),
        (dict(depth=0), "DiTConfig.depth: must be a positive integer"),
        (dict(num_classes=True), "DiTConfig.num_classes"),
        (dict(mlp_ratio=0), "DiTConfig.mlp_ratio"),
        (dict(time_scale=-1.0), "DiTConfig.time_scale"),
        (dict(pooled_text=True), "DiTConfig.pooled_text: needs context_dim"),
    ],
)
def test_config_errors(kw, match) -> None:
    with pytest.raises(ValueError, match=match):
        small(**kw)


def test_time_scale_means_what_it_means_in_the_unet() -> None:
    """t is multiplied by time_scale before the embedding: t=0.5 at scale 1000 is step 500."""
    for embedding in ("sinusoidal", "fourier"):
        steps = build(time_embedding=embedding)
        unit = DiT(dataclasses.replace(steps.config, time_scale=1000.0))
        unit.load_state_dict(steps.state_dict())
        torch.testing.assert_close(unit(X, T / 1000), steps(X, T))


def test_config_round_trip_and_state_dict() -> None:
    net = build(num_classes=4, context_dim=6, time_embedding="fourier", out_channels=2)
    data = json.loads(json.dumps(net.config_dict()))  # what a checkpoint's config.json holds
    assert DiTConfig.from_dict(data) == net.config
    again = DiT.from_config(data)
    assert "pos_embed" not in again.state_dict()  # fixed, recomputed from the config
    again.load_state_dict(net.state_dict())
    cond = TextCondition(TOKENS, labels=torch.tensor([0, 3, 4]))
    torch.testing.assert_close(again(X, T, cond), net(X, T, cond), rtol=0, atol=0)
    assert DiT.from_config(net.config).config == net.config
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['channels'\]"):
        DiTConfig.from_dict({**data, "channels": 3})


# ------------------------------------------------------------------------------ learning


def test_gradients_reach_every_parameter() -> None:
    """After three steps (zero-initialised gates open one layer per step) every parameter
    has a gradient: no dead weights. The only exception by design: class rows that no label
    in the batch uses, so the batch uses all of them, the null label included."""
    torch.manual_seed(0)
    net = DiT(small(num_classes=2, context_dim=6))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    cond = TextCondition(TOKENS, labels=torch.tensor([0, 1, 2]))
    target = torch.randn_like(X)
    for _ in range(3):
        opt.zero_grad()
        (net(X, T, cond) - target).square().mean().backward()
        opt.step()
    opt.zero_grad()
    (net(X, T, cond) - target).square().mean().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()]
    assert dead == []


@pytest.mark.parametrize("kind", ["class", "text"])
def test_fits_a_conditional_regression(kind) -> None:
    """Same x, four (t, condition) pairs, four random targets: only the time and the
    class/text paths can tell them apart, so a net that ignores either cannot get the
    loss under the bar (a constant-in-cond fit stays near the targets' variance, ~0.5)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 1, 8, 8, generator=g).expand(4, 1, 8, 8)
    t = torch.tensor([100.0, 100.0, 900.0, 900.0])
    target = torch.randn(4, 1, 8, 8, generator=g)
    if kind == "class":
        net = DiT(small(num_classes=2))
        cond = torch.tensor([0, 1, 0, 1])
    else:
        net = DiT(small(context_dim=6))
        prompts = torch.randn(2, 3, 6, generator=g)
        cond = TextCondition(prompts[[0, 1, 0, 1]])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(300):
        opt.zero_grad()
        loss = (net(x, t, cond) - target).square().mean()
        loss.backward()
        opt.step()
    assert loss.item() < 1e-3


# ------------------------------------------------------------------------------ presets


@pytest.mark.parametrize("name", sorted(DIT_PRESETS))
def test_presets_build_and_run(name) -> None:
    cfg = DIT_PRESETS[name]
    net = DiT(cfg)
    x = torch.randn(1, cfg.in_channels, cfg.image_size, cfg.image_size)
    cond = TextCondition(torch.randn(1, 4, cfg.context_dim)) if cfg.context_dim else None
    assert net(x, 500.0, cond).shape == x.shape
    assert 3e6 < sum(p.numel() for p in net.parameters()) < 7e6
