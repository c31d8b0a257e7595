"""Binding guidance (difflab.pipeline.binding_guidance): reading a prompt's objects and their
modifiers, the overlap energy in closed form, and what it does to the shipped `shapes-text`."""

import pytest
import torch
from shapes_scoring import SHIPPED, correct_images

from difflab.cli import main
from difflab.models.text import PretrainedTextEncoder
from difflab.pipeline.binding_guidance import (
    BINDING_APART,
    BindingTarget,
    binding_energy,
    binding_targets,
    describe_binding,
    find_phrases,
)


def words(prompt):
    """find_phrases as (modifiers, noun) words."""
    text = prompt.lower()
    return [([text[a:b] for a, b in p.modifiers], text[p.noun[0]:p.noun[1]])
            for p in find_phrases(prompt)]


@pytest.mark.parametrize("prompt, phrases", [
    ("a purple square and a yellow circle", [(["purple"], "square"), (["yellow"], "circle")]),
    # "there is" points; it is no noun before a predicate
    ("there is a blue circle below a purple triangle",
     [(["blue"], "circle"), (["purple"], "triangle")]),
    ("a small red circle to the left of two big blue squares on a black background",
     [(["small", "red"], "circle"), (["big", "blue"], "squares")]),
    ("a picture of a red circle, a green square and a blue triangle",
     [(["red"], "circle"), (["green"], "square"), (["blue"], "triangle")]),
    ("A red circle on the left and a blue square on the right",
     [(["red"], "circle"), (["blue"], "square")]),
    ("a circle and a square", [([], "circle"), ([], "square")]),
    ("a red circle next to a blue square", [(["red"], "circle"), (["blue"], "square")]),
    ("a yellow triangle with two green squares",
     [(["yellow"], "triangle"), (["green"], "squares")]),
    ("a fluffy white cat beneath a wooden table", [(["fluffy", "white"], "cat"),
                                                   (["wooden"], "table")]),
    # linking words are not objects, as relation guidance reads them
    ("the red circle is directly above the blue square",
     [(["red"], "circle"), (["blue"], "square")]),
    ("a Rëd Círcle and a blue squaré", [(["rëd"], "círcle"), (["blue"], "squaré")]),
    # a list of colours is one object; a list of objects starts each with a word such as "a"
    ("a red and blue circle beside a green square",
     [(["red", "blue"], "circle"), (["green"], "square")]),
    # what a noun is, said after it; "each other" is no object
    ("the circle is red and the square is blue", [(["red"], "circle"), (["blue"], "square")]),
    ("the small circles are purple, and the square looks yellow",
     [(["small", "purple"], "circles"), (["yellow"], "square")]),
    ("a red circle and a blue square next to each other",
     [(["red"], "circle"), (["blue"], "square")]),
])
def test_the_objects_and_their_modifiers_are_read_from_the_words(prompt, phrases):
    assert words(prompt) == phrases


@pytest.mark.parametrize("prompt", ["a red circle", "three small blue squares on the left", "",
                                    "a red and blue circle"])
def test_a_single_object_has_nothing_to_bind_apart(prompt):
    assert find_phrases(prompt) == []


def test_describe_says_what_was_read():
    assert describe_binding("a purple square and a yellow circle") == (
        "'purple' on 'square', 'yellow' on 'circle'")
    assert describe_binding("a red circle").startswith("fewer than two objects read")
    encoder = PretrainedTextEncoder()
    long = "a big red circle, " * 16 + "and a purple square left of a green triangle"
    assert describe_binding(long, encoder).endswith(
        "6 of them past the 64 word pieces the text encoder reads, left out")


def test_targets_point_at_the_word_pieces():
    encoder = PretrainedTextEncoder()
    prompt = "a purple square and a yellow circle"
    (target, none) = binding_targets(encoder, [prompt, "a red circle"], offset=1)
    # [CLS] a purple square and a yellow circle [SEP]: purple 2, square 3, yellow 6, circle 7
    assert target.phrases == ((([3],), [4]), (([7],), [8]))
    assert none is None


def _maps(places):
    """Maps over 4 positions for context tokens 0..len-1: token k drawn only at places[k]."""
    maps = torch.zeros(4, len(places))
    for k, place in enumerate(places):
        maps[place, k] = 1.0
    return maps


def test_the_energy_is_zero_when_bound_and_counts_each_swap():
    target = BindingTarget(((([0],), [1]), (([2],), [3])))  # (red, circle), (blue, square)
    # red and circle at place 0, blue and square at place 3: bound, apart
    assert binding_energy(target, _maps([0, 0, 3, 3])).item() == 0.0
    # the colours swapped: each modifier off its noun (1) and on the other (APART)
    assert binding_energy(target, _maps([3, 0, 0, 3])).item() == pytest.approx(
        2 * (1 + BINDING_APART))
    # both objects drawn in one place: the nouns overlap, and so does each modifier with the
    # other noun
    assert binding_energy(target, _maps([0, 0, 0, 0])).item() == pytest.approx(
        3 * BINDING_APART)


@SHIPPED
def test_binding_guidance_leaves_a_single_object_alone_and_moves_two():
    from difflab.pipeline import Generator

    gen = Generator.from_checkpoint("shapes-text", device="cpu")
    prompts = ["a green circle", "a green circle and a purple square"]
    plain = gen.generate(2, prompt=prompts, steps=4, seed=2, binding_guidance=0)
    guided = gen.generate(2, prompt=prompts, steps=4, seed=2, binding_guidance=30)
    assert torch.equal(plain[0], guided[0])
    assert not torch.equal(plain[1], guided[1])


@SHIPPED
def test_binding_guidance_binds_held_out_colour_shape_pairs_on_the_shipped_model():
    """A learning test with a fixed bar, on two-object prompts naming a held-out colour–shape
    pair, written here (not the development or test prompts): guidance 15 (chosen in
    BENCHMARKS) draws both objects in their own colours in at least 5 more of 32 images than
    the model alone (2 and 11 of 32 on an AMD EPYC, Zen 3; the shipped default since
    2026-12-07, chosen on fresh prompts in BENCHMARKS)."""
    prompts = ["an orange triangle and a yellow square", "a green circle and a blue triangle"]

    def correct(scale):
        return correct_images(prompts, "attribute_binding", binding_guidance=scale,
                              relation_guidance=0)

    assert correct(15) >= correct(0) + 5


def test_binding_guidance_needs_a_prompt_on_the_command_line(capsys):
    assert main(["sample", "shapes-text", "--binding-guidance", "15", "-n", "1",
                 "--steps", "2"]) == 2
    assert "--binding-guidance steers what a --prompt says" in capsys.readouterr().err
