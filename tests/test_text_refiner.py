"""The trainable text layers (UNetConfig.text_layers, difflab.models.text_refiner): padding is
never read, the empty prompt still means "no text", every new weight learns, and configs and
checkpoints without them load as before."""

from __future__ import annotations

import pytest
import torch

from difflab.models import UNet, UNetConfig
from difflab.models.conditioning import TextCondition
from difflab.models.text_refiner import TextRefiner

X = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
T = torch.tensor([10.0, 700.0])


def config(**kw) -> UNetConfig:
    """Two levels on 8x8 inputs, text tokens 6 wide re-read by two layers 8 wide."""
    base = dict(
        base_channels=16,
        channel_mults=(1, 2),
        attention_resolutions=(),
        image_size=8,
        time_embed_dim=32,
        context_dim=6,
        transformer_resolutions=(8, 4),
        transformer_head_dim=4,
        text_layers=2,
        text_width=8,
    )
    return UNetConfig(**{**base, **kw})


def net(**kw) -> UNet:
    torch.manual_seed(0)
    model = UNet(config(**kw))
    with torch.no_grad():  # zero-initialised outputs get weights, so every path matters
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return model


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
    model = net(pooled_text=True)
    tokens = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(3))
    mask = torch.tensor([[True, True, True, False, False], [True, False, True, True, True]])
    out = model(X, T, TextCondition(tokens, mask))
    changed = tokens.clone()
    changed[0, 3:] = 50.0
    changed[1, 1] = -7.0
    assert torch.equal(model(X, T, TextCondition(changed, mask)), out)
    changed[0, 2] += 1.0  # a real word piece matters
    assert not torch.allclose(model(X, T, TextCondition(changed, mask))[0], out[0])


def test_the_empty_prompt_still_means_no_text() -> None:
    model = net(pooled_text=True)
    empty = TextCondition(torch.randn(2, 4, 6), torch.zeros(2, 4, dtype=torch.bool))
    out = model(X, T, empty)
    assert torch.equal(out, model(X, T))
    out.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_every_new_weight_gets_a_gradient() -> None:
    model = net()
    mask = torch.tensor([[True, False, True], [True, True, True]])
    model(X, T, TextCondition(torch.randn(2, 3, 6), mask)).square().mean().backward()
    refiner = {n: p for n, p in model.named_parameters() if n.startswith("text_refiner.")}
    assert refiner and all(p.grad is not None and p.grad.any() for p in refiner.values())
    # The transformers' keys and values now read the refined width.
    key = next(m for n, m in model.named_modules() if n.endswith("attn2.to_k"))
    assert key.in_features == 8


def test_width_defaults_to_the_token_width() -> None:
    model = net(text_width=None, context_dim=8)
    assert isinstance(model.text_refiner.proj_in, torch.nn.Identity)
    assert config(text_width=None, context_dim=8).context_width == 8


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
def test_bad_settings_name_the_field(kw: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"UNetConfig.{field}"):
        config(**kw)


def test_text_layers_need_text() -> None:
    with pytest.raises(ValueError, match="UNetConfig.text_layers: needs context_dim"):
        UNetConfig(text_layers=1)


def test_configs_and_checkpoints_without_text_layers_load_as_before() -> None:
    old = config(text_layers=0, text_width=None).to_dict()
    del old["text_layers"], old["text_width"]  # a checkpoint from before these settings
    model = UNet(UNetConfig.from_dict(old))
    assert model.text_refiner is None
    assert not any(k.startswith("text_refiner") for k in model.state_dict())
    again = UNetConfig.from_dict(config().to_dict())
    assert again == config()
    UNet(again).load_state_dict(net().state_dict())
