"""The shapes world's feature space and FID in it (difflab.metrics.shapes_features)."""

import numpy as np
import pytest
from scipy import ndimage

from difflab.data.shapes import geneval_prompts, scenes_for_specs
from difflab.data.shapes_grammar import parse_prompt
from difflab.data.shapes_scene import (
    COLOUR_NAMES,
    SHAPES,
    SIZES,
    Scene,
    SceneBatch,
    ShapeObject,
    render,
)
from difflab.metrics import shapes_features as sf


def _batch(*scenes: Scene) -> SceneBatch:
    return SceneBatch.from_scenes(list(scenes))


def test_scene_targets_count_kinds_and_mark_cells():
    scene = Scene((
        ShapeObject("circle", "red", "small", 5.0, 5.0),        # cell (row 0, col 0)
        ShapeObject("square", "blue", "large", 27.0, 6.0),      # cell (0, 3)
        ShapeObject("square", "blue", "small", 20.0, 27.0),     # cell (3, 2)
    ))  # fmt: skip
    counts, occupancy = sf.scene_targets(_batch(scene))
    expected = np.zeros(24, dtype=np.int64)
    expected[SHAPES.index("circle") * 6 + COLOUR_NAMES.index("red")] = 1
    expected[SHAPES.index("square") * 6 + COLOUR_NAMES.index("blue")] = 2
    expected[18 + SHAPES.index("circle") * 2 + SIZES.index("small")] = 1
    expected[18 + SHAPES.index("square") * 2 + SIZES.index("large")] = 1
    expected[18 + SHAPES.index("square") * 2 + SIZES.index("small")] = 1
    assert counts.tolist() == [expected.tolist()]
    cells = occupancy.reshape(3, 4, 4)
    on = {(SHAPES[s], r, c) for s, r, c in zip(*np.nonzero(cells.numpy()), strict=True)}
    assert on == {("circle", 0, 0), ("square", 0, 3), ("square", 3, 2)}


@pytest.fixture(scope="module")
def net():
    return sf.shapes_feature_net(verbose=False)


def test_the_shipped_net_reads_fresh_scenes(net):
    assert net.info["source"] == "shipped"
    assert net.test_accuracy >= sf.RECIPE.min_test_accuracy
    # Scenes of a seed neither its training nor its check used.
    batch = scenes_for_specs([p for ps in geneval_prompts().values() for p in ps] * 3, seed=77)
    assert sf.scene_accuracy(net, render(batch), batch) >= 0.9


def _prompts(rounds: int) -> list[str]:
    texts = [p.text() for ps in geneval_prompts().values() for p in ps]
    return [t for t in texts for _ in range(rounds)]


@pytest.fixture(scope="module")
def rendered():
    """Scenes drawn for the test prompts with layouts of another seed than the reference's:
    the floor a perfect model would reach."""
    texts = _prompts(4)
    return texts, _render(texts, 5)


def _render(texts: list[str], seed: int) -> np.ndarray:
    return render(scenes_for_specs([parse_prompt(t) for t in texts], seed))


def test_fid_is_lowest_for_the_world_and_grows_with_each_flaw(rendered):
    texts, images = rendered
    clean = sf.shapes_fid(images, texts)
    # The floor: 396 images of 128-d features carry an FID bias of about 14 (bench/
    # shapes_feature_net.py measures 13.9-14.9 over three layout seeds).
    assert abs(clean["fid"] - clean["floor"]) < 3 and clean["floor"] < 20
    blurred = ndimage.gaussian_filter(images.astype(np.float32), sigma=(0, 0, 1.0, 1.0))
    noisy = images + np.random.default_rng(0).normal(0, 25, images.shape)
    flawed = {
        "blurred": blurred.round().astype(np.uint8),
        "noisy": np.clip(noisy, 0, 255).round().astype(np.uint8),
        "wrong colours": np.ascontiguousarray(images[:, [1, 2, 0]]),  # red -> other hues
        "blank": np.zeros_like(images),
    }
    for name, x in flawed.items():
        flaw = sf.shapes_fid(x, texts)
        assert flaw["fid"] > flaw["floor"] + 15, name


def test_fid_inputs_are_checked(rendered):
    texts, images = rendered
    with pytest.raises(ValueError, match="uint8 RGB"):
        sf.shapes_fid(images.astype(np.float32), texts)
    with pytest.raises(ValueError, match="at least 2 images"):
        sf.shapes_fid(images[:1], texts[:1])
    with pytest.raises(ValueError, match="one prompt per image"):
        sf.shapes_fid(images[:3], texts[:2])
    with pytest.raises(ValueError, match="unexpected word 'pink'"):
        sf.shapes_fid(images[:2], ["a pink circle", "a circle"])
    channels_last = sf.shapes_fid(images.transpose(0, 2, 3, 1), texts)["fid"]
    assert channels_last == pytest.approx(sf.shapes_fid(images, texts)["fid"])
