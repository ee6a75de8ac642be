"""Runs one job with `generator`: holds the per-process model cache, keeps the lease, throttles progress."""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path

from django.conf import settings
from django.db import connection

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


class LeaseKeeper:
    """Renews the job's lease from a background thread, so a long step cannot make the job look abandoned."""

    def __init__(self, job: Job):
        self.job = job
        self.lost = threading.Event()  # set when the job was taken back from this worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True, name=f"lease-{job.id}")

    def _renew(self) -> None:
        every = max(settings.JOB_LEASE_SECONDS / 3, 0.2)
        try:
            while not self._stop.wait(every):
                try:
                    if not services.job_renew_lease(job_id=self.job.id, worker=self.job.worker):
                        self.lost.set()
                        return
                except Exception:  # the database may be restarting; the lease has slack for a few misses
                    logger.warning("lease renewal for job %s failed", self.job.id, exc_info=True)
                    connection.close()
        finally:
            connection.close()

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class ProgressReporter:
    """The loop's callback: writes progress at most every `interval` seconds; stops the loop on cancel."""

    def __init__(self, job: Job, lease: LeaseKeeper, interval: float):
        self.job = job
        self.lease = lease
        self.interval = interval
        self.last_write = -math.inf  # the first step always writes

    def __call__(self, state) -> None:
        if self.lease.lost.is_set():
            state.cancel()
            return
        now = time.monotonic()
        if now - self.last_write < self.interval and state.step < state.total:
            return
        self.last_write = now
        try:
            stop = services.job_report_progress(
                job_id=self.job.id, worker=self.job.worker, step=state.step, total=state.total
            )
        except Exception:  # progress is best effort: a database hiccup must not kill a long generation
            logger.warning("progress write for job %s failed", self.job.id, exc_info=True)
            connection.close()
            return
        if stop:
            state.cancel()


def run_job(job: Job) -> str:
    """Generate the job's images and record the outcome; returns the final status.

    The lease is kept from the claim until the outcome is stored: loading a model in a fresh pool process, or
    storing through a database restart, can outlast a lease, and the sweeper must not take the job back meanwhile.
    """
    with LeaseKeeper(job) as lease:
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
        if settings.FAULT_KILL_WORKER_ON_PROMPT and job.prompt == settings.FAULT_KILL_WORKER_ON_PROMPT:
            _kill_this_process()  # fault injection for the poison-job test; off unless the setting is set
        result = generate_one(model, request, callback=ProgressReporter(job, lease, settings.JOB_PROGRESS_INTERVAL))
        if result.canceled:
            if services.job_mark_canceled(job_id=job.id, worker=job.worker):
                return "canceled"
            return "superseded"  # the lease was lost: the job belongs to another attempt now
        images = [
            {"index": image.index, "seed": image.seed, "width": image.width, "height": image.height, "png": image.png}
            for image in result.images
        ]
        return "succeeded" if _store_with_retries(job, images, lease) else "superseded"


def _store_with_retries(job: Job, images: list[dict], lease: LeaseKeeper) -> bool:
    """Store the result, riding out a database restart (the images took long to make)."""
    delays = [0.5, 1, 2, 4, 8, 15]
    for delay in [*delays, None]:
        try:
            return services.job_succeed(job_id=job.id, worker=job.worker, images=images)
        except Exception:
            if delay is None:
                raise
            if lease.lost.is_set():  # the sweeper gave the job to another attempt: nothing to store any more
                return False
            logger.warning("storing job %s failed; retrying in %ss", job.id, delay, exc_info=True)
            connection.close()
            time.sleep(delay)
    return False


def _kill_this_process() -> None:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
