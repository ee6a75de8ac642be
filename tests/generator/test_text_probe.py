from pathlib import Path

import pytest

from generator.data import shapes64
from generator.evaluation.text_probe import (
    RELATION_EDITS,
    SINGLE_EDITS,
    held_out_probe,
    load_text_encoder,
    main,
    prompt_pairs,
    single_object_captions,
)

BUILTIN = Path(__file__).resolve().parents[2] / "models" / "shapes64"


@pytest.mark.parametrize("edit", SINGLE_EDITS + RELATION_EDITS)
def test_pairs_differ_in_the_edited_attribute_only(edit):
    pairs = prompt_pairs(edit, 30)
    assert len(pairs) == 30
    for first, second in pairs:
        assert first != second
        a, b = first.split(), second.split()
        assert len(a) == len(b), (first, second)  # no token moves
        differing = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        if edit == "order":  # the two noun phrases swap places
            assert b[-4:] == a[-4:] and set(a[:-4]) == set(b[:-4])
        elif edit == "cell":
            assert all(a[i] in {"top", "bottom", "left", "right", "center", "in", "at", "on"} for i in differing)
        elif edit == "relation":
            assert all(a[i] in {"left", "right", "above", "below"} for i in differing)
        else:
            assert len(differing) == 1


def test_pairs_are_deterministic():
    assert prompt_pairs("cell", 10, seed=3) == prompt_pairs("cell", 10, seed=3)


def test_cli_reports_every_edit_for_the_builtin_model(capsys):
    assert main(["--model", str(BUILTIN), "--count", "8"]) == 0
    header, _, row = capsys.readouterr().out.strip().splitlines()
    edits = [cell.strip() for cell in header.strip("|").split("|")][1:]
    values = [float(cell.strip().rstrip("%")) for cell in row.strip("|").split("|")[1:]]
    assert edits == list(SINGLE_EDITS + RELATION_EDITS)
    assert all(value > 0 for value in values)


def test_single_object_captions_cover_every_pair_and_follow_the_grammar():
    captions, pairs = single_object_captions()
    assert len(captions) == len(set(captions)) == len(pairs)
    assert set(pairs) == set(shapes64.ALL_PAIRS)
    for caption, (colour, shape) in zip(captions, pairs, strict=True):
        assert f" {colour} {shape} " in caption and caption.endswith(" background")


@pytest.mark.slow
def test_held_out_probe_reads_the_embeddings_right_and_reports_every_layer():
    tokenizer, encoder = load_text_encoder(BUILTIN)
    rows = held_out_probe(tokenizer, encoder)
    # The embeddings, each of the built-in encoder's layers, and the embeddings beside the last layer.
    layers = encoder.config.num_hidden_layers
    assert [row["layer"] for row in rows] == [str(i) for i in range(layers + 1)] + [f"0 and {layers}"]
    # Token embeddings are compositional by construction: probes fitted on the training pairs must read the held-out
    # pairs right there, or the probe (not the encoder) is broken.
    assert rows[0]["colour"] == rows[0]["shape"] == 1.0
    assert all(row["fit_colour"] > 0.99 and row["fit_shape"] > 0.99 for row in rows)
    per_pair = len(single_object_captions()[0]) // len(shapes64.ALL_PAIRS)
    for row in rows:
        assert set(row["read_as"]) == {f"{c} {s}" for c, s in shapes64.HELD_OUT_PAIRS}
        assert all(sum(reads.values()) == per_pair for reads in row["read_as"].values())


@pytest.mark.slow
def test_cli_held_out_prints_a_row_per_layer(capsys):
    assert main(["--model", str(BUILTIN), "--held-out"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].startswith("| layer | held-out colour | held-out shape |")
    layers = load_text_encoder(BUILTIN)[1].config.num_hidden_layers
    rows = [line.split("|")[1].strip() for line in lines[3:]]
    assert rows == [str(i) for i in range(layers + 1)] + [f"0 and {layers}"]
