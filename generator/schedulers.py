"""Schedulers by name: builds the diffusers scheduler for a name of `generator.scheduler_names`."""

from __future__ import annotations

import copy
import json
from functools import lru_cache

from generator.scheduler_names import SCHEDULERS, check_scheduler_name, scheduler_error, scheduler_name_for_config

__all__ = [
    "SCHEDULERS",
    "check_scheduler_name",
    "make_scheduler",
    "scheduler_error",
    "scheduler_name_for_config",
    "scheduler_settings",
]


def make_scheduler(name: str, model_scheduler_config: dict):
    """A fresh scheduler `name`, keeping the model's training schedule (betas, prediction type)."""
    # The torch-free check the API makes too, so a scheduler the model cannot use is refused before any step.
    if message := scheduler_error(name, None, model_scheduler_config):
        raise ValueError(message)
    # A copy of one built before: diffusers' from_config inspects signatures and recomputes the schedule, about
    # 2 ms a scheduler, and a job builds up to three (a sizeable part of a small job's time to its first step).
    return copy.deepcopy(_built(name, json.dumps(model_scheduler_config, sort_keys=True, default=str)))


@lru_cache(maxsize=64)
def _built(name: str, model_scheduler_config: str):
    import diffusers  # here, not at the top: importing the library stays cheap

    class_name, settings = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(json.loads(model_scheduler_config), **settings)


def scheduler_settings(scheduler) -> dict:
    """The settings that decide a scheduler's output, for manifests."""
    config = dict(scheduler.config)
    return {"class": type(scheduler).__name__, **{k: v for k, v in sorted(config.items()) if not k.startswith("_")}}
