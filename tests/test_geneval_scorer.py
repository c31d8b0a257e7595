"""The GenEval-style scorer of the shapes world, validated before it scores any model: right
on rendered ground truth (clean and as a generator would blur, tint and speckle it), and
"wrong" on deliberately wrong images."""

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from difflab.data.shapes import geneval_prompts, make_test_set, make_training_set, scenes_for_specs
from difflab.data.shapes_grammar import CATEGORIES, ObjectSpec, PromptSpec, parse_prompt
from difflab.data.shapes_scene import (
    COLOUR_NAMES,
    INVERSE,
    OPPOSITE_PLACE,
    PALETTE,
    SHAPES,
    render,
)
from difflab.metrics.geneval import (
    MIN_AREA,
    Detection,
    check,
    detect_objects,
    evaluate_geneval,
    format_geneval_report,
    score_images,
    score_images_file,
)

BAR = 0.99  # least share of right answers, and of rejected wrong images, per category


def generator_like(images: np.ndarray, seed: int) -> np.ndarray:
    """Mild flaws of generated images: blur (sigma up to 0.6 px), a per-channel tint (gain
    0.9-1.05, offset +-8), pixel noise (sigma 8 of 255) and three one-pixel specks."""
    rng = np.random.default_rng(seed)
    x = images.astype(np.float32)
    n = len(x)
    for i in range(n):
        sigma = rng.uniform(0.0, 0.6)
        x[i] = ndimage.gaussian_filter(x[i], (0, sigma, sigma))
    x = x * rng.uniform(0.9, 1.05, (n, 3, 1, 1)) + rng.uniform(-8, 8, (n, 3, 1, 1))
    x += rng.normal(0, 8, x.shape)
    for i in range(n):
        ys, xs = rng.integers(0, x.shape[2], 3), rng.integers(0, x.shape[3], 3)
        x[i, :, ys, xs] = PALETTE[rng.integers(len(PALETTE), size=3)]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def accuracies(report: dict) -> dict[str, float]:
    return {name: c["accuracy"] for name, c in report["categories"].items()}


@pytest.fixture(scope="module")
def test_set():
    return make_test_set(792, seed=5)  # eight images of each of the 99 test prompts


@pytest.fixture(scope="module")
def train_pairs():
    """(images, index, captions): 400 training images and all their captions, caption j
    being of image index[j]."""
    train = make_training_set(400, seed=9)
    index = [i for i, cs in enumerate(train.captions) for _ in cs]
    return train.images, index, [c for cs in train.captions for c in cs]


# ---------------------------------------------------------------------------------------------
# Right on ground truth


def test_rendered_test_prompts_score_right(test_set):
    report = score_images(test_set.images, [c[0] for c in test_set.captions])
    assert set(report["categories"]) == set(CATEGORIES)
    assert all(c["images"] >= 48 for c in report["categories"].values())
    assert min(accuracies(report).values()) >= BAR, accuracies(report)
    assert report["overall"] >= BAR and report["held_out_overall"] >= BAR


def test_rendered_test_prompts_score_right_through_generator_flaws(test_set):
    images = generator_like(test_set.images, seed=0)
    report = score_images(images, [c[0] for c in test_set.captions])
    assert min(accuracies(report).values()) >= BAR, accuracies(report)


def test_training_captions_are_true_of_their_images(train_pairs):
    images, index, captions = train_pairs
    report = score_images(images[index], captions)
    assert report["images"] > 2500
    assert min(accuracies(report).values()) >= BAR, accuracies(report)
    flawed = score_images(generator_like(images, seed=1)[index], captions)
    assert min(accuracies(flawed).values()) >= BAR, accuracies(flawed)


def test_place_captions_are_true_of_their_images():
    """Captions that say where a phrase stands (data.places) score right on their rendered
    scenes, clean and through a generator's flaws, and wrong with the place turned round."""
    train = make_training_set(300, seed=11, places=1.0)
    index = [i for i, cs in enumerate(train.captions) for _ in cs]
    specs = [parse_prompt(c) for cs in train.captions for c in cs]
    placed = [j for j, s in enumerate(specs) if any(g.place for g in s.groups)]
    assert len(placed) > 1000
    images = train.images[[index[j] for j in placed]]
    for flawed in (images, generator_like(images, seed=2)):
        report = score_images(flawed, [specs[j] for j in placed])
        assert report["categories"]["position"]["accuracy"] >= BAR
    turned = [
        PromptSpec(
            tuple(replace(g, place=g.place and OPPOSITE_PLACE[g.place]) for g in specs[j].groups)
        )
        for j in placed
    ]
    report = score_images(images, turned)
    assert report["categories"]["position"]["accuracy"] <= 1 - BAR


def test_larger_images_score_the_same():
    specs = [p for ps in geneval_prompts().values() for p in ps]
    scenes = scenes_for_specs(specs, seed=4)
    report = score_images(render(scenes, 64), specs)
    assert report["overall"] >= BAR, accuracies(report)


def test_detections_give_shape_colour_size_and_place():
    spec = parse_prompt("a small red circle to the left of a large blue square")
    scene = scenes_for_specs([spec], seed=0).scene(0)
    (found,) = detect_objects(render([scene]))
    assert [(d.shape, d.colour, d.size) for d in found] == [
        ("circle", "red", "small"),
        ("square", "blue", "large"),
    ]
    for d, o in zip(found, scene.objects, strict=True):
        assert (d.x, d.y) == pytest.approx((o.x, o.y), abs=0.3)
        assert d.extent == pytest.approx(o.extent, abs=0.6)


# ---------------------------------------------------------------------------------------------
# Wrong on wrong images


def _other(values, *avoid):
    return next(v for v in values if v not in avoid)


def wrong_versions(spec: PromptSpec) -> dict[str, PromptSpec]:
    """Specs of images that do NOT satisfy ``spec``: the corruptions for its category."""
    g = spec.groups
    out: dict[str, PromptSpec] = {}
    if spec.category in ("single_object", "colours"):
        o = g[0]
        out["wrong shape"] = PromptSpec((ObjectSpec(_other(SHAPES, o.shape), 1, o.colour, o.size),))
        out["extra object"] = PromptSpec((o, ObjectSpec(_other(SHAPES, o.shape), 1, o.colour)))
        if o.size:
            other_size = "small" if o.size == "large" else "large"
            out["wrong size"] = PromptSpec((ObjectSpec(o.shape, 1, o.colour, other_size),))
        if o.colour:
            out["wrong colour"] = PromptSpec(
                (ObjectSpec(o.shape, 1, _other(COLOUR_NAMES, o.colour)),)
            )
    elif spec.category == "two_object":
        out["missing object"] = PromptSpec(g[:1])
        third = _other(SHAPES, g[0].shape, g[1].shape)
        out["wrong shape"] = PromptSpec((g[0], ObjectSpec(third)))
    elif spec.category == "counting":
        o = g[0]
        out["one fewer"] = PromptSpec((ObjectSpec(o.shape, o.count - 1, o.colour),))
        if o.count < 4:
            out["one more"] = PromptSpec((ObjectSpec(o.shape, o.count + 1, o.colour),))
        if o.colour:
            out["wrong colour"] = PromptSpec(
                (ObjectSpec(o.shape, o.count, _other(COLOUR_NAMES, o.colour)),)
            )
    elif spec.category == "position":
        out["swapped position"] = PromptSpec(g, INVERSE[spec.relation])
        a, b = g
        swapped = (ObjectSpec(a.shape, 1, b.colour), ObjectSpec(b.shape, 1, a.colour))
        out["swapped binding"] = PromptSpec(swapped, spec.relation)
    elif spec.category == "attribute_binding":
        a, b = g
        out["swapped binding"] = PromptSpec(
            (ObjectSpec(a.shape, 1, b.colour), ObjectSpec(b.shape, 1, a.colour))
        )
        out["wrong colour"] = PromptSpec(
            (a, ObjectSpec(b.shape, 1, _other(COLOUR_NAMES, a.colour, b.colour)))
        )
    return out


def test_wrong_images_are_rejected():
    asked, shown, kinds = [], [], []
    for _ in range(4):  # four random renderings of every corruption of every prompt
        for specs in geneval_prompts().values():
            for spec in specs:
                for kind, wrong in wrong_versions(spec).items():
                    asked.append(spec)
                    shown.append(wrong)
                    kinds.append(f"{spec.category}: {kind}")
    images = render(scenes_for_specs(shown, seed=6))
    for name, batch in (("clean", images), ("flawed", generator_like(images, seed=2))):
        report = score_images(batch, asked)
        rejected = np.array([not r["correct"] for r in report["results"]])
        for kind in sorted(set(kinds)):
            mine = rejected[np.array(kinds) == kind]
            assert len(mine) >= 12
            assert mine.mean() >= BAR, (name, kind, mine.mean())


def test_blank_and_noise_images_are_rejected():
    specs = [p for ps in geneval_prompts().values() for p in ps]
    rng = np.random.default_rng(0)
    n = len(specs)
    blank = np.zeros((n, 3, 32, 32), np.uint8)
    noise = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    blobs = ndimage.gaussian_filter(rng.random((n, 3, 32, 32)), (0, 0, 2, 2))
    lo, hi = blobs.min(axis=(1, 2, 3), keepdims=True), blobs.max(axis=(1, 2, 3), keepdims=True)
    blobs = np.rint(255 * (blobs - lo) / (hi - lo)).astype(np.uint8)
    for name, images in (("blank", blank), ("noise", noise), ("blobs", blobs)):
        report = score_images(images, specs)
        assert report["overall"] <= 1 - BAR, (name, accuracies(report))


# ---------------------------------------------------------------------------------------------
# The check itself, on hand-made detections


def _d(shape, colour="red", size="small", x=8.0, y=8.0):
    return Detection(shape, colour, size, x, y, 8.0 if size == "small" else 12.0)


def test_check_counts_exactly_and_matches_named_attributes():
    spec = parse_prompt("two circles and a red square")
    ok = [_d("circle", "blue"), _d("circle", "green", "large"), _d("square")]
    assert check(spec, ok) == (True, "ok")
    assert check(spec, ok[:2])[1] == "2 objects, asked for 3"
    assert not check(spec, [*ok, _d("triangle")])[0]  # an extra object is wrong
    assert not check(spec, [_d("circle"), _d("square"), _d("square")])[0]
    assert not check(spec, [ok[0], ok[1], _d("square", "blue")])[0]
    assert not check(spec, [ok[0], ok[1], _d("unknown")])[0]
    # Phrases that overlap: any assignment that works will do.
    assert check(parse_prompt("a circle and a red circle"), [_d("circle"), _d("circle", "blue")])[0]


def test_check_relations_hold_between_every_pair():
    spec = parse_prompt("a red square above two circles")
    top, low_left, low_right = (
        _d("square", y=6),
        _d("circle", "blue", x=6, y=24),
        _d("circle", "blue", x=24, y=24),
    )
    assert check(spec, [top, low_left, low_right])[0]
    assert (
        check(spec, [top, low_left, _d("circle", "blue", x=24, y=8)])[1]
        == "objects right, but not above"
    )
    # GenEval's margin: 0.2 of the summed extents (3.2 px for two small objects).
    near = parse_prompt("a red circle left of a blue circle")
    assert check(near, [_d("circle", x=10), _d("circle", "blue", x=13.3)])[0]
    assert not check(near, [_d("circle", x=10), _d("circle", "blue", x=13.1)])[0]


def test_check_places_hold_for_every_object_of_the_phrase():
    spec = parse_prompt("two circles on the left and a red square")
    left, right = _d("circle", x=6, y=8), _d("circle", x=6, y=24)
    assert check(spec, [left, right, _d("square", x=26)]) == (True, "ok")
    assert check(spec, [left, _d("circle", x=26), _d("square", x=6, y=20)]) == (
        False,
        "objects right, but not where the prompt places them",
    )
    # The relation rule against the middle line (x = 16): past it by 0.4 of the extent.
    top = parse_prompt("a circle at the top")
    assert check(top, [_d("circle", y=16 - 3.3)])[0]
    assert not check(top, [_d("circle", y=16 - 3.1)])[0]
    large = parse_prompt("a large circle at the top")
    assert not check(large, [_d("circle", "red", "large", y=12)])[0]  # 4.8 px for a large one


def test_specks_below_the_minimum_area_are_not_objects():
    image = np.zeros((1, 3, 32, 32), np.uint8)
    side = int(np.sqrt(MIN_AREA - 1))
    image[0, 0, 5 : 5 + side, 5 : 5 + side] = 255  # a red speck just under MIN_AREA
    assert detect_objects(image) == [[]]


# ---------------------------------------------------------------------------------------------
# Whole evaluations and input checks


def test_evaluate_geneval_scores_a_perfect_and_a_deaf_generator():
    def perfect(texts, seed):
        return render(scenes_for_specs([parse_prompt(t) for t in texts], seed))

    def deaf(texts, seed):  # ignores the prompt: always the same training image
        return np.repeat(make_training_set(1, seed=3).images, len(texts), axis=0)

    report = evaluate_geneval(perfect, images_per_prompt=2, seed=1)
    assert report["overall"] == 1.0 and report["images"] == 198 and report["prompts"] == 99
    assert report["overall"] == 1.0
    deaf_report = evaluate_geneval(deaf, images_per_prompt=1)
    assert deaf_report["overall"] < 0.1
    # The same images' FID against scenes rendered for their prompts (shapes_features): a
    # perfect generator's layouts differ from the reference's only by seed, so it scores the
    # floor (the bias of 198 images, about 29); a deaf one is far above it.
    fid = report["fid"]
    assert fid["images"] == 198 and abs(fid["fid"] - fid["floor"]) < 5
    assert deaf_report["fid"]["fid"] > deaf_report["fid"]["floor"] + 50
    table = format_geneval_report(report)
    for name in CATEGORIES:
        assert name in table
    assert "overall (mean of the six categories)     100.0%" in table
    assert f"FID {fid['fid']:.2f} against scenes rendered for the same prompts" in table
    assert "sampled with" not in table  # not drawn by a Generator: nothing to say
    from difflab.pipeline.settings import SamplingSettings

    settings = SamplingSettings("dpmpp_2m", 20, 3.0, None, {"guidance": "given"},
                                relation_guidance=30.0, relation_regions=True)
    drawn = {**report, "sampling": {"described": f"{settings.summary()}, seed 3"}}
    assert ("sampled with dpmpp_2m, 20 steps, guidance 3, relation guidance 30, relation "
            "regions, seed 3") in format_geneval_report(drawn).splitlines()[1]
    assert "fid" not in evaluate_geneval(perfect, images_per_prompt=1, fid=False)


def test_scorer_inputs_are_checked(test_set):
    with pytest.raises(ValueError, match="uint8"):
        score_images(test_set.images[:2].astype(np.float32), ["a circle", "a square"])
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        score_images(test_set.images[:2], ["a circle"])
    with pytest.raises(ValueError, match="RGB"):
        score_images(np.zeros((2, 1, 32, 32), np.uint8), ["a circle", "a square"])
    with pytest.raises(ValueError, match="unexpected word 'pink'"):
        score_images(test_set.images[:1], ["a pink circle"])
    with pytest.raises(ValueError, match="images_per_prompt"):
        evaluate_geneval(lambda texts, seed: None, images_per_prompt=0)
    channels_last = score_images(
        test_set.images[:8].transpose(0, 2, 3, 1), [c[0] for c in test_set.captions[:8]]
    )
    assert channels_last["overall"] == 1.0


def test_a_partial_set_says_how_many_categories_its_overall_averages(tmp_path):
    """Three prompts of two categories: the overall is their mean and says so, and an FID of
    three images is called a rough reading."""
    texts = ["a red circle", "two blue squares", "a yellow triangle"]
    images = render(scenes_for_specs([parse_prompt(t) for t in texts], 0))
    path = tmp_path / "g.npz"
    np.savez(path, images=images, prompts=np.array(texts))
    report = score_images_file(path)
    assert set(report["categories"]) == {"colours", "counting"}
    table = format_geneval_report(report)
    assert "overall (mean of the 2 categories asked) 100.0%" in table
    assert "six" not in table
    assert "(FID from 3 images is a rough reading" in table
