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

# The diffusers classes whose constructor takes `rescale_betas_zero_snr` (a test checks this against diffusers): any
# other class would drop the setting and sample a zero-terminal-SNR model with a schedule it was not trained on.
ZERO_SNR_CLASSES = frozenset(
    {
        "DDIMScheduler",
        "DDPMScheduler",
        "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler",
        "DPMSolverMultistepScheduler",
        "UniPCMultistepScheduler",
        "LCMScheduler",
    }
)
LCM_ORIGINAL_STEPS = 50  # LCMScheduler's default `original_inference_steps`: it cannot run more steps than these


def check_scheduler_name(name: str) -> None:
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; known schedulers: {', '.join(SCHEDULERS)}")


def scheduler_error(name: str, steps: int | None, model_scheduler_config: dict) -> str | None:
    """Why scheduler `name` cannot run `steps` steps on a model with this scheduler config; None when it can.

    Decided from the model's JSON scheduler config alone, so the web process refuses the same requests the worker
    would (`generator.schedulers.make_scheduler` and `pipeline.resolve_request` refuse them before any step runs).
    `steps=None` checks only what does not depend on the step count.
    """
    if name not in SCHEDULERS:
        return f"unknown scheduler {name!r}; known schedulers: {', '.join(SCHEDULERS)}"
    class_name, settings = SCHEDULERS[name]
    config = {**model_scheduler_config, **settings}
    if config.get("rescale_betas_zero_snr"):
        if class_name not in ZERO_SNR_CLASSES:
            return f"scheduler {name!r} cannot follow this model's zero-terminal-SNR noise schedule"
        if config.get("use_karras_sigmas"):
            # The Karras ramp starts at the zero-SNR sigma (sqrt(2**24) = 4096), far above the next training noise
            # level, so most of its sigmas map to the same last timestep: diffusers' DPM-Solver then starts at the
            # duplicate's second index and runs one step past its sigmas (an IndexError after the whole loop).
            return (
                f"scheduler {name!r} cannot sample this model: Karras sigmas do not fit its zero-terminal-SNR noise "
                "schedule (most steps would repeat the last timestep); use 'dpmpp_2m'"
            )
    if class_name == "LCMScheduler" and steps is not None:
        original_steps = config.get("original_inference_steps") or LCM_ORIGINAL_STEPS
        if steps > original_steps:
            return f"scheduler {name!r} cannot run {steps} steps: it runs at most {original_steps} steps"
    return None


def scheduler_name_for_config(config: dict) -> str:
    """The table name of a model's own scheduler class (its plain settings), else `ddim`."""
    class_name = config.get("_class_name")
    for name, (table_class, settings) in SCHEDULERS.items():
        if table_class == class_name and all(config.get(k) == v for k, v in settings.items()):
            return name
    return "ddim"
