from pathlib import Path

import pytest

from generator.evaluation.text_probe import RELATION_EDITS, SINGLE_EDITS, main, prompt_pairs

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
