"""Text encoders: the real all-MiniLM-L6-v2 checked against sentence-transformers (no mocks),
padding, truncation, the "no text" condition, and the trainable encoder."""

import json
import warnings

import pytest
import torch
import torch.nn.functional as F

from difflab.models import UNet, UNetConfig
from difflab.models.text import (
    MINILM_MAX_TOKENS,
    TEXT_ENCODERS,
    PretrainedTextEncoder,
    TrainableTextEncoder,
    make_text_encoder,
    minilm_path,
    text_encoder_from_spec,
)

PROMPTS = [
    "a pair of sneakers",
    "An ankle boot on a black background, seen from the side!",
    "7",
]


@pytest.fixture(scope="module")
def minilm():
    return PretrainedTextEncoder()


@pytest.fixture(scope="module")
def reference():
    """sentence-transformers' own pipeline for the same files: the ground truth."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path()), device="cpu")


@pytest.fixture(scope="module")
def encoded(minilm):
    return minilm.encode(PROMPTS)


# --- MiniLM ------------------------------------------------------------------------------------


def test_pooled_token_is_the_sentence_transformers_embedding(encoded, reference):
    want = reference.encode(PROMPTS, convert_to_tensor=True, normalize_embeddings=True)
    assert encoded.tokens.dtype == torch.float32
    torch.testing.assert_close(encoded.tokens[:, 0], want.cpu(), atol=1e-5, rtol=0)
    torch.testing.assert_close(encoded.tokens[:, 0].norm(dim=-1), torch.ones(3))


def test_token_states_are_the_models_last_hidden_states(encoded, reference):
    per_prompt = reference.encode(PROMPTS, output_value="token_embeddings")
    for i, want in enumerate(per_prompt):
        n = len(want)
        assert int(encoded.mask[i].sum()) == 1 + n  # pooled token + [CLS] ... [SEP]
        torch.testing.assert_close(encoded.tokens[i, 1 : 1 + n], want.cpu(), atol=1e-5, rtol=0)


def test_shapes_and_mask_with_padding(minilm, encoded):
    ids, ids_mask = minilm.tokenize(PROMPTS)
    lengths = ids_mask.sum(dim=1)
    assert lengths.tolist()[2] == 3  # "[CLS] 7 [SEP]"
    b, length = ids.shape
    assert encoded.tokens.shape == (b, 1 + length, minilm.width) == (3, 1 + length, 384)
    assert encoded.mask.dtype == torch.bool and encoded.mask.shape == (3, 1 + length)
    assert encoded.labels is None
    for i, n in enumerate(lengths.tolist()):
        assert encoded.mask[i, : 1 + n].all() and not encoded.mask[i, 1 + n :].any()
        # Padding carries zeros, not the meaningless states of [PAD] positions.
        assert encoded.tokens[i, 1 + n :].abs().sum() == 0
    assert not encoded.tokens.requires_grad


def test_padding_does_not_change_a_short_prompt(minilm, encoded):
    alone = minilm.encode([PROMPTS[2]])
    n = alone.tokens.shape[1]
    assert n < encoded.tokens.shape[1]  # it was padded in the batch
    torch.testing.assert_close(encoded.tokens[2, :n], alone.tokens[0], atol=1e-5, rtol=0)


def test_pooled_embeddings_carry_meaning(minilm):
    pooled = minilm.encode(
        ["a pair of sneakers", "footwear for running", "a handwritten digit seven"]
    ).tokens[:, 0]
    sneakers, running, seven = pooled
    near = F.cosine_similarity(sneakers, running, dim=0)
    far = F.cosine_similarity(sneakers, seven, dim=0)
    assert near > far + 0.1, (near, far)


def test_float32_and_equal_under_the_callers_autocast(minilm, encoded):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        again = minilm.encode(PROMPTS)
    assert again.tokens.dtype == torch.float32
    torch.testing.assert_close(again.tokens, encoded.tokens, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "prompts, match",
    [
        ([""], "empty or only whitespace.*null"),
        (["a bag", "  \t"], "prompt 1 is empty"),
        (["a bag", None], "prompt 1 must be a string"),
        ([3], "must be a string"),
        ("a bag", "list of strings"),
        ([], "at least one prompt"),
    ],
)
def test_bad_prompts_are_refused(minilm, prompts, match):
    with pytest.raises(ValueError, match=match):
        minilm.encode(prompts)


def test_overlong_prompt_warns_and_is_truncated():
    enc = PretrainedTextEncoder(max_tokens=16)  # shares the loaded model
    long = "a very long description of a sneaker " * 10
    with pytest.warns(UserWarning, match=r"has 82 tokens, more than max_tokens=16") as record:
        out = enc.encode([long, "a bag"])
    assert len(record) == 1
    message = str(record[0].message)
    assert repr(long[:60].rstrip() + "…") in message  # quoted short (quote_prompt)
    assert record[0].filename == __file__  # points at the caller, not at text.py
    assert out.tokens.shape == (2, 1 + 16, 384)
    assert out.mask[0].all()
    # Truncation keeps the first pieces and closes with [SEP], as a truncating tokenizer does.
    with pytest.warns(UserWarning, match="max_tokens=16"):
        ids, _ = enc.tokenize([long])
    assert ids.shape == (1, 16) and ids[0, 0] == 101 and ids[0, -1] == 102


def test_short_prompts_do_not_warn(minilm):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        minilm.encode(["a sneaker " * 20])  # 62 tokens ("sneaker" is 2 pieces), under 64


@pytest.mark.parametrize("max_tokens", [2, MINILM_MAX_TOKENS + 1, 1024, 64.0])
def test_max_tokens_out_of_range(max_tokens):
    with pytest.raises(ValueError, match="max_tokens"):
        PretrainedTextEncoder(max_tokens=max_tokens)


def test_null_is_all_masked(minilm):
    null = minilm.null(4)
    assert null.tokens.shape == (4, 1, 384) and null.tokens.abs().sum() == 0
    assert null.mask.dtype == torch.bool and null.mask.shape == (4, 1) and not null.mask.any()
    assert minilm.null(0).tokens.shape == (0, 1, 384)
    with pytest.raises(ValueError, match="n must be"):
        minilm.null(-1)


def test_minilm_spec_round_trip(minilm):
    spec = json.loads(json.dumps(PretrainedTextEncoder(max_tokens=32).spec()))
    assert spec == {"name": "minilm", "max_tokens": 32, "tokens": "all"}
    again = text_encoder_from_spec(spec)
    assert isinstance(again, PretrainedTextEncoder) and again.max_tokens == 32
    assert minilm.to("cpu") is minilm
    # Specs written before the tokens option rebuild the same encoder.
    assert text_encoder_from_spec({"name": "minilm", "max_tokens": 32}).tokens == "all"


def test_an_earlier_layers_word_states(minilm, encoded, reference):
    """text.layer: the word pieces' states after that layer (hidden_states[layer] of the
    model sentence-transformers loads), the sentence embedding still the last layer's."""
    earlier = PretrainedTextEncoder(layer=5)
    cond = earlier.encode(PROMPTS)
    torch.testing.assert_close(cond.tokens[:, 0], encoded.tokens[:, 0], rtol=0, atol=0)
    assert torch.equal(cond.mask, encoded.mask)
    ids, mask = minilm.tokenize(PROMPTS)
    with torch.no_grad():
        states = reference[0].auto_model(
            input_ids=ids, attention_mask=mask.long(), output_hidden_states=True
        ).hidden_states
    assert len(states) == 7  # the embeddings, then six layers
    want = states[5] * mask[..., None]
    torch.testing.assert_close(cond.tokens[:, 1:], want, atol=1e-5, rtol=0)
    assert not torch.allclose(cond.tokens[:, 1:], encoded.tokens[:, 1:], atol=1e-2)
    spec = json.loads(json.dumps(earlier.spec()))
    assert spec == {"name": "minilm", "max_tokens": 64, "tokens": "all", "layer": 5}
    assert text_encoder_from_spec(spec).layer == 5
    for bad in (0, 7, 2.0, True):
        with pytest.raises(ValueError, match=f"layer={bad!r} is not allowed; choose 1 to 6"):
            PretrainedTextEncoder(layer=bad)


def test_pooled_only_is_the_sentence_embedding_alone(minilm):
    prompts = ["a pair of sandals", "footwear for running on a track"]
    full = minilm.encode(prompts)
    pooled = PretrainedTextEncoder(tokens="pooled")
    cond = pooled.encode(prompts)
    assert cond.tokens.shape == (2, 1, 384) and cond.mask.tolist() == [[True], [True]]
    torch.testing.assert_close(cond.tokens[:, 0], full.tokens[:, 0], rtol=0, atol=0)
    assert text_encoder_from_spec(pooled.spec()).tokens == "pooled"
    with pytest.raises(ValueError, match="tokens='words' is not allowed.*'all', 'pooled'"):
        PretrainedTextEncoder(tokens="words")


# --- factory -----------------------------------------------------------------------------------


def test_make_text_encoder_names_and_errors():
    assert TEXT_ENCODERS == ("minilm", "trainable")
    assert isinstance(make_text_encoder("minilm"), PretrainedTextEncoder)
    assert isinstance(make_text_encoder("trainable", width=32, heads=2), TrainableTextEncoder)
    with pytest.raises(ValueError, match="allowed minilm, trainable"):
        make_text_encoder("clip")
    with pytest.raises(ValueError, match="no option 'width'.*allowed max_tokens, device"):
        make_text_encoder("minilm", width=128)
    with pytest.raises(ValueError, match="'name'"):
        text_encoder_from_spec({"max_tokens": 8})


# --- trainable ---------------------------------------------------------------------------------


@pytest.fixture()
def trainable():
    torch.manual_seed(0)
    return TrainableTextEncoder(width=32, depth=2, heads=4, max_tokens=24)


def test_trainable_shapes_padding_and_null(trainable):
    out = trainable.encode(PROMPTS)
    _, ids_mask = trainable.tokenize(PROMPTS)
    assert out.tokens.shape == (3, 1 + ids_mask.shape[1], 32)
    assert torch.equal(out.mask[:, 1:], ids_mask) and out.mask[:, 0].all()
    assert out.tokens[2, 1 + 3 :].abs().sum() == 0  # "7" is 3 pieces, the rest padding
    # The real tokens of a prompt do not see the padding its batch added.
    alone = trainable.encode([PROMPTS[2]])
    torch.testing.assert_close(out.tokens[2, :4], alone.tokens[0], atol=1e-5, rtol=0)
    null = trainable.null(2)
    assert null.tokens.shape == (2, 1, 32) and not null.mask.any()


def test_trainable_gradients_reach_every_parameter(trainable):
    out = trainable.encode(["a pair of trousers", "a bag"])
    assert out.tokens.requires_grad
    # A random projection: a plain sum of LayerNorm outputs has no gradient to speak of.
    weights = torch.randn(out.tokens.shape, generator=torch.Generator().manual_seed(1))
    (out.tokens * weights).sum().backward()
    for name, p in trainable.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_trainable_spec_round_trip(trainable):
    spec = json.loads(json.dumps(trainable.spec()))
    assert spec == {"name": "trainable", "max_tokens": 24, "width": 32, "depth": 2, "heads": 4}
    again = text_encoder_from_spec(spec)
    again.load_state_dict(trainable.state_dict())  # same shapes, strict
    with torch.no_grad():
        torch.testing.assert_close(again.encode(PROMPTS).tokens, trainable.encode(PROMPTS).tokens)


def test_trainable_bad_settings(trainable):
    with pytest.raises(ValueError, match="heads .3. must divide width .32."):
        TrainableTextEncoder(width=32, heads=3)
    with pytest.raises(ValueError, match="depth must be an integer >= 1"):
        TrainableTextEncoder(depth=0)
    ids = torch.ones(1, 30, dtype=torch.int64)
    with pytest.raises(ValueError, match="max_tokens"):
        trainable(ids, torch.ones_like(ids, dtype=torch.bool))


def test_conditions_drive_a_cross_attention_unet(trainable):
    net = UNet(
        UNetConfig(
            image_size=8,
            base_channels=8,
            channel_mults=(1, 2),
            attention_resolutions=(4,),
            transformer_resolutions=(4,),
            context_dim=32,
        )
    )
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3.0, 5.0])
    assert net(x, t, trainable.encode(["a sneaker", "an ankle boot"])).shape == x.shape
    assert net(x, t, trainable.null(2)).shape == x.shape


# --- encoding a caption table in chunks ---------------------------------------------------------


def test_chunked_encoding_is_one_call_and_says_what_it_does(minilm, encoded, capsys):
    from difflab.training.objectives.text import encode_in_chunks

    tokens, mask = encode_in_chunks(minilm, PROMPTS, chunk=2, progress=True)
    said = capsys.readouterr().out
    assert "encoding 3 captions with the frozen text encoder, once" in said
    # Sorted by length, two chunks padded apart, put back in order: what one call gives.
    assert torch.equal(mask, encoded.mask.cpu())
    assert torch.allclose(tokens, encoded.tokens.cpu(), atol=1e-5)
    encode_in_chunks(minilm, PROMPTS, chunk=2)  # quiet by default: library calls print nothing
    encode_in_chunks(minilm, PROMPTS, progress=True)  # one chunk is quick: nothing to say
    assert capsys.readouterr().out == ""


def test_a_second_run_waits_for_the_captions_another_is_encoding(minilm, tmp_path,
                                                                 monkeypatch, capsys):
    """Two runs started side by side (or torchrun's ranks) encode a large caption set once:
    while one holds the cache entry's lock the other waits, then reads what it wrote."""
    import fcntl
    import threading
    import time

    from difflab.training.objectives import text, text_cache

    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(text_cache, "CACHE_MIN_TEXTS", 1)
    cache = text_cache.cache_file(minilm, PROMPTS)
    cache.parent.mkdir(parents=True)
    written = (torch.full((3, 2, 384), 7.0), torch.ones(3, 2, dtype=torch.bool))
    got = {}
    with open(cache.with_name(f".{cache.stem}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # "the first run", mid-encoding
        second = threading.Thread(
            target=lambda: got.update(r=text.encode_in_chunks(minilm, PROMPTS, progress=True)))
        second.start()
        for _ in range(600):  # until the second run says it waits (at most a minute)
            if "waiting for its result" in capsys.readouterr().out:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the second run did not wait for the first")
        torch.save({"tokens": written[0], "mask": written[1]}, cache)  # the first run's result
        fcntl.flock(lock, fcntl.LOCK_UN)
        second.join()
    assert torch.equal(got["r"][0], written[0]) and torch.equal(got["r"][1], written[1])
