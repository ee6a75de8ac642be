"""Scheduler names: the table from the names users type to diffusers class names and settings.

Torch-free (the web process validates requests with it); `generator.schedulers` builds the schedulers themselves.
"""

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


def scheduler_name_for_config(config: dict) -> str:
    """The table name of a model's own scheduler class (its plain settings), else `ddim`."""
    class_name = config.get("_class_name")
    for name, (table_class, settings) in SCHEDULERS.items():
        if table_class == class_name and all(config.get(k) == v for k, v in settings.items()):
            return name
    return "ddim"
