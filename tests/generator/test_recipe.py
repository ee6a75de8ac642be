"""The training recipe runner (`python -m generator.train --recipe …`): order, skipping, resuming; nothing trains."""

from __future__ import annotations

from pathlib import Path

import pytest

from generator.train.config import config_yaml, load_config
from generator.train.recipe import load_recipe, run_recipe

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECIPE = CONFIGS / "recipes" / "shapes64.yaml"


def write_recipe(path: Path, steps: list[tuple[str, list[str]]]) -> Path:
    lines = ["steps:"]
    for config, overrides in steps:
        lines.append(f"  - config: {config}")
        if overrides:
            lines.append(f"    overrides: [{', '.join(overrides)}]")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_shipped_recipe_dry_run_prints_every_step_in_order_and_runs_none(capsys):
    from generator.train.__main__ import main

    assert main(["--recipe", str(RECIPE), "--dry-run"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    steps = load_recipe(RECIPE)
    assert len(printed) == len(steps) == 9
    for line, step in zip(printed, steps):
        assert " ".join(["generator.train", "--config", step.config, *step.overrides]) in line


def test_finished_steps_are_skipped_interrupted_ones_resume_and_new_ones_run(tmp_path):
    clip = str(CONFIGS / "clip.yaml")
    steps = [(clip, [f"output_dir={tmp_path / name}", "steps=7"]) for name in ("done", "stopped", "new", "other")]
    recipe = write_recipe(tmp_path / "recipe.yaml", steps)
    done = load_config(clip, steps[0][1])
    (tmp_path / "done" / "final").mkdir(parents=True)
    (tmp_path / "done" / "final" / "config.yaml").write_text(config_yaml(done))
    (tmp_path / "stopped" / "checkpoints" / "step-0000004").mkdir(parents=True)
    (tmp_path / "other" / "final").mkdir(parents=True)
    (tmp_path / "other" / "final" / "config.yaml").write_text(config_yaml(load_config(clip, ["steps=3"])))

    ran, said = [], []
    assert run_recipe(recipe, progress=False, run=lambda args: ran.append(args) or 0, log=said.append) == 0
    assert ran == [
        ["--config", clip, *steps[1][1], "--resume", "latest", "--no-progress"],
        ["--config", clip, *steps[2][1], "--no-progress"],
    ]
    assert said[0].startswith("[1/4] skipped") and "done/final exists" in said[0]
    assert said[1].startswith("[2/4] resuming from") and "step-0000004" in said[1]
    assert "other settings" in said[3] and "other settings" not in said[0]


def test_a_failing_step_stops_the_chain_with_its_status(tmp_path):
    clip = str(CONFIGS / "clip.yaml")
    recipe = write_recipe(tmp_path / "recipe.yaml", [(clip, [f"output_dir={tmp_path / n}"]) for n in "ab"])
    ran = []
    assert run_recipe(recipe, run=lambda args: ran.append(args) or 3, log=lambda _: None) == 3
    assert len(ran) == 1


MALFORMED = [
    "steps: []\n",
    "config: configs/clip.yaml\n",
    "steps:\n  - config: c.yaml\n    overrides: [x]\n",
    "steps:\n  - file: configs/clip.yaml\n",
]


@pytest.mark.parametrize("text", MALFORMED)
def test_malformed_recipes_are_errors(tmp_path, text):
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(ValueError):
        load_recipe(tmp_path / "r.yaml")


def test_recipe_and_single_stage_options_do_not_mix():
    from generator.train.__main__ import main

    for argv in (["--recipe", str(RECIPE), "seed=1"], ["--recipe", str(RECIPE), "--resume", "latest"],
                 ["--config", str(CONFIGS / "vae.yaml"), "--dry-run"], ["--config", "x", "--recipe", str(RECIPE)], []):
        with pytest.raises(SystemExit):
            main(argv)
