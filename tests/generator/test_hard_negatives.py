import numpy as np

from generator.data.shapes64 import HELD_OUT_PAIRS
from generator.evaluation.attributes import check, parse_prompt
from generator.train.data import to_uint8, training_batch


def test_hard_negative_pairs_differ_in_position_words_and_match_their_pixels():
    images, captions = training_batch(np.random.default_rng(0), 24, 0, hard_negatives=0.5)
    assert len(captions) == len(images) == 24
    pixels = to_uint8(images)
    for i in range(0, 12, 2):
        first, second = parse_prompt(captions[i]), parse_prompt(captions[i + 1])
        assert captions[i] != captions[i + 1]
        assert {(o.colour, o.shape) for o in first.objects} == {(o.colour, o.shape) for o in second.objects}
        assert first.background == second.background
    for image, text in zip(pixels, captions, strict=True):  # every caption is true of its image
        assert check(image, text).correct, text
        assert not any(pair in text for pair in (f"{c} {s}" for c, s in HELD_OUT_PAIRS))

