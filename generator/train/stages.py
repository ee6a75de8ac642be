"""The stage classes by name, imported lazily so `--help` and config errors need no torch import time."""

from __future__ import annotations


def make_stage(config, accelerator):
    if config.stage == "clip":
        from generator.train.clip import ClipStage as stage_class
    elif config.stage == "vae":
        from generator.train.vae import VaeStage as stage_class
    elif config.stage == "unet":
        from generator.train.unet import UnetStage as stage_class
    elif config.stage == "tiny_vae":
        from generator.train.tiny_vae import TinyVaeStage as stage_class
    else:
        raise ValueError(f"unknown stage {config.stage!r}")
    return stage_class(config, accelerator)
