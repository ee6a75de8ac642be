"""A training recipe: the steps of a chain (`configs/recipes/shapes64.yaml` is `make train`'s), run in order.

    python -m generator.train --recipe configs/recipes/shapes64.yaml [--dry-run]

A recipe file is YAML: `steps`, a list of `{config: FILE, overrides: [key=value, …]}` (overrides optional),
each the arguments of one `python -m generator.train --config FILE key=value …`. Each step runs in its own
process (Accelerate keeps one mixed precision per process, and a step frees its memory when it ends):

- a step whose `output_dir` already holds a finished `final` (its `config.yaml`, which the loop writes last)
  is skipped, and the runner says so;
- a step with checkpoints but no `final` (interrupted) goes on with `--resume latest`;
- any other step starts from scratch.

`--dry-run` prints each step's command (with its skip or resume) and runs nothing.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from generator.train.config import _load_yaml, config_yaml, load_config


@dataclass(frozen=True)
class RecipeStep:
    config: str  # a stage's YAML file, as given in the recipe (relative to the working directory)
    overrides: list[str] = field(default_factory=list)  # key=value words, as on the command line

    def arguments(self) -> list[str]:
        """The `python -m generator.train` arguments of this step (without `--resume`)."""
        return ["--config", self.config, *self.overrides]


def load_recipe(path: str | Path) -> list[RecipeStep]:
    """The recipe's steps, in order; ValueError if the file is not a recipe."""
    data = _load_yaml(Path(path).read_text())
    if not isinstance(data, dict) or set(data) != {"steps"} or not isinstance(data["steps"], list) or not data["steps"]:
        raise ValueError(f"{path}: a recipe is a mapping with one key, `steps`: a non-empty list")
    steps = []
    for number, entry in enumerate(data["steps"], 1):
        if not isinstance(entry, dict) or "config" not in entry or not set(entry) <= {"config", "overrides"}:
            raise ValueError(f"{path}: step {number} must be {{config: FILE, overrides: [key=value …]}}, got {entry!r}")
        overrides = entry.get("overrides") or []
        if not isinstance(overrides, list) or not all(isinstance(w, str) and "=" in w for w in overrides):
            raise ValueError(f"{path}: step {number}'s overrides must be a list of key=value words, got {overrides!r}")
        steps.append(RecipeStep(str(entry["config"]), list(overrides)))
    return steps


@dataclass(frozen=True)
class PlannedStep:
    step: RecipeStep
    output_dir: Path
    action: str  # "run", "resume" or "skip"
    note: str = ""

    def command(self) -> list[str]:
        resume = ["--resume", "latest"] if self.action == "resume" else []
        return ["python", "-m", "generator.train", *self.step.arguments(), *resume]


def plan(steps: list[RecipeStep]) -> list[PlannedStep]:
    """What each step will do, from what its output_dir holds now. Every config is loaded (and so checked) first."""
    from generator.train.loop import checkpoints  # torch is imported here, not when the recipe is only read

    planned = []
    for step in steps:
        config = load_config(step.config, step.overrides)
        output_dir = Path(config.output_dir)
        final_config = output_dir / "final" / "config.yaml"
        if final_config.is_file():
            note = f"{output_dir / 'final'} exists"
            if final_config.read_text() != config_yaml(config):
                note += " (trained with other settings than this step's: delete it to train again)"
            planned.append(PlannedStep(step, output_dir, "skip", note))
        elif checkpoints(output_dir):
            planned.append(PlannedStep(step, output_dir, "resume", f"from {checkpoints(output_dir)[-1]}"))
        else:
            planned.append(PlannedStep(step, output_dir, "run"))
    return planned


def run_recipe(
    path: str | Path,
    *,
    dry_run: bool = False,
    progress: bool = True,
    run: Callable[[list[str]], int] | None = None,
    log: Callable[[str], None] = print,
) -> int:
    """Runs the recipe's steps in order (see the module); returns 0, or the exit status of the step that failed.

    `run` runs one step's `python -m generator.train` arguments and returns its exit status (default: a
    subprocess of this Python)."""
    steps = load_recipe(path)
    planned = plan(steps)
    if run is None:
        def run(arguments: list[str]) -> int:
            return subprocess.call([sys.executable, "-m", "generator.train", *arguments])

    if dry_run:
        log(f"{path}: {len(planned)} steps (dry run: the commands below are not run)")
    for number, item in enumerate(planned, 1):
        command = shlex.join(item.command()) + ("" if progress else " --no-progress")
        head = f"[{number}/{len(planned)}]"
        if item.action == "skip":
            log(f"{head} skipped, {item.note}: {command}")
            continue
        log(f"{head} {'resuming ' + item.note + ': ' if item.action == 'resume' else ''}{command}")
        if dry_run:
            continue
        status = run(item.command()[3:] + ([] if progress else ["--no-progress"]))
        if status != 0:
            log(f"{head} failed with exit status {status}; run the recipe again to go on from its last checkpoint")
            return status
    return 0
