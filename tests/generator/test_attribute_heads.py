"""The CLIP stage's caption-only attribute loss: labels from the captions' own words, heads that learn them."""

from __future__ import annotations

import numpy as np
import torch

from generator.data.shapes64 import CELLS, RELATIONS, make_scene
from generator.train.attribute_heads import ATTRIBUTES, IGNORE, LAYOUT_ATTRIBUTES, AttributeHeads, attribute_labels


def _column(name: str) -> int:
    return list(ATTRIBUTES).index(name)


def test_labels_are_what_the_caption_says_and_ignore_what_it_leaves_out():
    labels = attribute_labels([
        "a small red circle in the top left on a gray background",
        "a blue square",
        "a green circle above a yellow triangle on a black background",
    ])
    assert labels.shape == (3, len(ATTRIBUTES))
    full, bare, two = labels.tolist()
    assert full[_column("cell")] == CELLS.index("top left")
    assert full[_column("size")] == ATTRIBUTES["size"].index("small")
    assert full[_column("relation")] == IGNORE and full[_column("colour2")] == IGNORE
    # `a blue square` names colour and shape only.
    assert [k for k, v in zip(ATTRIBUTES, bare) if v != IGNORE] == ["colour", "shape"]
    assert two[_column("relation")] == RELATIONS.index("above")
    assert two[_column("colour")] == ATTRIBUTES["colour"].index("green")
    assert two[_column("shape2")] == ATTRIBUTES["shape2"].index("triangle")
    assert two[_column("cell")] == IGNORE  # a two-object caption names no cell


def test_heads_learn_training_captions_labels_and_report_accuracy():
    captions = [make_scene(0, i, "train").caption for i in range(256)]
    labels = attribute_labels(captions)
    # A stand-in for the pooled text output that carries the labels: one-hot codes plus noise.
    codes = torch.cat([torch.nn.functional.one_hot(labels[:, i].clamp(min=0), len(v)).float()
                       for i, v in enumerate(ATTRIBUTES.values())], dim=1)
    pooled = codes + 0.1 * torch.from_numpy(np.random.default_rng(0).standard_normal(codes.shape)).float()
    torch.manual_seed(0)
    heads = AttributeHeads(pooled.shape[1])
    optimizer = torch.optim.Adam(heads.parameters(), lr=0.05)
    first, _ = heads(pooled, labels)
    for _ in range(100):
        loss, accuracy = heads(pooled, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 * first.item()
    assert accuracy.shape == (len(ATTRIBUTES),) and bool((accuracy > 0.95).all())


def test_layout_labels_name_the_top_or_left_object_first_whatever_the_caption_order():
    attributes = ATTRIBUTES | LAYOUT_ATTRIBUTES
    captions = [
        "a green circle above a yellow triangle on a black background",  # the first object is on top
        "a green circle below a yellow triangle",  # the second is
        "a red square to the right of a blue circle",  # the second is on the left
        "a small red circle in the top left on a gray background",  # one object: no layout
    ]
    labels = attribute_labels(captions, attributes).tolist()
    names = list(attributes)

    def said(row, name):
        value = labels[row][names.index(name)]
        return None if value == IGNORE else attributes[name][value]

    assert [said(0, k) for k in LAYOUT_ATTRIBUTES] == ["green", "circle", "yellow", "triangle"]
    assert [said(1, k) for k in LAYOUT_ATTRIBUTES] == ["yellow", "triangle", "green", "circle"]
    assert [said(2, k) for k in LAYOUT_ATTRIBUTES] == ["blue", "circle", "red", "square"]
    assert [said(3, k) for k in LAYOUT_ATTRIBUTES] == [None] * 4
    # The caption attributes are unchanged by the extra columns.
    assert attribute_labels(captions)[:, :len(ATTRIBUTES)].tolist() == [row[:len(ATTRIBUTES)] for row in labels]
