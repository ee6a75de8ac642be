"""Runs one job with `generator`: holds the per-process model cache and throttles progress writes."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from django.conf import settings

from diffusion_api.jobs import services
from diffusion_api.jobs.models import Job
from generator import GenerationRequest, LoadedModel, generate_one, load_model, make_tiny_model

logger = logging.getLogger(__name__)

_loaded: dict[str, LoadedModel] = {}  # model name → model, loaded once per worker process


def ensure_model_files(name: str) -> Path:
    """The model's folder; the tiny default is made here at first start if it does not exist yet."""
    path = Path(settings.MODELS[name])
    if not (path / "model_index.json").is_file() and path == Path(settings.TINY_MODEL_DIR):
        logger.info("making the tiny default model in %s", path)
        make_tiny_model(path)
    return path


def get_model(name: str) -> LoadedModel:
    if name not in _loaded:
        _loaded.clear()  # one model in memory at a time: a GPU holds one SD model comfortably, not several
        started = time.monotonic()
        _loaded[name] = load_model(
            ensure_model_files(name), device=settings.GENERATOR_DEVICE, dtype=settings.GENERATOR_DTYPE, name=name
        )
        logger.info("loaded model %s in %.1fs", name, time.monotonic() - started)
    return _loaded[name]


class ProgressReporter:
    """The loop's callback: writes progress at most every `interval` seconds and stops the loop on cancel."""

    def __init__(self, job_id, interval: float):
        self.job_id = job_id
        self.interval = interval
        self.last_write = -math.inf  # the first step always writes
        self.canceled = False

    def __call__(self, state) -> None:
        now = time.monotonic()
        if now - self.last_write < self.interval and state.step < state.total:
            return
        self.last_write = now
        if services.job_report_progress(job_id=self.job_id, step=state.step, total=state.total):
            self.canceled = True
            state.cancel()


def run_job(job: Job) -> str:
    """Generate the job's images and record the outcome; returns the final status."""
    model = get_model(job.model)
    request = GenerationRequest(
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        width=job.width,
        height=job.height,
        steps=job.steps,
        guidance_scale=job.guidance_scale,
        scheduler=job.scheduler,
        seed=job.seed,
        num_images=job.num_images,
    )
    reporter = ProgressReporter(job.id, settings.JOB_PROGRESS_INTERVAL)
    result = generate_one(model, request, callback=reporter)
    if result.canceled:
        services.job_mark_canceled(job_id=job.id)
        return "canceled"
    images = [
        {"index": image.index, "seed": image.seed, "width": image.width, "height": image.height, "png": image.png}
        for image in result.images
    ]
    if not services.job_succeed(job_id=job.id, images=images):
        return "superseded"  # canceled or failed while the last step ran; nothing stored
    return "succeeded"
