"""The one table of a generation request's fields: type, bounds and where each default comes from.

Importable without torch: the web service (its serializer and `services.job_create`) reads this table, and so
does the library (`pipeline.resolve_request` reads MAX_SIDE, MAX_IMAGES_PER_REQUEST and MAX_SEED from here).

A deployment may lower a field's maximum with the setting named in its row (JOB_MAX_SIDE, JOB_MAX_STEPS, ...),
never raise it: `bounds()` takes the smaller of the library's maximum and the setting.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

from generator.images import RESIZE_MODES
from generator.scheduler_names import SCHEDULERS, check_scheduler_name
from generator.scheduler_names import scheduler_error as scheduler_error  # re-exported: a model's schedulers

MIN_SIDE = 8  # pixels; a side must also be a multiple of the model's VAE factor
MAX_SIDE = 4096  # pixels; the one maximum side (JOB_MAX_SIDE may lower it for a deployment)
MAX_IMAGES_PER_REQUEST = 16
MAX_SEED = 2**63 - 1  # the seeds of a request's images, seed .. seed + num_images - 1, must all be at most this
DRAWN_SEED_BELOW = 2**32  # a request without a seed gets one drawn from [0, 2**32)
MAX_MASK_BLUR = 64  # pixels
MAX_INPAINT_PADDING = 256  # pixels
MAX_HIRES_SCALE = 4.0
MAX_DEEP_CACHE_INTERVAL = 10  # steps; DeepCache's quality falls off quickly past about 5
# How the hires fix upscales the first pass: in latent space (bilinear, or nearest neighbour), or in pixel space
# with Lanczos (decode, upscale, encode again).
HIRES_UPSCALERS = ("latent", "latent-nearest", "lanczos")
MODES = ("txt2img", "img2img", "inpaint")

# Where a default comes from, besides a plain value.
REQUIRED = "required"  # no default: the request must give it
FROM_MODEL = "model"  # the model's own default (its ModelDefaults: generator.json, else its config files)
DRAWN = "drawn"  # drawn at random when the request is resolved


@dataclass(frozen=True)
class FieldSpec:
    """One request field. For strings, `min`/`max` bound the length in characters."""

    name: str
    type: type  # str, int, float or bool (an int is not a float's stand-in the other way round)
    default: Any  # a value (None: off), REQUIRED, FROM_MODEL or DRAWN
    min: int | float | None = None
    max: int | float | None = None  # the library's maximum; None: only the model (or the setting) bounds it
    min_exclusive: bool = False  # True: the value must be greater than `min` (strength is in (0, 1])
    setting: str | None = None  # the deployment setting that may lower `max`
    multiple_of_vae_factor: bool = False
    choices: tuple[str, ...] | None = None
    api: bool = True  # offered by the HTTP API
    help: str = ""


FIELDS: dict[str, FieldSpec] = {
    spec.name: spec
    for spec in (
        FieldSpec(
            "prompt",
            str,
            REQUIRED,
            min=1,
            setting="JOB_MAX_PROMPT_CHARS",
            help="A1111 weighting syntax: (word:1.3), (word), [word], \\( for a literal bracket; longer than the "
            "model's max_prompt_tokens it is encoded in windows of that many tokens, at most 8",
        ),
        FieldSpec("negative_prompt", str, "", setting="JOB_MAX_PROMPT_CHARS"),
        FieldSpec(
            "width", int, FROM_MODEL, min=MIN_SIDE, max=MAX_SIDE, setting="JOB_MAX_SIDE", multiple_of_vae_factor=True
        ),
        FieldSpec(
            "height", int, FROM_MODEL, min=MIN_SIDE, max=MAX_SIDE, setting="JOB_MAX_SIDE", multiple_of_vae_factor=True
        ),
        FieldSpec(
            "steps",
            int,
            FROM_MODEL,
            min=1,
            setting="JOB_MAX_STEPS",
            help="also at most the model's num_train_timesteps",
        ),
        FieldSpec("guidance_scale", float, FROM_MODEL, min=0.0, setting="JOB_MAX_GUIDANCE"),
        FieldSpec("num_images", int, 1, min=1, max=MAX_IMAGES_PER_REQUEST, setting="JOB_MAX_IMAGES"),
        FieldSpec("scheduler", str, FROM_MODEL, choices=tuple(SCHEDULERS)),
        FieldSpec("seed", int, DRAWN, min=0, max=MAX_SEED, help="image i of a request gets seed + i"),
        FieldSpec("guidance_rescale", float, 0.0, min=0.0, max=1.0, api=False),
        # img2img and inpainting (the init image and mask themselves are not in this table: they are images).
        FieldSpec(
            "strength",
            float,
            0.75,
            min=0.0,
            max=1.0,
            min_exclusive=True,
            help="img2img/inpaint denoising strength (A1111's Denoising strength): the share of the steps that run",
        ),
        FieldSpec("mask_blur", int, 4, min=0, max=MAX_MASK_BLUR, help="Gaussian blur radius of the mask, pixels"),
        FieldSpec("inpaint_full_res", bool, False, help="repaint only the masked area's box, at width × height"),
        FieldSpec("inpaint_full_res_padding", int, 32, min=0, max=MAX_INPAINT_PADDING, help="pixels around the box"),
        FieldSpec(
            "resize_mode",
            str,
            "just_resize",
            choices=RESIZE_MODES,
            help="how the input image (and mask) is brought to width × height",
        ),
        # Variations (A1111's variation seed): the start noise is slerp(noise(seed), noise(subseed), strength).
        FieldSpec("subseed", int, None, min=0, max=MAX_SEED, help="None: no variation; image i gets subseed + i"),
        FieldSpec("subseed_strength", float, 0.0, min=0.0, max=1.0),
        # The two-pass hires fix: width × height, then upscaled by hires_scale and denoised again.
        FieldSpec("hires_scale", float, 1.0, min=1.0, max=MAX_HIRES_SCALE, help="1: off"),
        FieldSpec("hires_upscaler", str, "latent", choices=HIRES_UPSCALERS),
        FieldSpec("hires_steps", int, 0, min=0, setting="JOB_MAX_STEPS", help="0: the same as steps"),
        FieldSpec("hires_strength", float, 0.5, min=0.0, max=1.0, min_exclusive=True),
        # Fewer UNet evaluations per image (generator/pipeline.py); both defaults run every evaluation.
        FieldSpec(
            "guidance_cutoff",
            float,
            1.0,
            min=0.0,
            max=1.0,
            min_exclusive=True,
            help="classifier-free guidance runs for this share of the steps, the rest run the prompt's half alone; "
            "1: guidance on every step",
        ),
        FieldSpec(
            "deep_cache_interval",
            int,
            1,
            min=1,
            max=MAX_DEEP_CACHE_INTERVAL,
            help="the UNet's deep blocks run every this many steps and are reused between (DeepCache); 1: off",
        ),
    )
}


def capped(library_max, configured):
    """A deployment's maximum: the setting where it is lower than the library's, never above it."""
    if configured is None:
        return library_max
    if library_max is None:
        return configured
    return min(library_max, configured)


def bounds(name: str, settings: Any = None) -> tuple:
    """(min, max) of a field for a deployment whose settings object holds the table's setting names."""
    spec = FIELDS[name]
    configured = getattr(settings, spec.setting, None) if settings is not None and spec.setting else None
    return spec.min, capped(spec.max, configured)


def max_side(settings: Any = None) -> int:
    return bounds("width", settings)[1]


def side_range(factor: int, settings: Any = None) -> tuple[int, int]:
    """The smallest and largest side a model with VAE factor `factor` accepts: multiples of the factor."""
    low = math.ceil(MIN_SIDE / factor) * factor
    return low, max_side(settings) // factor * factor


def check_scheduler(name: str) -> None:
    """The one scheduler-name check (the library's own, which make_scheduler uses): ValueError when unknown."""
    check_scheduler_name(name)


def resolve_defaults(model_defaults: Any, values: dict) -> dict:
    """Every field of the table with the request's `values` and, where a value is None or missing, its default.

    `model_defaults` has an attribute per FROM_MODEL field (generator.model_info.ModelDefaults).
    """
    resolved = {}
    for name, spec in FIELDS.items():
        value = values.get(name)
        if value is None:
            if spec.default == REQUIRED:
                raise ValueError(f"{name} is required")
            if spec.default == FROM_MODEL:
                value = getattr(model_defaults, name)
            elif spec.default == DRAWN:
                value = secrets.randbelow(DRAWN_SEED_BELOW)
            else:
                value = spec.default
        resolved[name] = value
    return resolved


def size_errors(
    width: int, height: int, *, factor: int, settings: Any = None, max_pixels: int | None = None, model: str = ""
) -> dict:
    """Field → message for a size the model (VAE factor) or the deployment (settings, pixel budget) refuses."""
    low, high = side_range(factor, settings)
    errors = {}
    for name, value in (("width", width), ("height", height)):
        if value % factor or not low <= value <= high:
            errors[name] = f"must be a multiple of {factor} from {low} to {high}" + (
                f" for model {model!r}" if model else ""
            )
    if max_pixels is not None and width * height > max_pixels:
        errors.setdefault("width", f"width × height must be at most {max_pixels} pixels")
    return errors


def seed_error(seed: int, num_images: int) -> str | None:
    """Image i gets seed + i: the last one must stay within MAX_SEED."""
    highest = MAX_SEED - num_images + 1
    return None if 0 <= seed <= highest else f"must be from 0 to {highest} for {num_images} images"


def hires_size(width: int, height: int, hires_scale: float, factor: int) -> tuple[int, int]:
    """The second pass's size: width × height scaled, each side down to a multiple of the VAE factor."""
    return int(width * hires_scale) // factor * factor, int(height * hires_scale) // factor * factor


def hires_error(
    width: int,
    height: int,
    hires_scale: float,
    *,
    factor: int,
    mode: str = "txt2img",
    settings: Any = None,
    max_pixels: int | None = None,
) -> str | None:
    """Why the hires fix cannot run on this request (its field is `hires_scale`); None when it can or is off.

    The second pass must fit the same side limit and pixel budget as any image: the budget is what a worker's
    memory was sized for, whichever pass asks for it.
    """
    if hires_scale == 1:
        return None
    if mode == "inpaint":
        return "the hires fix is for txt2img and img2img only (an inpainting job keeps hires_scale 1)"
    hires_width, hires_height = hires_size(width, height, hires_scale, factor)
    high = side_range(factor, settings)[1]
    if max(hires_width, hires_height) > high:
        return f"width and height × hires_scale must be at most {high} ({hires_width} × {hires_height} asked)"
    if max_pixels is not None and hires_width * hires_height > max_pixels:
        asked = f"{hires_width} × {hires_height} asked"
        return f"width × height × hires_scale² must be at most {max_pixels} pixels ({asked})"
    return None


def request_mode(has_init_image: bool, has_mask: bool) -> str:
    """txt2img, img2img or inpaint: a mask makes an inpainting job, an init image alone an img2img one."""
    if has_mask and not has_init_image:
        raise ValueError("a mask needs an init image")
    return "inpaint" if has_mask else "img2img" if has_init_image else "txt2img"
