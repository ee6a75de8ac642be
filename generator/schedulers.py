"""Schedulers by name: one table from the names users type to diffusers classes and settings."""

from __future__ import annotations

# name → (diffusers class name, settings laid over the model's own scheduler config)
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
    ),
    "dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}


def check_scheduler_name(name: str) -> None:
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; known schedulers: {', '.join(SCHEDULERS)}")


def make_scheduler(name: str, model_scheduler_config: dict):
    """A fresh scheduler `name`, keeping the model's training schedule (betas, prediction type)."""
    check_scheduler_name(name)
    import diffusers  # here, not at the top: the web service reads this table without torch

    class_name, settings = SCHEDULERS[name]
    scheduler_class = getattr(diffusers, class_name)
    if model_scheduler_config.get("rescale_betas_zero_snr") and not _accepts(scheduler_class, "rescale_betas_zero_snr"):
        # from_config would drop the setting silently and sample with a schedule the model was not trained on.
        raise ValueError(f"scheduler {name!r} cannot follow this model's zero-terminal-SNR noise schedule")
    return scheduler_class.from_config(dict(model_scheduler_config), **settings)


def _accepts(scheduler_class, parameter: str) -> bool:
    import inspect

    return parameter in inspect.signature(scheduler_class.__init__).parameters


def scheduler_name_for_config(config: dict) -> str:
    """The table name of a model's own scheduler class (its plain settings), else `ddim`."""
    class_name = config.get("_class_name")
    for name, (table_class, settings) in SCHEDULERS.items():
        if table_class == class_name and all(config.get(k) == v for k, v in settings.items()):
            return name
    return "ddim"


def scheduler_settings(scheduler) -> dict:
    """The settings that decide a scheduler's output, for manifests."""
    config = dict(scheduler.config)
    return {"class": type(scheduler).__name__, **{k: v for k, v in sorted(config.items()) if not k.startswith("_")}}
