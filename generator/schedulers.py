"""Schedulers by name: builds the diffusers scheduler for a name of `generator.scheduler_names`."""

from __future__ import annotations

from generator.scheduler_names import SCHEDULERS, check_scheduler_name, scheduler_name_for_config

__all__ = ["SCHEDULERS", "check_scheduler_name", "make_scheduler", "scheduler_name_for_config", "scheduler_settings"]


def make_scheduler(name: str, model_scheduler_config: dict):
    """A fresh scheduler `name`, keeping the model's training schedule (betas, prediction type)."""
    check_scheduler_name(name)
    import diffusers  # here, not at the top: importing the library stays cheap

    class_name, settings = SCHEDULERS[name]
    scheduler_class = getattr(diffusers, class_name)
    if model_scheduler_config.get("rescale_betas_zero_snr") and not _accepts(scheduler_class, "rescale_betas_zero_snr"):
        # from_config would drop the setting silently and sample with a schedule the model was not trained on.
        raise ValueError(f"scheduler {name!r} cannot follow this model's zero-terminal-SNR noise schedule")
    return scheduler_class.from_config(dict(model_scheduler_config), **settings)


def _accepts(scheduler_class, parameter: str) -> bool:
    import inspect

    return parameter in inspect.signature(scheduler_class.__init__).parameters


def scheduler_settings(scheduler) -> dict:
    """The settings that decide a scheduler's output, for manifests."""
    config = dict(scheduler.config)
    return {"class": type(scheduler).__name__, **{k: v for k, v in sorted(config.items()) if not k.startswith("_")}}
