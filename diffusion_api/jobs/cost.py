"""A job's estimated run time and what would fit the time limit: arithmetic only (selectors give the measured rate).

The unit is the megapixel-row step: one denoising step over width × height pixels for one UNet row. A row is one
image, or two under classifier-free guidance (the UNet also runs the unconditional prompt), and a batch's rows
share each step, so a step costs about rate × megapixels × rows.

A job's `guidance_cutoff` (guidance on only that share of the steps) and `deep_cache_interval` (the UNet's deep
blocks only every k-th step) make its steps cheaper; the estimate does not count that, so it stays an upper bound.
"""

import math

from django.conf import settings


def unet_rows(*, num_images: int, guided: bool) -> int:
    return num_images * (2 if guided else 1)


def is_guided(guidance_scale: float) -> bool:
    return guidance_scale > 1  # as generator.pipeline decides classifier-free guidance


def megapixel_rows(*, width: int, height: int, rows: int) -> float:
    return width * height * rows / 1e6


def estimated_seconds(*, rate: float, width: int, height: int, steps: int, rows: int) -> float:
    return rate * megapixel_rows(width=width, height=height, rows=rows) * steps


def budget_seconds() -> float:
    """What one job (or one batch) may be estimated to take: a margin below the soft time limit, where it fails.

    The margin covers what the rate leaves out: encoding the prompt, decoding the images and storing them.
    """
    return settings.JOB_COST_HEADROOM * settings.CELERY_TASK_SOFT_TIME_LIMIT


def over_budget_message(
    *, rate: float, width: int, height: int, steps: int, num_images: int, guidance_scale: float, factor: int
) -> str | None:
    """None when the job fits; otherwise why not, and the nearest requests that would fit."""
    guided = is_guided(guidance_scale)
    rows = unet_rows(num_images=num_images, guided=guided)
    estimate = estimated_seconds(rate=rate, width=width, height=height, steps=steps, rows=rows)
    budget = budget_seconds()
    if estimate <= budget:
        return None
    doubled = ", doubled by guidance_scale > 1" if guided else ""
    return (
        f"this job would take about {estimate:.0f}s on the workers ({width}×{height}, {steps} steps, "
        f"{num_images} image(s){doubled}; {rate:.3g}s a step per megapixel and image), more than the "
        f"{budget:.0f}s a job may take ({settings.JOB_COST_HEADROOM:.0%} of JOB_SOFT_TIME_LIMIT="
        f"{settings.CELERY_TASK_SOFT_TIME_LIMIT}s); what would fit: "
        + _what_fits(rate, width, height, steps, num_images, guided, factor, budget)
    )


def hires_over_budget_message(
    *, rate: float, width: int, height: int, steps: int, num_images: int, guidance_scale: float,
    hires_scale: float, hires_steps: int, hires_strength: float,
) -> str | None:
    """For a two-pass job: None when both passes fit together; otherwise why not.

    The second pass denoises the upscaled image for `hires_strength` of `hires_steps` (0: `steps`) steps, at
    hires_scale² the first pass's pixels; the first pass alone is checked by `over_budget_message`.
    """
    rows = unet_rows(num_images=num_images, guided=is_guided(guidance_scale))
    first = estimated_seconds(rate=rate, width=width, height=height, steps=steps, rows=rows)
    second_steps = max(1, math.ceil((hires_steps or steps) * hires_strength))
    hires_width, hires_height = round(width * hires_scale), round(height * hires_scale)
    second = estimated_seconds(rate=rate, width=hires_width, height=hires_height, steps=second_steps, rows=rows)
    budget = budget_seconds()
    if first + second <= budget:
        return None
    return (
        f"with its hires pass ({hires_width}×{hires_height}, {second_steps} steps) this job would take about "
        f"{first + second:.0f}s on the workers ({first:.0f}s + {second:.0f}s), more than the {budget:.0f}s a job may "
        f"take ({settings.JOB_COST_HEADROOM:.0%} of JOB_SOFT_TIME_LIMIT={settings.CELERY_TASK_SOFT_TIME_LIMIT}s); "
        "lower hires_scale, hires_steps or hires_strength, or the first pass's steps"
    )


def _what_fits(rate, width, height, steps, num_images, guided, factor, budget) -> str:
    per_step = estimated_seconds(rate=rate, width=width, height=height, steps=1, rows=1) * (2 if guided else 1)
    options = []
    if (fit_steps := math.floor(budget / (per_step * num_images))) >= 1:
        options.append(f"at most {fit_steps} steps at this size and image count")
    if num_images > 1 and (fit_images := math.floor(budget / (per_step * steps))) >= 1:
        options.append(f"at most {fit_images} image(s) at this size and these steps")
    # The largest square with these steps and images, on the model's size grid.
    rows = unet_rows(num_images=num_images, guided=guided)
    side = math.floor(math.sqrt(budget / (rate * rows * steps) * 1e6) / factor) * factor
    if side >= factor:
        options.append(f"at most {side}×{side} pixels at these steps and image count")
    if guided and per_step / 2 * num_images * steps <= budget:
        options.append("this request with guidance_scale ≤ 1 (no classifier-free guidance halves the cost)")
    return "; ".join(options) if options else "nothing at this size (try fewer pixels)"
