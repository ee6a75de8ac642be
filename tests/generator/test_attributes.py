from dataclasses import replace

import numpy as np
import pytest

from generator.data.shapes64 import (
    BACKGROUNDS,
    COLOURS,
    RELATIONS,
    SHAPES,
    Scene,
    Shape,
    full_caption,
    make_scene,
    render,
    validation_prompt_sets,
)
from generator.evaluation.attributes import ObjectSpec, PromptSpec, accuracy, check, evaluate, measure, parse_prompt


@pytest.fixture(scope="module")
def validation_images():
    scenes = [make_scene(7, i, "validation") for i in range(500)]
    return [(render(scene), scene) for scene in scenes]


def test_parse_full_partial_and_two_object_prompts():
    assert parse_prompt("a small red circle in the top left on a gray background") == PromptSpec(
        (ObjectSpec("red", "circle", "small", "top left"),), "gray"
    )
    assert parse_prompt("an orange circle") == PromptSpec((ObjectSpec("orange", "circle"),))
    assert parse_prompt("a large blue square on the left") == PromptSpec(
        (ObjectSpec("blue", "square", "large", "middle left"),)
    )
    assert parse_prompt("A green triangle  in the center.") == PromptSpec(
        (ObjectSpec("green", "triangle", None, "middle centre"),)
    )
    assert parse_prompt("a red circle to the right of an orange square on a black background") == PromptSpec(
        (ObjectSpec("red", "circle"), ObjectSpec("orange", "square")), "black", "to the right of"
    )
    for bad in ("a red dog", "a huge red circle", "a red circle somewhere", "red circle", ""):
        with pytest.raises(ValueError, match="not a shapes64 prompt"):
            parse_prompt(bad)


def test_accuracy_on_real_validation_images_is_at_least_99_percent(validation_images):
    report = evaluate((image, scene.caption) for image, scene in validation_images)
    print(f"\nattribute accuracy on {report.count} validation images: {report.format()}")
    assert report.overall >= 0.99
    assert set(report.per_attribute) == {"count", "background", "colour", "shape", "size", "position", "relation"}
    assert min(report.per_attribute.values()) >= 0.99


def test_accuracy_on_training_images_with_partial_captions():
    scenes = [make_scene(7, i, "train") for i in range(200)]
    report = evaluate((render(scene), scene.caption) for scene in scenes)
    assert report.overall >= 0.99


def test_measure_reads_what_was_drawn(validation_images):
    for image, scene in validation_images[:100]:
        measured = measure(image)
        assert measured.background == scene.background
        got = sorted((c.colour, c.shape, c.size, c.cell) for c in measured.components)
        assert got == sorted((o.colour, o.shape, o.size, o.cell) for o in scene.objects)


def _other(values, current):
    return next(v for v in values if v != current)


def test_mismatched_prompts_fail(validation_images):
    rejected = {"colour": 0, "shape": 0, "size": 0, "position": 0, "background": 0, "relation": 0}
    for image, scene in validation_images[:60]:
        first = scene.objects[0]
        wrong = {
            "colour": replace(first, colour=_other(COLOURS, first.colour)),
            "shape": replace(first, shape=_other(SHAPES, first.shape)),
            "size": replace(first, size=_other(("small", "large"), first.size)),
            "position": replace(first, cell=_other(("top left", "bottom right"), first.cell)),
        }
        for attribute, changed in wrong.items():
            if attribute in ("size", "position") and len(scene.objects) == 2:
                continue  # two-object captions do not state size or cell
            prompt = full_caption(replace(scene, objects=(changed, *scene.objects[1:])))
            verdict = check(image, prompt)
            assert not verdict.correct and not verdict.checks[attribute], (prompt, verdict.checks)
            rejected[attribute] += 1
        prompt = full_caption(replace(scene, background=_other(BACKGROUNDS, scene.background)))
        assert not check(image, prompt).checks["background"]
        rejected["background"] += 1
        if scene.relation is not None:
            for relation in RELATIONS:
                if relation != scene.relation:
                    verdict = check(image, full_caption(replace(scene, relation=relation)))
                    assert not verdict.correct and not verdict.checks["relation"], (relation, scene.caption)
            rejected["relation"] += 1
    assert all(count >= 10 for count in rejected.values()), rejected


def test_partial_prompt_checks_only_what_it_states():
    scene = Scene("black", (Shape("red", "circle", "large", 28, 48.0, 48.0, "bottom right"),), None, "")
    image = render(scene)
    verdict = check(image, "a red circle")
    assert verdict.correct and set(verdict.checks) == {"count", "colour", "shape"}
    assert check(image, "a large red circle in the bottom right on a black background").correct
    assert not check(image, "a red circle at the top").correct
    assert not check(image, "a red square").correct


def test_wrong_object_count_fails():
    scene = make_scene(0, 0, "validation")
    blank = np.full((64, 64, 3), BACKGROUNDS["white"], dtype=np.uint8)
    verdict = check(blank, "a red circle")
    assert not verdict.correct and not verdict.checks["count"] and not verdict.checks["colour"]
    two = Scene(
        "white",
        (
            Shape("red", "circle", "small", 13, 16.0, 32.0, "middle left"),
            Shape("blue", "square", "small", 13, 48.0, 32.0, "middle right"),
        ),
        "to the left of",
        "",
    )
    verdict = check(render(two), "a red circle on the left")
    assert not verdict.correct and verdict.checks == {"count": False, "colour": True, "shape": True, "position": True}
    assert check(render(two), full_caption(two)).correct
    assert scene.caption  # a real scene was made


def test_noise_does_not_change_the_verdict(validation_images):
    rng = np.random.default_rng(0)
    verdicts = []
    for image, scene in validation_images[:100]:
        noisy = np.asarray(image).astype(np.int16) + rng.integers(-12, 13, size=(64, 64, 3))  # (64, 64, 3)
        verdicts.append(check(np.clip(noisy, 0, 255).astype(np.uint8), scene.caption))
    assert accuracy(verdicts).overall >= 0.97


def test_validation_prompt_sets_pass_on_their_reference_images():
    sets = validation_prompt_sets(seed=1, count=16)
    for cases in sets.values():
        assert accuracy([check(render(case.scene), case.prompt) for case in cases]).overall == 1.0


def test_bad_image_shape_raises():
    with pytest.raises(ValueError, match="64 × 64 RGB"):
        measure(np.zeros((32, 32, 3), dtype=np.uint8))
