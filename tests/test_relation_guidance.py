"""Relation guidance (difflab.pipeline.relation_guidance): reading a prompt's relation, finding
its words among the word pieces, the energy on attention centroids in closed form, the
recorded attention maps, and what it does to the shipped `shapes-text`."""

import pytest
import torch
from shapes_scoring import SHIPPED, correct_images

from difflab.cli import main
from difflab.models.attention import CrossAttention, recording_attention_maps
from difflab.models.text import PretrainedTextEncoder
from difflab.pipeline.attention_guidance import finest_maps
from difflab.pipeline.relation_guidance import (
    RELATION_MARGIN,
    Relation,
    RelationTarget,
    describe_relation,
    find_relation,
    relation_energy,
    relation_targets,
)


@pytest.mark.parametrize("prompt, relation", [
    ("a red circle to the left of a blue square", Relation("circle", "square", 1, 1)),
    ("A Red Circle Left Of A Blue Square.", Relation("circle", "square", 1, 1)),
    ("two small squares on the right side of a big triangle",
     Relation("squares", "triangle", 1, -1)),
    ("a circle to the left side of a square", Relation("circle", "square", 1, 1)),
    ("a picture of a green triangle on top of a circle on a black background",
     Relation("triangle", "circle", 0, 1)),
    ("a dog sitting beneath a wooden table, at dusk", Relation("dog", "table", 0, -1)),
    ("a cat over a mat and a hat", Relation("cat", "mat", 0, 1)),
    ("a yellow square underneath three purple circles", Relation("square", "circles", 0, -1)),
    ("the red circle is directly above the blue square", Relation("circle", "square", 0, 1)),
    # accents and capitals: words are runs of letters, compared in lower case
    ("a rëd Círcle to the left of a blue squaré", Relation("círcle", "squaré", 1, 1)),
    # a second relation ends the second phrase: no relation the prompt does not state
    ("a red circle left of a blue square right of a green triangle",
     Relation("circle", "square", 1, 1)),
])
def test_a_relation_is_read_from_any_wording(prompt, relation):
    assert find_relation(prompt) == relation


@pytest.mark.parametrize("prompt", [
    "a red circle and a blue square", "three circles on the left", "left of",
    "a sleft offer", "a circle above",
    "a red circle on the left side of the picture",  # a place in the frame, not a relation
    "a red circle in the left of the image",
    # a denied relation has nothing to steer towards
    "a red circle is not left of a blue square", "a red circle isn't above a blue square",
])
def test_a_prompt_without_two_related_objects_has_no_relation(prompt):
    assert find_relation(prompt) is None


def test_the_objects_are_found_among_the_word_pieces():
    encoder = PretrainedTextEncoder()
    prompts = ["a small red circle to the left of two big blue squares on a black background",
               "a circle beneath a circle", "a red circle and a blue square"]
    first, second, none = relation_targets(encoder, prompts, offset=1)
    ids, _ = encoder.tokenize(prompts[:2])
    from difflab.models.text import _tokenizer

    def pieces(row, positions):
        return _tokenizer().convert_ids_to_tokens([ids[row, i - 1].item() for i in positions])

    assert pieces(0, first.first) == ["circle"] and pieces(0, first.second) == ["squares"]
    assert (first.axis, first.sign) == (1, 1)
    # the same word twice: the first is the one before the relation, the second the last
    assert second.first == [3] and second.second == [6] and (second.axis, second.sign) == (0, -1)
    assert none is None
    # accented words keep their pieces (the tokenizer strips accents; its spans do not move)
    (accented,) = relation_targets(encoder, ["a rëd Círcle to the left of a blue squaré"], 1)
    assert accented is not None and pieces_of(encoder, accented.first) == ["circle"]


@pytest.mark.parametrize("prompt, first, second", [
    # the relation's own words, where the same word also names another object
    ("a red circle to the left of a blue square and a green square", "red circle", "blue square"),
    ("a blue circle and a red circle left of a square", "red circle", "a square"),
])
def test_guidance_follows_the_relations_own_words_not_their_namesakes(prompt, first, second):
    encoder = PretrainedTextEncoder()
    (target,) = relation_targets(encoder, [prompt], offset=1)
    word_pieces = encoder.piece_spans(prompt)

    def phrase_of(positions):  # the object's word piece, with the word before it
        (i,) = positions
        (a, _), (_, b) = word_pieces[i - 2], word_pieces[i - 1]
        return prompt[a:b]

    assert phrase_of(target.first) == first and phrase_of(target.second) == second


def pieces_of(encoder, positions, prompt="a rëd Círcle to the left of a blue squaré"):
    from difflab.models.text import _tokenizer

    ids, _ = encoder.tokenize([prompt])
    return _tokenizer().convert_ids_to_tokens([ids[0, i - 1].item() for i in positions])


def test_a_relation_past_the_encoders_word_pieces_is_said_to_be_drawn_without():
    encoder = PretrainedTextEncoder()
    prompt = "a big red circle, " * 16 + "and a purple square left of a green triangle"
    assert relation_targets(encoder, [prompt], 1) == [None]
    assert describe_relation(prompt, encoder) == (
        "'square' left of 'triangle' is past the 64 word pieces the text encoder reads; it is "
        "drawn without")
    assert describe_relation("a circle above a square", encoder) == "'circle' above 'square'"


def _maps(side, first_column, second_column):
    """One sample's maps: each of two words (context positions 1 and 2) attends only to one
    column of a side x side map."""
    maps = torch.zeros(1, side * side, 3)
    grid = maps[0].view(side, side, 3)
    grid[:, first_column, 1] = 1.0
    grid[:, second_column, 2] = 1.0
    return maps


def test_the_energy_is_the_margin_less_the_gap_of_the_centroids():
    target = RelationTarget([1], [2], axis=1, sign=1)  # the first word left of the second

    def energy(maps, target=target):
        return relation_energy(target, finest_maps(maps)[0]).item()

    # columns 0 and 3 of 4: centroids 0.125 and 0.875, the gap 0.75 holds it with room
    assert energy([_maps(4, 0, 3)]) == 0.0
    # swapped: gap -0.75, energy margin + 0.75
    assert energy([_maps(4, 3, 0)]) == pytest.approx(RELATION_MARGIN + 0.75)
    # adjacent columns 1 and 2: gap 0.25 < margin
    assert energy([_maps(4, 1, 2)]) == pytest.approx(RELATION_MARGIN - 0.25)
    # coarser layers are left out: only the finest resolution is read
    assert energy([_maps(4, 1, 2), torch.rand(1, 4, 3)]) == pytest.approx(RELATION_MARGIN - 0.25)
    # the vertical axis reads rows: a word in every column of row 0 is above one in row 3
    rows = _maps(4, 0, 3)[0].view(4, 4, 3).transpose(0, 1).reshape(1, 16, 3)
    assert energy([rows], RelationTarget([1], [2], axis=0, sign=1)) == 0.0
    assert energy([rows], RelationTarget([1], [2], axis=0, sign=-1)) == pytest.approx(
        RELATION_MARGIN + 0.75)


def test_recorded_maps_are_the_probabilities_the_layer_weighs_its_values_with():
    torch.manual_seed(0)
    layer = CrossAttention(8, context_dim=6, num_heads=1, zero_out=False)
    itself = CrossAttention(8, num_heads=2)
    x, context = torch.randn(2, 5, 8), torch.randn(2, 4, 6)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    with recording_attention_maps(torch.nn.ModuleList([layer, itself])) as maps:
        out = layer(x, context, mask)
        itself(x)  # self-attention is not recorded
    assert len(maps) == 1 and maps[0].shape == (2, 5, 4)
    assert torch.allclose(maps[0].sum(-1), torch.ones(2, 5))
    assert (maps[0][~mask[:, None, :].expand(2, 5, 4)] == 0).all()
    v = layer.to_v(context)
    assert torch.allclose(layer.to_out(maps[0] @ v), out, atol=1e-6)
    layer(x, context, mask)
    assert len(maps) == 1  # nothing recorded after the block


def test_recording_costs_a_compiled_network_no_graph_break_when_nothing_records():
    """torch.compile cannot trace the context variable the recording lives in; the layer
    reads it only while some recording is open."""
    import torch._dynamo as dynamo

    layer = CrossAttention(8, context_dim=6, num_heads=2)
    explained = dynamo.explain(layer)(torch.randn(2, 5, 8), torch.randn(2, 3, 6))
    assert explained.graph_break_count == 0 and explained.graph_count == 1


def test_maps_are_recorded_per_thread_so_that_concurrent_draws_keep_apart():
    """A server samples with one network on several threads: a draw recording its maps must
    not collect another thread's, nor stop that thread's recording when it ends."""
    import threading

    torch.manual_seed(0)
    layer = CrossAttention(8, context_dim=6, num_heads=1, zero_out=False)
    x, context = torch.randn(1, 5, 8), torch.randn(1, 4, 6)
    inside, outside_done = threading.Event(), threading.Event()

    def other_thread():
        inside.wait()
        layer(torch.randn(3, 5, 8), torch.randn(3, 2, 6))  # another request's batch
        outside_done.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    with recording_attention_maps(layer) as maps:
        inside.set()
        outside_done.wait()
        layer(x, context)
    worker.join()
    assert [m.shape for m in maps] == [(1, 5, 4)]


@SHIPPED
def test_a_sample_without_a_relation_is_drawn_as_without_guidance():
    from difflab.pipeline import Generator

    gen = Generator.from_checkpoint("shapes-text", device="cpu")
    prompts = ["a red circle and a blue square", "a blue square to the left of a red circle"]
    plain = gen.generate(2, prompt=prompts, steps=4, seed=3, relation_guidance=0,
                         binding_guidance=0, relation_regions=False)
    guided = gen.generate(2, prompt=prompts, steps=4, seed=3, relation_guidance=100,
                          binding_guidance=0, relation_regions=False)
    assert torch.equal(plain[0], guided[0])
    assert not torch.equal(plain[1], guided[1])


@SHIPPED
def test_the_shipped_model_guides_relations_by_default_and_says_so():
    from difflab.pipeline import Generator

    gen = Generator.from_checkpoint("shapes-text", device="cpu")
    settings = gen.sampling_settings(conditioned=True)
    assert settings.relation_guidance == 30 and settings.source["relation_guidance"] == "checkpoint"
    assert settings.binding_guidance == 15 and settings.source["binding_guidance"] == "checkpoint"
    assert "relation guidance 30, binding guidance 15" in settings.summary()
    assert gen.sampling_settings(conditioned=True, relation_guidance=0).relation_guidance is None
    assert gen.sampling_settings(conditioned=False).relation_guidance is None  # no prompt
    prompt = "a blue square to the left of a red circle"
    assert torch.equal(gen.generate(1, prompt=prompt, steps=3, seed=4),
                       gen.generate(1, prompt=prompt, steps=3, seed=4, relation_guidance=30,
                                    binding_guidance=15))


@SHIPPED
def test_relation_guidance_places_the_objects_of_the_shipped_model():
    """A learning test with a fixed bar, on prompts of pairs the training scenes relate,
    written here (not the development or test prompts): guidance 30 (the scale chosen in
    BENCHMARKS) puts the two objects in the named relation in at least 4 more of 32 images
    than the model alone (12 and 20 of 32 on an AMD EPYC, Zen 3)."""
    prompts = ["a purple circle above an orange square", "a blue square left of a yellow triangle"]

    def correct(scale):  # guidance alone: the model's relation regions off
        return correct_images(prompts, "position", relation_guidance=scale, binding_guidance=0,
                              relation_regions=False)

    assert correct(30) >= correct(0) + 4


def test_relation_guidance_is_refused_where_it_cannot_apply(capsys):
    from difflab.pipeline import Generator

    gen = Generator.from_checkpoint("fashion-mnist", device="cpu")
    with pytest.raises(ValueError, match="cross-attention to the pretrained encoder's word"):
        gen.generate(1, steps=2, relation_guidance=30)
    for bad in (-1.0, float("inf"), 5000, True):
        with pytest.raises(ValueError, match=r"must be a number from 0 to 1000 \(0: off\)"):
            gen.generate(1, steps=2, relation_guidance=bad)
    with pytest.raises(ValueError, match="binding guidance reads where each word is drawn"):
        gen.generate(1, steps=2, binding_guidance=15)
    assert main(["sample", "fashion-mnist", "--relation-guidance", "30", "-n", "1",
                 "--steps", "2"]) == 2
    assert "fashion-mnist cannot take --relation-guidance" in capsys.readouterr().err
    # refused before any line says what would run
    assert main(["sample", "fashion-text", "--prompt", "a shirt", "--binding-guidance", "15",
                 "-n", "1", "--steps", "2"]) == 2
    said = capsys.readouterr()
    assert "fashion-text cannot take --binding-guidance" in said.err and said.out == ""
    assert main(["sample", "shapes-text", "--relation-guidance", "30", "-n", "1",
                 "--steps", "2"]) == 2
    assert "--relation-guidance steers what a --prompt says" in capsys.readouterr().err
    # eval steers only --geneval's prompts: with FID samples the flag is refused, not ignored
    assert main(["eval", "shapes-text", "--relation-guidance", "30", "--samples", "10"]) == 2
    assert "it goes with --geneval and a checkpoint" in capsys.readouterr().err


@SHIPPED
def test_the_command_line_draws_with_relation_guidance(tmp_path, capsys):
    out = tmp_path / "rel.png"
    assert main(["sample", "shapes-text", "--prompt", "a red circle above a blue square",
                 "--relation-guidance", "30", "-n", "2", "--steps", "3", "--out", str(out),
                 "--quiet"]) == 0
    assert out.is_file()
    said = capsys.readouterr().out
    assert "relation guidance 30" in said and "'circle' above 'square'" in said


def test_a_config_asks_for_relation_guidance_only_with_word_piece_states():
    from pathlib import Path

    from difflab.config import ConfigError, load_config

    configs = Path(__file__).resolve().parents[1] / "configs"
    with pytest.raises(ConfigError, match="needs text.encoder = 'minilm' and text.tokens = 'all'"):
        load_config(configs / "fashion_mnist.toml", ["sample.relation_guidance=30"])
    with pytest.raises(ConfigError, match="relation_guidance"):
        load_config(configs / "shapes_text_latent.toml", ["sample.relation_guidance=-1"])
    cfg = load_config(configs / "shapes_text_latent.toml", ["sample.relation_guidance=30"])
    assert cfg.sample.relation_guidance == 30


def test_guidance_keeps_a_pixel_models_predictions_clipped(tmp_path):
    """On a pixel-space text model sampled with static clipping, the guided prediction is the
    one clipped: guidance added after the clip would draw x0 far outside [-1, 1]. A model
    trained one step (the wiring, not the learning), guided hard."""
    from tiny_run import one_step_shapes_text

    gen = one_step_shapes_text(tmp_path)
    largest = []
    gen.generate(1, prompt="a red circle to the left of a blue square", steps=4, seed=0,
                 relation_guidance=1000, clip="static",
                 callback=lambda step: largest.append(float(step["denoised"].abs().max())))
    assert len(largest) == 4 and max(largest) <= 1.0


@SHIPPED
def test_guidance_under_inference_mode_is_refused_not_silently_nil():
    from difflab.pipeline import Generator

    gen = Generator.from_checkpoint("shapes-text", device="cpu")
    prompt = "a red circle to the left of a blue square"
    with torch.inference_mode():
        with pytest.raises(ValueError, match=r"need gradients: sample outside torch.inference"):
            gen.generate(1, prompt=prompt, steps=4, seed=0)
        unguided = gen.generate(1, prompt=prompt, steps=4, seed=0, relation_guidance=0,
                                binding_guidance=0)  # without guidance it samples as ever
    assert unguided.shape == (1, 3, 32, 32)
