"""The one table of datasets (difflab.data.catalog): every other table is a view of it, and a
class name resolves to the same class in config validation, loading, captions and evaluation."""

import pytest

from difflab.config import ConfigError, load_config
from difflab.data import (
    CAPTIONED_DATASETS,
    CATALOG,
    DATASET_NAMES,
    FEATURE_DATASETS,
    DataConfig,
    DatasetSpec,
    class_aliases,
    dataset_spec,
    find_dataset,
    load_dataset,
    resolve_class,
)
from difflab.data.caption_words import caption_words
from difflab.data.captions import class_captions
from difflab.metrics import evaluate_images, features

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def evaluation_index(dataset: str, name: str | int) -> int:
    """The dataset label evaluation resolves a configured class name to: the lookup
    metrics.evaluate and difflab.evaluation make with the feature tables."""
    return resolve_class(name, features.CLASS_NAMES[dataset], features.CLASS_ALIASES[dataset])


def test_the_feature_tables_are_views_of_the_catalog():
    assert DATASET_NAMES == ("fashion_mnist", "mnist", "digits", "image_folder", "hf", "toy2d",
                             "shapes")
    assert features.DATASETS == FEATURE_DATASETS == ("fashion_mnist", "mnist", "digits")
    assert CAPTIONED_DATASETS == ("fashion_mnist", "mnist", "digits")
    every_name = [n for spec in CATALOG for n in (spec.name, *spec.aliases)]
    assert len(set(every_name)) == len(every_name)
    assert all(find_dataset(n).name in DATASET_NAMES for n in every_name)
    for spec in CATALOG:
        if spec.features is None:
            assert spec.name not in features.CLASS_NAMES
            continue
        assert spec.features in features.RECIPES
        assert features.CLASS_NAMES[spec.name] == spec.class_names
        assert features.CLASS_ALIASES[spec.name] == spec.class_aliases
    # MNIST and the 8x8 digits are the same ten classes under the same names.
    assert dataset_spec("mnist").class_names == dataset_spec("digits").class_names
    assert dict(dataset_spec("digits").class_aliases) == {w: i for i, w in enumerate(DIGIT_WORDS)}
    assert dataset_spec("fashion_mnist").class_names[9] == "Ankle boot"


@pytest.mark.parametrize("dataset", CAPTIONED_DATASETS)
def test_caption_words_are_for_the_catalog_classes_in_label_order(dataset):
    spec = dataset_spec(dataset)
    assert caption_words(spec.captions).class_names == spec.class_names


@pytest.mark.parametrize("spelling", ["seven", "Seven", " SEVEN ", "7", 7])
def test_mnist_seven_resolves_alike_in_config_and_evaluation(spelling):
    """The known failure: data.classes = ["seven"] trained, then the first FID raised,
    because evaluation's table had no digit words. Config -> the index evaluation uses."""
    cfg = load_config(None, ["data.name=mnist", f"data.classes=[{spelling!r}]"])
    assert cfg.data.classes == [spelling]  # kept as written: checkpoints record it so
    assert [evaluation_index("mnist", c) for c in cfg.data.classes] == [7]
    assert dataset_spec("mnist").class_indices(cfg.data.classes) == [7]
    # The caption lookup and a Generator's (class_aliases) agree as well.
    assert class_captions("mnist", cfg.data.classes) == [class_captions("mnist")[7]]
    names = dataset_spec("mnist").class_names
    assert resolve_class("seven", names, class_aliases("mnist", names)) == 7


def test_every_accepted_spelling_evaluates_to_its_class():
    for spec in CATALOG:
        if spec.features is None:
            continue
        for label, name in enumerate(spec.class_names):
            DataConfig(name=spec.name, classes=[name, label])
            assert evaluation_index(spec.name, name) == label
        for alias, label in spec.class_aliases.items():
            DataConfig(name=spec.name, classes=[alias])
            assert evaluation_index(spec.name, alias) == label


def test_seven_through_loading_to_fid():
    """End to end on the 8x8 digits (MNIST's class table, seconds): a config that names a
    class by its word loads that class and scores against that class's real images."""
    cfg = load_config(None, ["data.name=digits", 'data.classes=["seven"]'])
    data = load_dataset(cfg.data)
    assert data.class_names == ("7",) and len(data) == 179  # scikit-learn's count of 7s
    report = evaluate_images(
        data.images[:100], "digits", classes=cfg.data.classes, kid_subset_size=30, kid_subsets=5
    )
    assert report["reference"]["classes"] == ["7"] and report["reference"]["num_images"] == 36
    assert report["predicted_class_fractions"]["7"] > 0.95
    assert 0 <= report["fid"] < 20  # real sevens against real sevens


def test_a_bad_class_name_fails_at_config_time_listing_the_names():
    with pytest.raises(ValueError) as caught:
        DataConfig(name="mnist", classes=["sevn"])
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("data.classes: unknown class 'sevn': allowed 0='0', 1='1',")
    assert "9='9'; aliases: 'eight'," in message and "'seven'" in message
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["data.name=fashion_mnist", 'data.classes=["Sneaker", "hat"]'])
    message = str(caught.value)
    assert "\n" not in message
    assert "data.classes: unknown class 'hat': allowed 0='T-shirt/top'" in message
    assert "9='Ankle boot'; aliases: " in message and "'sneakers'" in message
    with pytest.raises(ValueError, match=r"data.classes: class index 10 is out of range: "
                                         r"allowed 0\.\.9"):  # fmt: skip
        DataConfig(name="digits", classes=[10])
    with pytest.raises(ValueError, match="data.classes is empty; leave it unset"):
        DataConfig(name="digits", classes=[])


def test_classes_of_folders_are_checked_when_loaded_not_before():
    """An image folder's classes are its sub-folders, unknown until it is read."""
    cfg = DataConfig(name="image_folder", root="/nowhere", folder_labels=True, classes=["cat"])
    assert cfg.classes == ["cat"]


def test_unknown_dataset_lists_the_names():
    with pytest.raises(ValueError, match="unknown dataset 'cifar': allowed fashion_mnist, mnist"):
        dataset_spec("cifar")
    with pytest.raises(ValueError, match="data.name='cifar': allowed fashion_mnist, mnist"):
        DataConfig(name="cifar")


def test_spec_invariants_and_read_only_tables():
    spec = dataset_spec("fashion_mnist")
    with pytest.raises(TypeError):
        spec.class_aliases["hat"] = 0  # type: ignore[index]
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"class aliases \{'ten': 10\} name no class"):
        DatasetSpec("x", class_names=("a", "b"), class_aliases={"ten": 10})
    with pytest.raises(ValueError, match="captions and features need fixed classes"):
        DatasetSpec("x", features="digits")
    with pytest.raises(ValueError, match="image_folder has no fixed classes"):
        dataset_spec("image_folder").class_index("cat")
