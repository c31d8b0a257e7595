"""The KL autoencoder: closed-form KL, shapes, the latent scale, clear errors, and learning."""

import math

import pytest
import torch

from difflab.data.transforms import to_float
from difflab.models.autoencoder import (
    Autoencoder,
    AutoencoderConfig,
    DiagonalGaussian,
    autoencoder_loss,
    psnr,
)


def tiny(**kw) -> Autoencoder:
    torch.manual_seed(0)
    return Autoencoder(AutoencoderConfig(channels=(8, 16, 16), groups=4, **kw))


def test_kl_matches_monte_carlo():
    """KL(N(m, s^2) || N(0, 1)) in closed form equals E_q[log q(z) - log p(z)] by sampling."""
    mean = torch.tensor([[0.5, -1.0, 2.0]]).reshape(1, 3, 1, 1)
    logvar = torch.tensor([[-1.0, 0.3, 0.0]]).reshape(1, 3, 1, 1)
    post = DiagonalGaussian(torch.cat([mean, logvar], dim=1))
    g = torch.Generator().manual_seed(0)
    z = torch.stack([post.sample(g) for _ in range(20000)]).double()
    var = logvar.exp().double()
    log_q = -0.5 * ((z - mean) ** 2 / var + logvar + math.log(2 * math.pi))
    log_p = -0.5 * (z**2 + math.log(2 * math.pi))
    mc = (log_q - log_p).sum(dim=(2, 3, 4)).mean()
    assert float(post.kl()) == pytest.approx(float(mc), rel=0.03)
    exact = 0.5 * (mean**2 + var - 1 - logvar).sum()
    assert float(post.kl()) == pytest.approx(float(exact), rel=1e-6)


def test_shapes_and_factor():
    ae = tiny()
    assert ae.latent_shape == (4, 7, 7) and ae.config.factor == 4
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    out, post = ae(x)
    assert out.shape == x.shape and post.mean.shape == (3, 4, 7, 7)
    assert ae.decode(post.mode()).shape == x.shape


def test_bad_inputs_are_named():
    ae = tiny()
    with pytest.raises(ValueError, match="28x28"):
        ae.encode(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="latents must be"):
        ae.decode(torch.zeros(1, 3, 7, 7))
    with pytest.raises(ValueError, match="divisible"):
        AutoencoderConfig(image_size=30)
    with pytest.raises(ValueError, match="channels"):
        AutoencoderConfig(channels=(10, 20))
    with pytest.raises(ValueError, match="unknown autoencoder setting"):
        AutoencoderConfig.from_dict({"widths": [8]})


def test_fit_scale_gives_unit_std_latents():
    ae = tiny()
    x = torch.rand(64, 1, 28, 28) * 2 - 1
    s = ae.fit_scale(x)
    assert float(ae.scale_factor) == pytest.approx(s)
    z = ae.to_latent(x, torch.Generator().manual_seed(1))
    assert float(z.detach().std()) == pytest.approx(1.0, abs=0.05)
    # from_latent undoes the scale: decoding scaled latents equals decoding raw ones
    raw = ae.encode(x[:2]).mode()
    assert torch.allclose(ae.from_latent(raw * ae.scale_factor), ae.decode(raw), atol=1e-5)


def test_psnr_known_values():
    a = torch.zeros(1, 1, 4, 4)
    assert float(psnr(a, a + 0.2)) == pytest.approx(10 * math.log10(4 / 0.04))


def test_autoencoder_learns_digits():
    """A learning test with a fixed bar: 300 steps on the 8x8 digits reach 20 dB PSNR on
    held-out digits (an untrained one scores ~5 dB)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = torch.from_numpy((d.images * 255 / 16).round().astype("uint8"))[:, None]
    x = to_float(imgs)
    train, test = x[:1500], x[1500:]
    ae = Autoencoder(AutoencoderConfig(image_size=8, channels=(16, 32), groups=4))
    with torch.no_grad():
        before = float(psnr(ae.decode(ae.encode(test).mode()), test).mean())
    opt = torch.optim.AdamW(ae.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, len(train), (64,), generator=g)
        loss, parts = autoencoder_loss(ae, train[idx], kl_weight=1e-4, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(psnr(ae.decode(ae.encode(test).mode()), test).mean())
    assert before < 10 and after > 20, (before, after)
