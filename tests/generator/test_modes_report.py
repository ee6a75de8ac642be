"""`python -m generator.evaluation.modes`: the image-mode report on the built-in model, run tiny, and its helpers."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generator.data.shapes64 import TRAINING_PAIRS, parse_prompt, validation_prompt_sets
from generator.evaluation.modes import cell_mask, main, recoloured, restyled

BUILTIN = Path(__file__).resolve().parents[2] / "models" / "shapes64"
FILES = (
    "report.json",
    "report.md",
    "recolour.png",
    "inpaint.png",
    "variations.png",
    "variations_grid.png",
    "hires.png",
    "style.png",
    "style_init.png",
)


def test_recoloured_and_restyled_prompts_change_one_attribute_and_stay_in_the_grammar():
    for i, case in enumerate(validation_prompt_sets(seed=0, count=16)["single"]):
        before = parse_prompt(case.prompt)
        (old,) = before.objects
        recolour, restyle = parse_prompt(recoloured(case, i).prompt), parse_prompt(restyled(case, i).prompt)
        (new,) = recolour.objects
        assert new.colour != old.colour and (new.colour, new.shape) in TRAINING_PAIRS
        assert (new.shape, new.size, new.cell) == (old.shape, old.size, old.cell)
        assert recolour.background == before.background
        assert restyle.background != before.background and restyle.objects == before.objects


def _pixels(box: tuple[float, float, float, float]) -> tuple[slice, slice]:
    """Every pixel a box touches, even in part."""
    left, top, right, bottom = box
    return slice(math.floor(top), math.ceil(bottom)), slice(math.floor(left), math.ceil(right))


def test_the_inpainting_mask_covers_the_removed_object_and_spares_the_kept_one():
    for case in validation_prompt_sets(seed=0, count=32)["relation"]:
        for removed, keep in (case.scene.objects, case.scene.objects[::-1]):
            mask = np.asarray(cell_mask(removed.cell, keep)) > 0  # (64, 64)
            assert mask[_pixels(removed.box)].all(), case.prompt
            assert not mask[_pixels(keep.box)].any(), case.prompt


def _shares(report: dict) -> list[float]:
    modes = report["modes"]
    values = [modes["inpaint"]["prompt_right"], modes["inpaint"]["kept_object_right"]]
    for name in ("recolour", "style"):
        for acc in modes[name]["strengths"].values():
            values += [acc["overall"], *acc["per_attribute"].values()]
    values += [point["right"] for point in modes["variations"]["curve"].values()]
    values += [share for by_set in modes["hires"].values() for share in by_set.values()]
    return values


@pytest.mark.slow
def test_the_cli_writes_the_report_grids_and_a_growing_variation_curve(tmp_path, capsys):
    out = tmp_path / "modes"
    argv = ["--model", str(BUILTIN), "--out", str(out), "--prompts", "2", "--seeds", "1", "--steps", "2"]
    assert main([*argv, "--device", "cpu"]) == 0
    assert all((out / name).is_file() for name in FILES)

    report = json.loads((out / "report.json").read_text())
    assert len(report["model"]["hash"]) == 64
    assert report["settings"]["steps"] == 2 and report["settings"]["seeds"] == 1
    shares = _shares(report)
    assert len(shares) > 20 and all(0 <= share <= 1 for share in shares)
    assert 0 <= report["modes"]["inpaint"]["outside_mask_mean_abs_difference"] < 5  # the kept pixels are pasted back

    curve = {float(k): v["mean_abs_difference"] for k, v in report["modes"]["variations"]["curve"].items()}
    assert curve[0.0] == 0.0  # the parent image itself
    assert curve[1.0] > 0 and curve[1.0] >= curve[0.1]
    assert all(math.isfinite(d) and d >= 0 for d in curve.values())

    markdown = (out / "report.md").read_text()
    assert report["model"]["hash"] in markdown and report["command"] in markdown
    assert "python -m generator generate" in markdown and "style_init.png" in markdown
    with Image.open(out / "recolour.png") as grid:
        assert grid.width > 4 * 128 and grid.height > 2 * 128
