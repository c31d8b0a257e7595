"""The shapes world (issue 18): scenes, rendering, captions, the held-out split, loaders."""

import hashlib
import itertools
import random

import numpy as np
import pytest
import torch

from difflab.data.base import ImageData
from difflab.data.registry import DataConfig, dataset_caption_table, load_dataset
from difflab.data.shapes import (
    draw_training_scenes,
    evaluation_prompt_texts,
    geneval_prompts,
    held_out_prompts,
    load_shapes,
    make_shapes,
    make_test_set,
    make_training_set,
    scenes_for_specs,
    shapes_caption_table,
)
from difflab.data.shapes_grammar import (
    CATEGORIES,
    ObjectSpec,
    PromptSpec,
    held_out_in_spec,
    parse_prompt,
    placed_meanings,
    scene_meanings,
)
from difflab.data.shapes_scene import (
    COLOUR_NAMES,
    HELD_OUT_COLOUR_SHAPES,
    HELD_OUT_COUNTS,
    HELD_OUT_RELATIONS,
    MAX_OBJECTS,
    PALETTE,
    SHAPES,
    Scene,
    SceneBatch,
    ShapeObject,
    clear_place,
    held_out_in_scene,
    layout_valid,
    relation_holds,
    render,
)


@pytest.fixture(scope="module")
def train():
    return make_training_set(1500, seed=11)


# ---------------------------------------------------------------------------------------------
# The world and its pixels


def test_palette_colours_are_far_apart():
    for i, j in itertools.combinations(range(len(PALETTE)), 2):
        distance = np.linalg.norm(PALETTE[i].astype(float) - PALETTE[j])
        assert distance >= 100, (COLOUR_NAMES[i], COLOUR_NAMES[j], distance)


def _reference_render(scene: Scene, size: int = 32) -> np.ndarray:
    """Straight from the definition: every pixel of the image, every object, float64."""
    centres = np.arange(size) + 0.5
    y, x = np.meshgrid(centres, centres, indexing="ij")
    out = np.zeros((size, size, 3))
    for o in scene.objects:
        dx, dy, half = x - o.x, y - o.y, o.extent / 2
        if o.shape == "circle":
            d = np.hypot(dx, dy) - half
        elif o.shape == "square":
            d = np.maximum(abs(dx), abs(dy)) - half
        else:  # apex up: inside below the base line and inside both slanted sides
            d = np.maximum(dy - half, (2 * abs(dx) - dy - half) / np.sqrt(5))
        out += np.clip(0.5 - d, 0, 1)[..., None] * PALETTE[COLOUR_NAMES.index(o.colour)]
    return out.transpose(2, 0, 1)


def test_render_matches_the_definition_pixel_for_pixel():
    scenes = draw_training_scenes(40, seed=3)
    images = render(scenes)
    assert images.shape == (40, 3, 32, 32) and images.dtype == np.uint8
    for i, scene in enumerate(scenes.scenes()):
        diff = np.abs(images[i].astype(float) - _reference_render(scene))
        assert diff.max() <= 1.0  # rounding only


def test_rendered_objects_have_their_colour_area_and_centre():
    """Per object, from its own window of the image: the palette colour at its centre, a
    brightness mass equal to the shape's area (antialiasing conserves it) and a centroid at
    the shape's centroid (a triangle's lies a sixth of its height below the box centre)."""
    scenes = draw_training_scenes(200, seed=4)
    images = render(scenes).astype(float)
    for i, scene in enumerate(scenes.scenes()):
        for o in scene.objects:
            colour = PALETTE[COLOUR_NAMES.index(o.colour)].astype(float)
            channel = int(colour.argmax())
            assert np.array_equal(images[i, :, int(o.y), int(o.x)], colour)
            lo_x, hi_x = int(o.x - o.extent / 2 - 1), int(np.ceil(o.x + o.extent / 2 + 1))
            lo_y, hi_y = int(o.y - o.extent / 2 - 1), int(np.ceil(o.y + o.extent / 2 + 1))
            window = images[i, channel, lo_y:hi_y, lo_x:hi_x] / colour[channel]
            e = o.extent
            area = {"circle": np.pi * e * e / 4, "square": e * e, "triangle": e * e / 2}[o.shape]
            # Within a pixel's worth: the ramp rounds a triangle's sharp corners a little.
            assert window.sum() == pytest.approx(area, rel=0.02, abs=1.2)
            ys, xs = np.mgrid[lo_y:hi_y, lo_x:hi_x] + 0.5
            cy = o.y + (e / 6 if o.shape == "triangle" else 0.0)
            assert (window * xs).sum() / window.sum() == pytest.approx(o.x, abs=0.1)
            assert (window * ys).sum() / window.sum() == pytest.approx(cy, abs=0.1)


def test_render_scales_to_other_sizes():
    scenes = draw_training_scenes(20, seed=5)
    small, big = render(scenes, 32).astype(float), render(scenes, 64).astype(float)
    # Same picture at twice the resolution: 2x2 means agree up to the edges' rounding.
    pooled = big.reshape(20, 3, 32, 2, 32, 2).mean(axis=(3, 5))
    assert np.abs(pooled - small).mean() < 1.0
    with pytest.raises(ValueError, match="image_size"):
        render(scenes, 8)


def test_training_scenes_are_valid_and_varied(train):
    scenes = train.scenes
    assert layout_valid(scenes).all()
    counts = scenes.present.sum(axis=1)
    for n in range(1, MAX_OBJECTS + 1):
        assert 0.2 < (counts == n).mean() < 0.3  # uniform over 1-4 objects
    assert (scenes.size[scenes.present] == 1).mean() > 0.3  # both sizes, even when crowded
    used = {
        (COLOUR_NAMES[c], SHAPES[s])
        for c, s in zip(scenes.colour[scenes.present], scenes.shape[scenes.present], strict=True)
    }
    assert used == {(c, s) for c in COLOUR_NAMES for s in SHAPES} - HELD_OUT_COLOUR_SHAPES


def test_the_same_seed_gives_the_same_data():
    a, b, c = (make_training_set(300, seed=s) for s in (7, 7, 8))
    assert np.array_equal(a.images, b.images) and a.captions == b.captions
    assert not np.array_equal(a.images, c.images)
    assert make_test_set(50, seed=1).images.tobytes() == make_test_set(50, seed=1).images.tobytes()


def test_the_default_draw_is_the_one_the_shipped_model_was_trained_on():
    """Scenes and captions of seed 0 pinned: the shipped shapes-text's training data (seed 0,
    then seed 1 with relations for its continuation) must not drift when the generator grows options
    (data.relations draws from its own stream)."""
    train = make_training_set(500, seed=0)
    assert train.name == "shapes/train/seed0"
    digest = hashlib.sha256()
    for part in (train.scenes.shape, train.scenes.colour, train.scenes.size, train.scenes.xy):
        digest.update(np.ascontiguousarray(part).tobytes())
    digest.update("\n".join("|".join(c) for c in train.captions).encode())
    assert digest.hexdigest() == (
        "f3e1bca5bec2b019c022cb56ce3a272b4b9a220d707b0c1857e2760f48c8311a"
    )


def test_relation_scenes_show_the_relation_their_captions_state():
    """data.relations = 1: every scene is two phrases of 2-3 objects, one clearly beside or
    above the other, so a relation is among its meanings and about half its captions state
    one; valid layouts and no held-out composition, as in every training scene."""
    train = make_training_set(600, seed=4, relations=1.0)
    assert train.name == "shapes/train/seed4/relations1"
    scenes = train.scenes
    assert layout_valid(scenes).all()
    assert set(scenes.present.sum(axis=1)) == {2, 3}
    stated = []
    for scene, captions in zip(scenes.scenes(), train.captions, strict=True):
        assert not held_out_in_scene(scene)
        assert any(m.relation for m in scene_meanings(scene)), scene
        assert len(captions) == 8
        stated += [parse_prompt(c).relation is not None for c in captions]
    assert 0.4 < np.mean(stated) < 0.6
    # Both axes, each relation word's meaning.
    relations = {parse_prompt(c).relation for cs in train.captions for c in cs} - {None}
    assert relations == {"left of", "right of", "above", "below"}


def test_the_share_of_relation_scenes_follows_data_relations():
    """relations = r: r of the scenes are relation scenes on top of the default draw's own,
    which show one about one time in six; 0 is the default draw itself."""

    def share(r: float) -> float:
        scenes = draw_training_scenes(1500, seed=8, relations=r).scenes()
        return np.mean([any(m.relation for m in scene_meanings(s)) for s in scenes])

    base = share(0.0)
    assert 0.08 < base < 0.25
    half = share(0.5)
    assert half == pytest.approx(0.5 + 0.5 * base, abs=0.05)
    assert np.array_equal(
        draw_training_scenes(300, seed=8).xy, draw_training_scenes(300, seed=8, relations=0.0).xy
    )
    for bad in (-0.1, 1.5, True):
        with pytest.raises(ValueError, match="relations must be a share between 0 and 1"):
            draw_training_scenes(10, relations=bad)


# ---------------------------------------------------------------------------------------------
# The held-out split


def test_no_training_scene_holds_a_held_out_composition(train):
    bad = [s for s in train.scenes.scenes() if held_out_in_scene(s)]
    assert not bad, held_out_in_scene(bad[0])


def test_held_out_check_finds_each_kind():
    def obj(shape, colour="red", x=6.0, y=6.0):
        return ShapeObject(shape, colour, "small", x, y)

    assert held_out_in_scene(Scene((obj("circle", "green"),))) == ["a green circle"]
    three = Scene((obj("circle"), obj("circle", x=16), obj("circle", "blue", x=26)))
    assert held_out_in_scene(three) == ["3 circles"]
    beside = Scene((obj("circle"), obj("square", "blue", x=20)))
    assert held_out_in_scene(beside) == ["circle and square horizontally apart"]
    stacked = Scene((obj("circle"), obj("square", "blue", x=7, y=20)))
    assert held_out_in_scene(stacked) == []


def test_no_training_caption_is_a_test_prompt_or_names_a_held_out_composition(train):
    tests = evaluation_prompt_texts()
    captions = {c for cs in train.captions for c in cs}
    assert len(captions) > 3000
    assert not captions & tests
    for caption in captions:
        assert not held_out_in_spec(parse_prompt(caption)), caption


def test_test_prompts_cover_the_six_categories_and_every_held_out_composition():
    prompts = geneval_prompts()
    assert tuple(prompts) == CATEGORIES
    texts = [p.text() for ps in prompts.values() for p in ps]
    assert len(texts) == len(set(texts))
    for category, specs in prompts.items():
        assert len(specs) >= 6
        assert all(p.category == category for p in specs)
        assert all(parse_prompt(p.text()) == p for p in specs)
    held = held_out_prompts()
    assert not held["single_object"] and not held["two_object"]
    for category in ("counting", "colours", "position", "attribute_binding"):
        assert held[category], category
    named = {h for ps in held.values() for p in ps for h in held_out_in_spec(p)}
    assert {f"a {c} {s}" for c, s in HELD_OUT_COLOUR_SHAPES} <= named
    assert {f"{n} {s}s" for s, n in HELD_OUT_COUNTS} <= named
    for shapes, axis in HELD_OUT_RELATIONS:
        a, b = sorted(shapes)
        relations = ("left of", "right of") if axis == "horizontal" else ("above", "below")
        assert any(f"a {x} {r} a {y}" in named for x, y in ((a, b), (b, a)) for r in relations)


# ---------------------------------------------------------------------------------------------
# Captions and the grammar


def test_the_issue_examples_parse():
    assert parse_prompt("a red circle") == PromptSpec((ObjectSpec("circle", 1, "red"),))
    assert parse_prompt("two blue squares") == PromptSpec((ObjectSpec("square", 2, "blue"),))
    assert parse_prompt("a small green triangle to the left of a yellow circle") == PromptSpec(
        (ObjectSpec("triangle", 1, "green", "small"), ObjectSpec("circle", 1, "yellow")),
        "left of",
    )
    assert parse_prompt("A purple square above three orange circles.") == PromptSpec(
        (ObjectSpec("square", 1, "purple"), ObjectSpec("circle", 3, "orange")), "above"
    )
    # a question or exclamation mark ends a prompt as a full stop does; a comma at the
    # relation is a pause, not a list
    assert parse_prompt("a red circle, left of a blue square!") == parse_prompt(
        "a red circle left of a blue square?") == PromptSpec(
        (ObjectSpec("circle", 1, "red"), ObjectSpec("square", 1, "blue")), "left of")
    assert parse_prompt(
        "an image of one big red circle, two squares, and a triangle"
    ) == PromptSpec(
        (ObjectSpec("circle", 1, "red", "large"), ObjectSpec("square", 2), ObjectSpec("triangle"))
    )


def test_every_wording_parses_back_to_its_meaning():
    rng = random.Random(0)
    for scene in draw_training_scenes(300, seed=6).scenes():
        for meaning in scene_meanings(scene) + placed_meanings(scene):
            for _ in range(3):
                assert parse_prompt(meaning.text(rng)).canonical() == meaning.canonical()
            assert parse_prompt(meaning.text()) == meaning  # canonical text keeps the order


def test_captions_are_true_of_their_scene(train):
    """Each caption's objects, counted in the scene, are exactly the scene's objects (the
    relation part is checked on pixels by the scorer's tests)."""
    for scene, captions in zip(train.scenes.scenes()[:300], train.captions[:300], strict=True):
        assert captions
        for caption in captions:
            spec = parse_prompt(caption)
            assert spec.num_objects == len(scene.objects)
            for group in spec.groups:
                fits = [o for o in scene.objects if group.matches(o.shape, o.colour, o.size)]
                assert len(fits) >= group.count, (caption, scene)


def test_relation_captions_describe_clear_relations(train):
    seen = 0
    for scene, captions in zip(train.scenes.scenes(), train.captions, strict=True):
        for spec in map(parse_prompt, captions):
            if spec.relation is None:
                continue
            seen += 1
            a = [o for o in scene.objects if spec.groups[0].matches(o.shape, o.colour, o.size)]
            b = [o for o in scene.objects if spec.groups[1].matches(o.shape, o.colour, o.size)]
            for p, q in itertools.product(a, b):
                assert relation_holds((p.x, p.y), (q.x, q.y), spec.relation, p.extent, q.extent)
    assert seen > 300


@pytest.mark.parametrize(
    ("prompt", "complaint"),
    [
        ("a pink circle", "unexpected word 'pink'"),
        ("five circles", "'five' is more than the shapes world draws of one shape: at most "
                         "four"),
        ("7 squares", "'7' is more than"),
        ("big circles", "must start with a number word, not 'big'"),
        ("a red", "must end in a shape"),
        ("a circle left of a square above a triangle", "2 relations"),
        ("a circle and a square left of a triangle", "two single phrases"),
        ("", "empty phrase"),
        # a relation without an object on one side names the side, not an empty phrase
        ("left of a circle is a square", "nothing before 'left of'"),
        ("a red square to the left of", "nothing after 'to the left of'"),
    ],
)
def test_bad_prompts_say_what_is_wrong(prompt, complaint):
    with pytest.raises(ValueError, match=complaint):
        parse_prompt(prompt)


def test_specs_refuse_what_the_world_lacks():
    with pytest.raises(ValueError, match="shape 'hexagon'"):
        ObjectSpec("hexagon")
    with pytest.raises(ValueError, match="count 5"):
        ObjectSpec("circle", 5)
    with pytest.raises(ValueError, match="exactly two phrases"):
        PromptSpec((ObjectSpec("circle"),), "above")
    with pytest.raises(ValueError, match="asks for 5 objects"):
        scenes_for_specs([PromptSpec((ObjectSpec("circle", 4), ObjectSpec("square")))])


def test_scenes_for_specs_show_what_the_spec_says():
    specs = [p for ps in geneval_prompts().values() for p in ps]
    scenes = scenes_for_specs(specs, seed=2)
    assert layout_valid(scenes).all()
    for spec, scene in zip(specs, scenes.scenes(), strict=True):
        assert spec in scene_meanings(scene), spec.text()
        assert len(scene.objects) == spec.num_objects


# ---------------------------------------------------------------------------------------------
# Loaders


def test_image_data_and_caption_table_line_up():
    data = load_shapes("train", 200, seed=3)
    table = shapes_caption_table("train", 200, seed=3)
    full = make_shapes("train", 200, seed=3)
    assert isinstance(data, ImageData)
    assert data.images.shape == (200, 3, 32, 32) and data.images.dtype == torch.uint8
    assert torch.equal(data.labels, torch.arange(200))
    assert table.num_classes == 200
    for i in (0, 57, 199):
        assert table.captions_of(i) == full.captions[i]
    picked = table.pick(data.labels, torch.Generator().manual_seed(0))
    assert all(table.texts[int(t)] in full.captions[i] for i, t in enumerate(picked))
    test = load_shapes("test", 10, seed=0)
    assert len(test) == 10
    assert shapes_caption_table("test", 10).captions_of(0) == [
        geneval_prompts()["single_object"][0].text()
    ]


def test_data_relations_reaches_the_training_set_and_is_checked():
    cfg = DataConfig(name="shapes", num_samples=60, seed=2, relations=1.0)
    data, table = load_dataset(cfg), dataset_caption_table(cfg)
    same = make_training_set(60, seed=2, relations=1.0)
    assert np.array_equal(data.images.numpy(), same.images)
    assert table.texts == same.caption_table().texts
    with pytest.raises(ValueError, match=r"data.relations=1.5 is not a share: allowed 0 to 1"):
        DataConfig(name="shapes", relations=1.5)
    with pytest.raises(ValueError, match="data.relations does not apply to fashion_mnist"):
        DataConfig(name="fashion_mnist", relations=0.5)


def test_place_captions_say_where_each_placed_phrase_stands():
    """data.places = 1: every caption of a scene with a phrase wholly in one half of the
    image says where some phrase stands; each placed phrase's objects all lie in that half,
    both axes and all four places occur, and no caption names a held-out composition (two
    phrases in opposite halves count as a relation)."""
    train = make_training_set(400, seed=3, places=1.0)
    assert train.name == "shapes/train/seed3/places1"
    placed_captions = 0
    seen_places = set()
    for scene, captions in zip(train.scenes.scenes(), train.captions, strict=True):
        can = bool(placed_meanings(scene))
        for caption in captions:
            spec = parse_prompt(caption)
            assert not held_out_in_spec(spec), caption
            placed = [g for g in spec.groups if g.place is not None]
            assert bool(placed) == can, (caption, scene)
            placed_captions += bool(placed)
            for g in placed:
                seen_places.add(g.place)
                members = [o for o in scene.objects if g.matches(o.shape, o.colour, o.size)]
                assert members and all(clear_place(o.x, o.y, g.place, o.extent) for o in members)
    assert seen_places == {"left", "right", "top", "bottom"}
    assert placed_captions > 0.3 * sum(map(len, train.captions))  # about half the scenes can
    # The same scenes as without places: only the words change.
    assert np.array_equal(train.scenes.xy, make_training_set(400, seed=3).scenes.xy)


def test_places_in_prompts_parse_and_count_as_position():
    prompt = "A picture of two big blue squares on the left side and a circle at the top."
    spec = parse_prompt(prompt)
    assert spec == PromptSpec(
        (ObjectSpec("square", 2, "blue", "large", "left"), ObjectSpec("circle", place="top"))
    )
    assert spec.category == "position"
    assert spec.text() == "two large blue squares on the left and a circle at the top"
    assert held_out_in_spec(parse_prompt("a circle on the left and a square on the right")) == [
        "a circle on the left and a square on the right"
    ]
    assert held_out_in_spec(parse_prompt("a circle at the top and a square at the bottom")) == []
    assert parse_prompt("a circle on the left side of a square").relation == "left of"
    # the relation words relation guidance reads are read here too (no warning for them)
    assert parse_prompt("a yellow square underneath a green circle").relation == "below"
    with pytest.raises(ValueError, match="place 'middle': allowed left, right, top, bottom"):
        ObjectSpec("circle", place="middle")


def test_data_places_reaches_the_training_set_and_is_checked():
    cfg = DataConfig(name="shapes", num_samples=60, seed=2, places=0.5)
    table = dataset_caption_table(cfg)
    assert table.texts == make_training_set(60, seed=2, places=0.5).caption_table().texts
    assert any(parse_prompt(t).category == "position" for t in table.texts)
    with pytest.raises(ValueError, match=r"data.places=2 is not a share: allowed 0 to 1"):
        DataConfig(name="shapes", places=2)
    with pytest.raises(ValueError, match="data.places does not apply to digits"):
        DataConfig(name="digits", places=0.5)


def test_loader_arguments_are_checked():
    with pytest.raises(ValueError, match="split 'val'"):
        make_shapes("val", 10)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        make_shapes("train", 0)
    with pytest.raises(ValueError, match="image_size"):
        make_shapes("train", 10, image_size=7)
    with pytest.raises(ValueError, match="1..4"):
        SceneBatch.from_scenes([Scene(())])
