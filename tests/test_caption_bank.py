"""CaptionBank: nearest-caption retrieval and the similarity-weighted projection, against
closed forms on an orthonormal bank; saving; and the errors for bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from difflab.models.caption_bank import CaptionBank

TEXTS = ["a shirt", "a naïve café sneaker", "a bag", "a sandal"]


def basis_bank() -> CaptionBank:
    return CaptionBank(list(TEXTS), torch.eye(4))


def test_projection_on_an_orthonormal_bank_has_its_closed_form():
    """Query (a, b, c, 0) normalised; captions e1..e4. With k = 2 the weights are
    softmax((a, b) / T) over the two most similar, so q' = (w1, w2, 0, 0) / |w|."""
    bank = basis_bank()
    q = F.normalize(torch.tensor([[0.8, 0.5, 0.2, 0.0]]), dim=-1)
    a, b = q[0, 0].item(), q[0, 1].item()
    for temperature in (0.02, 0.1, 1.0):
        w1, w2 = math.exp(a / temperature), math.exp(b / temperature)
        expected = torch.tensor([[w1, w2, 0.0, 0.0]]) / math.hypot(w1, w2)
        got = bank.project(q, k=2, temperature=temperature)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # k = 1 is the nearest caption itself, whatever the temperature.
    assert torch.equal(bank.project(q, k=1, temperature=5.0), torch.eye(4)[:1])
    # All captions at a huge temperature: their plain mean.
    flat = bank.project(q, k=4, temperature=1e6)
    torch.testing.assert_close(flat, torch.full((1, 4), 0.5), rtol=0, atol=1e-5)


def test_nearest_orders_by_cosine_and_ignores_bank_order():
    bank = basis_bank()
    q = torch.tensor([[0.1, 3.0, 0.0, 1.0]])  # unnormalised on purpose: cosine is used
    near = bank.nearest(q, k=3)[0]
    assert [t for t, _ in near] == ["a naïve café sneaker", "a sandal", "a shirt"]
    assert near[0][1] == pytest.approx(3.0 / math.sqrt(0.01 + 9 + 1), abs=1e-6)
    perm = [2, 0, 3, 1]
    shuffled = CaptionBank([TEXTS[i] for i in perm], torch.eye(4)[perm])
    g = torch.Generator().manual_seed(0)
    queries = torch.randn(5, 4, generator=g)
    torch.testing.assert_close(shuffled.project(queries, 3), bank.project(queries, 3))


def test_projection_is_unit_and_keeps_dtype_and_batch():
    g = torch.Generator().manual_seed(1)
    bank = CaptionBank([f"caption {i}" for i in range(50)], torch.randn(50, 8, generator=g))
    q = torch.randn(7, 8, generator=g).double()
    out = bank.project(q, k=10)
    assert out.shape == (7, 8) and out.dtype == torch.float64
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(7, dtype=torch.float64))


def test_state_dict_round_trip_keeps_unicode_captions():
    bank = CaptionBank(list(TEXTS), torch.randn(4, 6))
    back = CaptionBank.from_state_dict(bank.state_dict())
    assert back.texts == TEXTS
    torch.testing.assert_close(back.embeddings, bank.embeddings, rtol=0, atol=1e-7)
    # float16 on disk (exported checkpoints) reads back as unit float32 rows.
    half = {**bank.state_dict(), "embeddings": bank.embeddings.half()}
    assert CaptionBank.from_state_dict(half).embeddings.dtype == torch.float32


def test_bad_input_is_refused_with_what_is_allowed():
    bank = basis_bank()
    q = torch.eye(4)[:1]
    with pytest.raises(ValueError, match=r"allowed 1\.\.4"):
        bank.project(q, k=0)
    with pytest.raises(ValueError, match=r"allowed 1\.\.4"):
        bank.nearest(q, k=5)
    with pytest.raises(ValueError, match=r"must be \(B, 4\)"):
        bank.project(torch.ones(1, 3), k=1)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        bank.project(q, k=2, temperature=0.0)
    with pytest.raises(ValueError, match="one embedding row per caption"):
        CaptionBank(["a", "b"], torch.ones(3, 4))
    with pytest.raises(ValueError, match="no captions"):
        CaptionBank([], torch.ones(0, 4))
    with pytest.raises(ValueError, match="newlines"):
        CaptionBank(["two\nlines"], torch.ones(1, 4)).state_dict()
    with pytest.raises(ValueError, match="must hold 'embeddings' and 'texts_utf8'"):
        CaptionBank.from_state_dict({"embeddings": torch.ones(1, 4)})
