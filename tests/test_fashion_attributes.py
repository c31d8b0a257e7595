"""Tone and pattern of Fashion-MNIST images, measured from their pixels, and the attribute
captions written from them (difflab.data.fashion_attributes, issue 18): the statistics on
images whose answer is known by construction, on real images anyone can check by eye, the
caption groups, held-out wording, the dataset option that trains on them, and a two-step run."""

import re
import tomllib

import numpy as np
import pytest
import torch
from tiny_run import ROOT

from difflab.config import ConfigError, load_config
from difflab.data import DataConfig, load_dataset, load_fashion_mnist
from difflab.data.captions import class_captions, held_out_prompts
from difflab.data.fashion_attributes import (
    GROUPS,
    NO_PATTERN,
    PATTERN_CLASSES,
    PATTERNS,
    TONE_CUTS,
    TONES,
    WORDS_FILE,
    Group,
    attribute_caption_table,
    attribute_words,
    fill,
    fit_tone_cuts,
    group_captions,
    group_labels,
    held_out_attribute_prompts,
    measure,
    pattern_of,
    pattern_satisfies,
    pixel_stats,
    read_attribute_prompts,
    read_attribute_words,
    stated_attributes,
)
from difflab.data.registry import dataset_caption_table
from difflab.pipeline import Generator
from difflab.training.trainer import Trainer

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot")

# ---------------------------------------------------------------------------------------------
# The statistics on images with a known answer


def garment(value: int = 200, top: int = 3, height: int = 22, left: int = 6, width: int = 16
            ) -> np.ndarray:
    """One 28x28 uint8 image: a flat rectangle of `value` on black."""
    x = np.zeros((28, 28), np.uint8)
    x[top : top + height, left : left + width] = value
    return x


def one(*images: np.ndarray) -> tuple[list[str], list[str | None]]:
    tones, patterns = measure(np.stack(images))
    return ([TONES[t] for t in tones],
            [PATTERNS[p] if p != NO_PATTERN else None for p in patterns])


def test_a_flat_garment_has_its_own_brightness_and_is_plain():
    stats = pixel_stats(np.stack([garment(v) for v in (100, 170, 230)]))
    assert stats.brightness.tolist() == [100.0, 170.0, 230.0]  # the core's mean, exactly
    assert stats.edge_density.tolist() == [0.0, 0.0, 0.0]
    assert stats.interior.tolist() == [18 * 12] * 3  # eroded twice: 2 px off each side
    assert one(garment(100), garment(170), garment(230)) == (
        ["dark", "mid", "light"], ["plain", "plain", "plain"])


def test_tone_cuts_are_where_the_constants_say():
    low, high = TONE_CUTS
    values = [int(np.floor(low)), int(np.ceil(low)), int(np.floor(high)), int(np.ceil(high))]
    assert one(*(garment(v) for v in values))[0] == ["dark", "mid", "mid", "light"]


def test_horizontal_stripes_are_striped_and_other_textures_patterned():
    rows, cols = np.arange(28)[:, None], np.arange(28)[None, :]
    base = garment(255) > 0
    # 2 px light, 2 px dark, down the garment: Breton stripes.
    stripes = np.where(base, np.where((rows // 2) % 2 == 0, 230, 60), 0).astype(np.uint8)
    vertical = np.ascontiguousarray(stripes.T)  # the same garment turned: lines down it
    checks = np.where(base, np.where((rows // 2 + cols // 2) % 2 == 0, 230, 60), 0)
    stats = pixel_stats(np.stack([stripes, vertical, checks.astype(np.uint8)]))
    assert stats.stripe_ratio[0] >= 100 and stats.alternations[0] >= 8
    assert stats.stripe_ratio[1:].max() < 1  # each row alike: no row profile to speak of
    assert one(stripes, vertical, checks.astype(np.uint8))[1] == [
        "striped", "patterned", "patterned"]
    # The same stripes at low contrast (under EDGE_STEP) are no edges: a plain garment.
    faint = np.where(base, np.where((rows // 2) % 2 == 0, 200, 180), 0).astype(np.uint8)
    assert one(faint)[1] == ["plain"]


def test_a_garment_between_plain_and_patterned_states_no_pattern():
    """A light garment with a 6x8 checked logo: 55 of its 216 interior pixels are on an edge
    (the logo's 48, and 7 where the plain cloth steps into it), 0.255, in the middle band."""
    x = garment(200)
    rows, cols = np.arange(28)[:, None], np.arange(28)[None, :]
    logo = np.zeros((28, 28), bool)
    logo[10:16, 10:18] = True
    x[logo & ((rows + cols) % 2 == 0)] = 80
    stats = pixel_stats(x[None])
    assert stats.interior[0] == 216 and stats.edge_density[0] == pytest.approx(55 / 216)
    assert stats.stripe_ratio[0] < 1  # every row of the logo has the same mean
    assert pattern_of(stats).tolist() == [NO_PATTERN]
    # Three thin dark lines across the same garment, though, are stripes.
    x = garment(200)
    x[9:15:2] = np.where(garment(255)[9:15:2] > 0, 80, 0)
    assert one(x)[1] == ["striped"]


def test_straps_and_empty_images():
    strap = np.zeros((28, 28), np.uint8)
    strap[14:16, 2:26] = 220  # 2 px wide: no core, no interior
    stats = pixel_stats(np.stack([strap, np.zeros((28, 28), np.uint8)]))
    assert stats.brightness.tolist() == [220.0, 0.0]  # the strap's 75th percentile
    assert stats.interior.tolist() == [0, 0]
    assert one(strap, np.zeros((28, 28), np.uint8)) == (["light", "dark"], [None, None])


def test_inputs_are_checked_and_both_layouts_agree():
    x = np.stack([garment(100), garment(230)])
    assert np.array_equal(measure(x)[0], measure(torch.from_numpy(x[:, None]))[0])
    with pytest.raises(ValueError, match=r"uint8 images \(N, 28, 28\).*got float32"):
        measure(x.astype(np.float32))
    with pytest.raises(ValueError, match=r"got uint8 with shape \(2, 1, 32, 32\)"):
        measure(np.zeros((2, 1, 32, 32), np.uint8))


def test_group_labels_need_standard_classes_one_per_image():
    x = np.stack([garment(100), garment(230)])
    assert [GROUPS[g] for g in group_labels([4, 5], x).tolist()] == [
        Group(4, "dark", "plain"), Group(5, "light", None)]  # sandals state no pattern
    with pytest.raises(ValueError, match="3 class labels for 2 images"):
        group_labels([0, 1, 2], x)
    with pytest.raises(ValueError, match=r"Fashion-MNIST's 0..9, got 0..10"):
        group_labels([0, 10], x)


def test_pattern_satisfies_counts_stripes_as_a_pattern():
    assert pattern_satisfies("patterned", PATTERNS.index("striped"))
    assert not pattern_satisfies("striped", PATTERNS.index("patterned"))
    assert not pattern_satisfies("plain", NO_PATTERN)
    assert pattern_satisfies("plain", PATTERNS.index("plain"))


# ---------------------------------------------------------------------------------------------
# On the real training images


@pytest.fixture(scope="module")
def train():
    return load_fashion_mnist("train")


def test_real_images_anyone_can_check_by_eye(train):
    """Training images looked at one by one (docs/fashion_attributes.md)."""
    images, labels = train
    seen = {
        868: ("Dress", None, "striped"), 1011: ("Dress", None, "striped"),
        1356: ("Dress", None, "striped"),
        222: ("T-shirt/top", "light", "plain"), 370: ("Dress", "light", "plain"),
        202: ("T-shirt/top", "dark", "plain"), 429: ("T-shirt/top", "dark", "plain"),
        61: ("T-shirt/top", "dark", "patterned"),  # a floral print
        235: ("Shirt", "dark", "patterned"),  # a plaid
    }
    index = list(seen)
    tones, patterns = one(*images[index, 0])
    for i, t, p in zip(index, tones, patterns, strict=True):
        name, tone, pattern = seen[i]
        assert (CLASSES[labels[i]], p) == (name, pattern), i
        assert tone in (None, t), i


def test_tone_cuts_are_the_training_tertiles_and_no_class_fixes_an_attribute(train):
    images, labels = train
    assert fit_tone_cuts(images) == TONE_CUTS
    tones, patterns = measure(images)
    for c in range(10):
        share = np.bincount(tones[labels == c], minlength=3) / (labels == c).sum()
        assert share.min() > 0.08, (CLASSES[c], share)  # every class has every tone
        if c in PATTERN_CLASSES:
            p = patterns[labels == c]
            assert (p == 0).mean() > 0.1 and (p == 1).mean() > 0.1, CLASSES[c]
    assert 100 <= ((patterns == 2) & np.isin(labels, PATTERN_CLASSES)).sum() <= 400


# ---------------------------------------------------------------------------------------------
# Captions


def test_fill_puts_adjectives_where_english_wants_them():
    dark, stripes = ("dark", "in a dark shade"), ("striped", "with stripes")
    assert fill("{a} {tone} {pattern} {name}", "pair of trousers", dark, stripes) == (
        "a pair of dark striped trousers")
    assert fill("{a} {name} {tone_phrase}, {pattern_phrase}", "shirt", dark, stripes) == (
        "a shirt in a dark shade, with stripes")
    assert fill("{a} {name} that is {tone}", "ankle boot", ("off-white", "x")) == (
        "an ankle boot that is off-white")
    with pytest.raises(ValueError, match="needs {tone} and {pattern}"):
        fill("{a} {tone} {pattern} {name}", "shirt", dark)
    with pytest.raises(ValueError, match="slot left unfilled"):
        fill("{a} {name} {pattern_phrase}", "shirt", dark)


def test_caption_groups_are_well_formed_and_say_only_their_group():
    caps = group_captions()
    assert len(GROUPS) == len(caps) == 10 * 3 + 6 * 3 * 3 <= 90
    assert len(set(GROUPS)) == len(GROUPS)
    table = attribute_caption_table()
    assert table.num_classes == len(GROUPS) and len(table.texts) == len(set(table.texts))
    for group, texts in zip(GROUPS, caps, strict=True):
        assert len(texts) >= 40 and len(set(texts)) == len(texts)
        assert table.captions_of(GROUPS.index(group)) == list(texts)
        stated = {"tone": set(), "pattern": set()}
        for text in texts:
            assert "{" not in text and "  " not in text, text
            said = stated_attributes(text)
            assert said["tone"] <= {group.tone}, (group, text)
            assert said["pattern"] <= ({group.pattern} if group.pattern else set()), (group, text)
            for attr in stated:
                stated[attr] |= said[attr]
        assert stated["tone"] == {group.tone}  # some captions say it...
        assert stated["pattern"] == ({group.pattern} if group.pattern else set())
        # ...some say only the class
        assert sum(not any(stated_attributes(t).values()) for t in texts) >= 20


def test_class_only_captions_are_class_captions_that_state_no_attribute():
    words = attribute_words()
    avoid = [w.lower() for w in words.class_only_exclude]
    for group, texts in zip(GROUPS, group_captions(), strict=True):
        plain = [t for t in texts if not any(stated_attributes(t).values())]
        assert set(plain) <= set(class_captions("fashion_mnist")[group.label])
        for text in plain:
            assert not any(re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", text.lower())
                           for w in avoid), text


def test_held_out_prompts_are_disjoint_from_training_wording():
    prompts = held_out_attribute_prompts()
    training = {t.lower() for t in attribute_caption_table().texts}
    assert len(prompts) == 2 * (10 * 3 + 6 * 3 * 3 + 6 * 3) == len({p.text for p in prompts})
    assert not {p.text.lower() for p in prompts} & training
    # No held-out term is in any training caption, even inside a longer one.
    words = attribute_words()
    held = words.vocabulary(True)
    assert held and not held & words.vocabulary(False)
    for text in training:
        assert not any(re.search(rf"(?<![\w-]){re.escape(h.lower())}(?![\w-])", text)
                       for h in held), text
    # Nor is any class paraphrase that bench/prompt_fidelity.py holds out a training caption.
    class_held = {p.lower() for ps in held_out_prompts("fashion_mnist").values() for p in ps}
    assert not class_held & training
    # Each prompt states exactly what it is filed under, in held-out words only.
    for p in prompts:
        said = stated_attributes(p.text)
        assert said["tone"] == ({p.tone} if p.tone else set()), p
        assert said["pattern"] == ({p.pattern} if p.pattern else set()), p
        assert p.pattern is None or p.label in PATTERN_CLASSES
        assert any(re.search(rf"(?<![\w-]){re.escape(h.lower())}(?![\w-])", p.text.lower())
                   for h in held), p


def test_the_independent_prompt_set_asks_every_attribute_of_every_class_twice():
    """bench/prompts/attribute_check.txt, written without reading the captions, parses and
    has the held-out set's design: two prompts per (class, tone, pattern) asked."""
    prompts = read_attribute_prompts(ROOT / "bench" / "prompts" / "attribute_check.txt")
    asks = [(p.label, p.tone, p.pattern) for p in prompts]
    assert len(prompts) == len({p.text for p in prompts}) == 204
    assert set(asks) == {(p.label, p.tone, p.pattern) for p in held_out_attribute_prompts()}
    assert all(asks.count(a) == 2 for a in asks)


@pytest.mark.parametrize("line, match", [
    ("Shirt\tdark\tplain", "3 tab-separated fields"),
    ("Hoodie\tdark\t-\ta dark hoodie", "class 'Hoodie' is not one of"),
    ("Shirt\tnavy\t-\ta navy shirt", "tone must be one of"),
    ("Sandal\t-\tstriped\ta striped sandal", "pattern is only asked of"),
    ("Shirt\t-\t-\ta shirt", "must ask for a tone or a pattern"),
])
def test_a_broken_prompt_file_is_refused_naming_the_line(tmp_path, line, match):
    path = tmp_path / "prompts.txt"
    path.write_text(f"# a comment\n\nShirt\tdark\t-\ta dark shirt\n{line}\n")
    with pytest.raises(ValueError, match=match) as caught:
        read_attribute_prompts(path)
    assert "line 4" in str(caught.value)
    path.write_text("# nothing but comments\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        read_attribute_prompts(path)


def test_the_words_file_ships_with_the_package():
    """pyproject's package-data globs (as setuptools reads them: "*" stays in one folder)
    take in the words file, so an installed difflab has it."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["difflab"]
    package = ROOT / "src" / "difflab"
    assert any(WORDS_FILE in package.glob(p) for p in patterns)


def test_the_words_file_reader_refuses_broken_files(tmp_path):
    text = WORDS_FILE.read_text(encoding="utf-8")
    assert read_attribute_words(WORDS_FILE) == attribute_words()

    def broken(new_text: str):
        path = tmp_path / "words.toml"
        path.write_text(new_text, encoding="utf-8")
        return path

    for new_text, message in [
        (text.replace("[tones.mid]", "[tones.medium]"), r"tones: missing mid, unknown medium"),
        (text.replace('class = "Bag"', 'class = "Purse"'), r"classes\[8\].class is 'Purse'"),
        (text.replace('held_out_words = ["charcoal", "dusky"]', "held_out_words = []"),
         r"tones.dark.held_out_words must be a non-empty list"),
        (text.replace("[held_out_templates]", "[held_out_template]"), "missing held_out_templates"),
        ("templates = [", "not valid TOML"),
    ]:
        with pytest.raises(ValueError, match=message):
            read_attribute_words(broken(new_text))


# ---------------------------------------------------------------------------------------------
# The dataset option


def test_attribute_captions_label_images_by_their_group_and_every_caption_is_true():
    cfg = DataConfig(name="fashion_mnist", captions="attributes", limit=300)
    data = load_dataset(cfg)
    plain = load_dataset(DataConfig(name="fashion_mnist", limit=300))
    assert torch.equal(data.images, plain.images) and data.class_names is None
    table = dataset_caption_table(cfg)
    assert table.texts == attribute_caption_table().texts
    tones, patterns = measure(data.images)
    for i, group in enumerate(data.labels.tolist()):
        g = GROUPS[group]
        pattern = PATTERNS[patterns[i]] if patterns[i] != NO_PATTERN else None
        assert g.label == int(plain.labels[i]) and g.tone == TONES[tones[i]]
        assert g.pattern == (pattern if g.label in PATTERN_CLASSES else None)
        for text in table.captions_of(group):
            said = stated_attributes(text)
            assert said["tone"] <= {TONES[tones[i]]} and said["pattern"] <= {pattern} - {None}
    # A class subset keeps the standard classes' groups; a resize comes after measuring.
    some = load_dataset(DataConfig(name="fashion_mnist", captions="attributes",
                                   classes=["sneakers", "Dress"], limit=40, image_size=32))
    assert some.images.shape[-1] == 32
    assert {GROUPS[g].label for g in some.labels.tolist()} == {3, 7}


@pytest.mark.parametrize("settings, match", [
    ({"name": "mnist", "captions": "attributes"},
     "data.captions = 'attributes' applies to fashion_mnist only"),
    ({"name": "fashion_mnist", "captions": "attribute"}, "allowed default, attributes"),
])
def test_bad_caption_settings_are_one_line(settings, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(**settings)
    with pytest.raises(ConfigError, match=match):
        load_config(None, [f"data.{k}={v!r}" for k, v in settings.items()])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """configs/fashion_text_attributes.toml trained two steps with a small network and the
    trainable text encoder (the minilm one would spend minutes encoding every caption once):
    the wiring, not the learning."""
    root = tmp_path_factory.mktemp("attributes")
    steps = ["train.max_steps=2", "train.batch_size=8", "train.precision='fp32'",
             "train.threads=1", "train.warmup_steps=1", "train.log_every=1",
             "train.sample_every=1000", "train.checkpoint_every=100", "data.limit=64"]
    cfg = load_config(ROOT / "configs" / "fashion_text_attributes.toml", [
        *steps, "text.encoder='trainable'", "text.tokens='all'", "text.width=32",
        "text.depth=1", "model.overrides.context_dim=32", "model.overrides.base_channels=8",
        "model.overrides.groups=4", "model.overrides.transformer_head_dim=8", "sample.steps=2"])
    trainer = Trainer(cfg, root / "run", quiet=True)
    trainer.train()
    return root / "run" / "last", trainer


def test_a_tiny_attribute_run_trains_on_group_captions_and_samples(tiny_run):
    ckpt, trainer = tiny_run
    assert trainer.step == 2 and trainer.data.class_names is None
    assert trainer.captions.texts == attribute_caption_table().texts
    assert trainer.captions.num_classes == len(GROUPS)
    gen = Generator.from_checkpoint(ckpt, device="cpu")
    assert gen.config["run"]["data"]["name"] == "fashion_mnist"  # FID, eval: as ever
    assert gen.config["run"]["data"]["captions"] == "attributes"
    images = gen.generate(2, prompt="a charcoal hooped top", seed=0)
    assert images.shape == (2, 1, 28, 28) and images.dtype == torch.uint8
    assert len(measure(images)[0]) == 2
