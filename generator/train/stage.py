"""What a training stage gives the loop (`Stage`), and the stage classes by name (`make_stage`).

The stage classes are imported lazily, so that `--help` and config errors need no torch import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch


class Stage(Protocol):
    """A stage (clip.py, vae.py, unet.py, tiny_vae.py, lora.py) as `generator.train.loop.train` uses it.

    `__init__(config, accelerator)` builds the models and optimizers, passes them through
    `accelerator.prepare` and registers `schedule` for checkpointing; the loop then calls:
    """

    schedule: torch.optim.lr_scheduler.LRScheduler
    """The learning-rate schedule; on resume the loop moves it to the resumed step."""

    def train_step(self, step: int, rng: np.random.Generator) -> dict:
        """One optimisation step on batches drawn from `rng`; returns logs with at least `loss`."""
        ...

    def sample(self, path: Path) -> dict:
        """Writes a sample sheet to `path`; returns metrics (name → float) for the log."""
        ...

    def save(self, out: Path) -> None:
        """Writes the final weights to `out` (the main process only)."""
        ...


def make_stage(config, accelerator) -> Stage:
    if config.stage == "clip":
        from generator.train.clip import ClipStage as stage_class
    elif config.stage == "vae":
        from generator.train.vae import VaeStage as stage_class
    elif config.stage == "unet":
        from generator.train.unet import UnetStage as stage_class
    elif config.stage == "tiny_vae":
        from generator.train.tiny_vae import TinyVaeStage as stage_class
    elif config.stage == "lora":
        from generator.train.lora import LoraStage as stage_class
    else:
        raise ValueError(f"unknown stage {config.stage!r}")
    return stage_class(config, accelerator)
