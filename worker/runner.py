"""Runs jobs with `generator`: holds the per-process model cache, batches, keeps leases, throttles progress."""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import socket
import threading
import time
from collections import OrderedDict
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import connection
from PIL import Image

from diffusion_api.jobs import catalog, cost, events, services, store
from diffusion_api.jobs.models import Job
from diffusion_api.jobs.services import Outcome
from diffusion_api.registry import services as registry
from generator import GenerationRequest, LoadedModel, generate, load_model, make_tiny_model, resolve_request
from generator.backends import Engine, choose_engine
from generator.fastpath import optimize, parse_buckets
from generator.lora import LoraSpec
from generator.model_info import ModelLoadError
from generator.pipeline import prompt_windows

logger = logging.getLogger(__name__)

_loaded: OrderedDict[str, LoadedModel] = OrderedDict()  # model name → model, least recently used first
_loading = threading.Lock()  # the start-up warm-up thread and the first task load under it


def served_models() -> list[str] | None:
    """The models this worker serves (WORKER_MODELS); None: every model."""
    return None if "*" in settings.WORKER_MODELS else list(settings.WORKER_MODELS)


def first_model() -> str:
    """The model a worker loads at start: the default, unless it serves only others."""
    served = served_models()
    return settings.DEFAULT_MODEL if served is None or settings.DEFAULT_MODEL in served else served[0]


def ensure_model_files(name: str) -> Path:
    """The model's folder; the tiny default is made here at first start if it does not exist yet."""
    path = catalog.model_path(name)
    if not (path / "model_index.json").is_file() and path == Path(settings.TINY_MODEL_DIR):
        logger.info("making the tiny default model in %s", path)
        make_tiny_model(path)
    return path


def get_model(name: str) -> LoadedModel:
    """The model, loaded on first use and kept while the loaded models' weights fit WORKER_MODEL_MEMORY_MB (the least
    recently used go first; with 0, one model at a time)."""
    with _loading:
        if name in _loaded:
            _loaded.move_to_end(name)
            return _loaded[name]
        if settings.WORKER_MODEL_MEMORY_MB <= 0:
            _loaded.clear()  # free the old model's memory before the new one's is taken
        model = _load(name)
        _loaded[name] = model
        budget = settings.WORKER_MODEL_MEMORY_MB * 2**20
        while len(_loaded) > 1 and sum(model_bytes(m) for m in _loaded.values()) > budget:
            evicted, _ = _loaded.popitem(last=False)
            logger.info("unloaded model %s (WORKER_MODEL_MEMORY_MB=%d)", evicted, settings.WORKER_MODEL_MEMORY_MB)
        return model


def loaded_models() -> list[str]:
    return list(_loaded)


def model_bytes(model: LoadedModel) -> int:
    """Bytes of the model's weights and buffers: what unloading it frees."""
    unet = getattr(model.unet, "eager", model.unet)
    modules = [model.text_encoder, model.text_encoder_2, unet, model.vae, model.tiny_vae]
    return sum(
        t.numel() * t.element_size()
        for module in modules
        if module is not None
        for t in [*module.parameters(), *module.buffers()]
    )


def _load(name: str) -> LoadedModel:
    started = time.monotonic()
    path = ensure_model_files(name)
    decoder = settings.GENERATOR_DECODER
    if decoder == "tiny" and not (path / "tiny_vae").is_dir():  # tiny where the model has one
        logger.info("model %s has no tiny_vae/; decoding with its VAE", name)
        decoder = "vae"
    chosen = engine()
    model = load_model(path, device=chosen.device, dtype=chosen.dtype, name=name, decoder=decoder)
    # Compile buckets are for the model a worker warms up at start.
    buckets = []
    if chosen.backend != "eager" and name == first_model():
        buckets = parse_buckets(settings.GENERATOR_COMPILE)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(settings.GENERATOR_COMPILE_CACHE_DIR))
    fewer = settings.GENERATOR_COMPILE_FEWER_EVALS
    compile_seconds = optimize(
        model, channels_last=settings.GENERATOR_CHANNELS_LAST, buckets=buckets, cond_only=fewer,
        deep_cache=fewer, backend="compile" if chosen.backend == "eager" else chosen.backend,
        cache_dir=settings.GENERATOR_COMPILE_CACHE_DIR,
    )
    model.cache["engine"] = chosen.as_dict()  # the manifest records it
    logger.info("loaded model %s in %.1fs (compiled: %s)", name, time.monotonic() - started,
                compile_seconds or "nothing")
    return model


@functools.cache
def engine() -> Engine:
    """This worker's device, dtype and backend (generator.backends), from its settings and its machine."""
    return choose_engine(settings.GENERATOR_DEVICE, settings.GENERATOR_DTYPE, settings.GENERATOR_BACKEND)


def check_engine() -> Engine:
    """The engine, logged with the reason it was chosen; raises EngineError where the machine cannot run it."""
    chosen = engine()
    logger.info("engine: %s %s %s (%s)", chosen.device, chosen.dtype, chosen.backend, chosen.reason)
    return chosen


def warm_up_in_background() -> threading.Thread:
    """Load (and compile) the default model on a thread when a worker process starts; the first job waits for it."""

    def load() -> None:
        try:
            get_model(first_model())
        except Exception:  # the first job loads again and fails with the reason
            logger.exception("warming up model %s failed", first_model())

    thread = threading.Thread(target=load, daemon=True, name="warm-up")
    thread.start()
    return thread


class LeaseKeeper:
    """Renews the leases of a batch's jobs from a background thread, so a long step cannot make them look abandoned."""

    def __init__(self, jobs: list[Job]):
        self.jobs = jobs
        self.lost: set = set()  # ids of jobs taken back from this worker (lease expired, or ended elsewhere)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True, name="lease")

    def is_lost(self, job: Job) -> bool:
        return job.id in self.lost

    def _renew(self) -> None:
        every = max(settings.JOB_LEASE_SECONDS / 3, 0.2)
        try:
            while not self._stop.wait(every):
                for job in self.jobs:
                    if job.id in self.lost:
                        continue
                    try:
                        if not services.job_renew_lease(job_id=job.id, worker=job.worker):
                            self.lost.add(job.id)
                    except Exception:  # the database may be restarting; the lease has slack for a few misses
                        logger.warning("lease renewal for job %s failed", job.id, exc_info=True)
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
    """The loop's callback: writes each job's progress at most every `interval` seconds; cancels jobs one by one."""

    def __init__(self, jobs: list[Job], lease: LeaseKeeper, interval: float):
        self.jobs = jobs
        self.lease = lease
        self.interval = interval
        self.last_write = -math.inf  # the first step always writes
        self.first_step: tuple[int, float] | None = None  # (step, monotonic time) when the first step ended
        self.last_step: tuple[int, float] | None = None
        self.last_event = self.last_preview = -math.inf

    def step_seconds(self) -> tuple[int, float] | None:
        """(steps, seconds) of pure denoising between the first and the last step: no model load, no prompt
        encoding, no decode. None when fewer than two steps ran."""
        if self.first_step is None or self.last_step is None or self.last_step[0] <= self.first_step[0]:
            return None
        return self.last_step[0] - self.first_step[0], self.last_step[1] - self.first_step[1]

    def eta_seconds(self, step: int, total: int) -> float | None:
        measured = self.step_seconds()
        if measured is None:
            return None
        steps, seconds = measured
        return round((total - step) * seconds / steps, 2)

    def __call__(self, state) -> None:
        mark = (state.step, time.monotonic())
        self.first_step = self.first_step or mark
        self.last_step = mark
        for i, job in enumerate(self.jobs):
            if self.lease.is_lost(job):
                state.cancel(i)
        self.publish(state)
        now = time.monotonic()
        if now - self.last_write < self.interval and state.step < state.total:
            return
        self.last_write = now
        for i, job in enumerate(self.jobs):
            if i in state.canceled:
                continue
            try:
                stop = services.job_report_progress(
                    job_id=job.id, worker=job.worker, step=state.step, total=state.total
                )
            except Exception:  # progress is best effort: a database hiccup must not kill a long generation
                logger.warning("progress write for job %s failed", job.id, exc_info=True)
                connection.close()
                continue
            if stop:
                state.cancel(i)


    def publish(self, state) -> None:
        """Live events for followers (jobs/events.py): progress at most every EVENT_INTERVAL seconds, and a preview
        at most every JOB_PREVIEW_INTERVAL seconds of the jobs someone follows with previews."""
        now = time.monotonic()
        if now - self.last_event >= EVENT_INTERVAL or state.step == state.total:
            self.last_event = now
            eta = self.eta_seconds(state.step, state.total)
            for i, job in enumerate(self.jobs):
                if i not in state.canceled:
                    events.publish_progress(
                        job.id, attempt=job.attempts, step=state.step, total=state.total, eta_seconds=eta
                    )
        if now - self.last_preview < settings.JOB_PREVIEW_INTERVAL or state.step == state.total:
            return
        self.last_preview = now
        wanted = events.previews_wanted([job.id for job in self.jobs])
        for i, job in enumerate(self.jobs):
            if job.id in wanted and i not in state.canceled:
                buffer = io.BytesIO()
                state.preview(i).save(buffer, format="PNG")
                events.publish_preview(
                    job.id, attempt=job.attempts, step=state.step, total=state.total, png=buffer.getvalue()
                )


EVENT_INTERVAL = 0.1  # seconds between a job's progress events (every step of a fast model would flood followers)

# The job's img2img, variation, hires and speed fields (generator.limits.FIELDS), passed on as GenerationRequest
# fields.
MODE_FIELDS = (
    "strength",
    "mask_blur",
    "inpaint_full_res",
    "inpaint_full_res_padding",
    "subseed",
    "subseed_strength",
    "hires_scale",
    "hires_upscaler",
    "hires_steps",
    "hires_strength",
    "guidance_cutoff",
    "deep_cache_interval",
)


def request_for(job: Job) -> GenerationRequest:
    return GenerationRequest(
        loras=lora_specs(job),
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        width=job.width,
        height=job.height,
        steps=job.steps,
        guidance_scale=job.guidance_scale,
        scheduler=job.scheduler,
        seed=job.seed,
        num_images=job.num_images,
        **mode_fields(job),
    )


def lora_specs(job: Job) -> tuple[LoraSpec, ...]:
    """The job's LoRAs, found in the registry as they were when it was submitted; ValueError if one was disabled,
    broke or changed since (its pixels would not be what the job's manifest says)."""
    specs = []
    for item in job.loras:
        try:
            lora = catalog.lora_record(item["name"])
        except catalog.ModelUnavailable as error:
            raise ValueError(str(error)) from error
        if lora.sha256 != item["sha256"]:
            raise ValueError(f"LoRA {item['name']!r} changed on disk since the job was submitted; submit it again")
        specs.append(LoraSpec(name=lora.name, path=lora.path, weight=item["weight"], sha256=lora.sha256))
    return tuple(specs)


def mode_fields(job: Job) -> dict:
    """The job's img2img, variation, hires and speed fields, and its inputs: PNGs the web process already fitted to
    width × height (init image RGB; mask L, white = repaint). A txt2img job's are the table's defaults."""
    fields = {name: getattr(job, name) for name in MODE_FIELDS}
    if job.init_image:
        fields["init_image"] = _stored_image(job.init_image, "RGB")
    if job.mask_image:
        fields["mask_image"] = _stored_image(job.mask_image, "L")
    return fields


def _stored_image(file, mode: str) -> Image.Image:
    with file.open("rb") as opened:
        image = Image.open(opened)
        image.load()
    return image.convert(mode)


def run_jobs(jobs: list[Job]) -> dict:
    """Run jobs that share model, size, steps and scheduler as one batch; returns job id → final status.

    Each job keeps its own seed, progress and cancel. The leases are kept from the claim until the outcomes are
    stored: loading a model in a fresh pool process, or storing through a database restart, can outlast a lease,
    and the sweeper must not take the jobs back meanwhile. Every outcome, an error's included, is recorded by
    `record` (services.job_record_outcome): this function raises nothing a job could have caused.
    """
    outcomes = {}
    with LeaseKeeper(jobs) as lease:
        try:
            _run(jobs, lease, outcomes)
        except SoftTimeLimitExceeded:
            _settle_unrecorded(jobs, lease, outcomes, f"time limit of {settings.CELERY_TASK_SOFT_TIME_LIMIT}s exceeded")
        except Exception as error:
            logger.exception("jobs %s failed", [str(job.id) for job in jobs])
            _settle_unrecorded(jobs, lease, outcomes, f"{type(error).__name__}: {error}")
    return outcomes


def _run(jobs: list[Job], lease: LeaseKeeper, outcomes: dict) -> None:
    name = jobs[0].model
    try:
        model = get_model(name)
    except (ModelLoadError, catalog.ModelUnavailable) as error:
        # Its files broke after the scan, or it was disabled meanwhile: its jobs fail with the reason, and the
        # registry offers it no more until a scan finds it whole. The worker goes on serving its other models.
        logger.error("model %s could not be loaded: %s", name, error)
        registry.model_mark_unusable(name=name, problem=str(error))
        for job in jobs:
            outcomes[job.id] = record(job, Outcome.FAILED, lease, error=f"model {name!r} could not be loaded: {error}")
        return
    runnable, requests = [], []
    for job in jobs:
        # A bad request the API could not see (e.g. too many prompt tokens, a lost input file), or an input the
        # object store did not give within its timeouts and tries, fails alone, with the reason.
        try:
            requests.append(resolve_request(model, request_for(job)))
            runnable.append(job)
        except (ValueError, *store.STORE_ERRORS) as error:
            outcomes[job.id] = record(job, Outcome.FAILED, lease, error=str(error))
    # Prompts of more windows (long or weighted) pad the others' conditioning: such jobs run as batches of their own.
    groups: dict[tuple, list[int]] = {}
    for i, request in enumerate(requests):
        groups.setdefault(prompt_windows(model, request), []).append(i)
    for rows in groups.values():
        _run_batch(model, [runnable[i] for i in rows], [requests[i] for i in rows], lease, outcomes)


def _run_batch(model, jobs: list[Job], requests: list, lease: LeaseKeeper, outcomes: dict) -> None:
    reporter = ProgressReporter(jobs, lease, settings.JOB_PROGRESS_INTERVAL)
    results = generate(model, requests, callback=reporter)
    if not any(result.canceled for result in results):  # a canceled row leaves the batch: its steps got cheaper
        _record_step_cost(jobs, reporter)
    for job, result in zip(jobs, results, strict=True):
        if result.canceled:
            outcomes[job.id] = record(job, Outcome.CANCELED, lease)
            continue
        images = [
            {"index": i.index, "seed": i.seed, "width": i.width, "height": i.height, "png": i.png}
            for i in result.images
        ]
        outcomes[job.id] = record(job, Outcome.SUCCEEDED, lease, images=images)


def _record_step_cost(jobs: list[Job], reporter: ProgressReporter) -> None:
    """Tell the API what a step of this model costs here (cost admission, services.model_step_cost_record)."""
    measured = reporter.step_seconds()
    if measured is None:
        return
    if any(job.guidance_cutoff < 1 or job.deep_cache_interval > 1 for job in jobs):
        # Their steps cost less than their rows say (jobs/cost.py): a rate measured on them would admit other jobs
        # that cannot finish in time.
        return
    steps, seconds = measured
    first = jobs[0]
    rows = cost.unet_rows(
        num_images=sum(job.num_images for job in jobs),
        guided=any(cost.is_guided(job.guidance_scale) for job in jobs),  # one guided job doubles the whole batch
    )
    try:
        services.model_step_cost_record(
            model=first.model,
            host=socket.gethostname(),
            seconds=seconds,
            megapixel_rows=steps * cost.megapixel_rows(width=first.width, height=first.height, rows=rows),
        )
    except Exception:  # a measurement is best effort: the jobs' images matter more
        logger.warning("recording the step cost of model %s failed", first.model, exc_info=True)
        connection.close()


def _settle_unrecorded(jobs: list[Job], lease: LeaseKeeper, outcomes: dict, error: str) -> None:
    """After the loop failed: one job fails with the error; several go back to the queue, each to run alone.

    A batch fails as a whole, so its error may be any one member's doing (one job's size ran the batch out of
    time, or out of memory): failing the others would let one user's job fail another's. Requeued jobs keep
    their attempts (services.job_requeue_alone).
    """
    unrecorded = [job for job in jobs if job.id not in outcomes]
    if len(unrecorded) == 1:
        outcomes[unrecorded[0].id] = record(unrecorded[0], Outcome.FAILED, lease, error=error)
        return
    logger.warning("a batch of %d jobs failed (%s); each runs again alone", len(unrecorded), error)
    for job in unrecorded:
        outcomes[job.id] = _requeue_alone(job, lease)


def _requeue_alone(job: Job, lease: LeaseKeeper) -> str:
    for delay in [0.5, 1, 2, 4, None]:  # through a database restart, as `record` does
        try:
            return "requeued" if services.job_requeue_alone(job_id=job.id, worker=job.worker) else "superseded"
        except Exception:
            if delay is None or lease.is_lost(job):
                logger.exception("could not requeue job %s; the sweeper will take it back", job.id)
                return "superseded"
            connection.close()
            time.sleep(delay)
    return "superseded"


def run_job(job: Job) -> str:
    return run_jobs([job])[job.id]


def record(job: Job, outcome: str, lease: LeaseKeeper, *, images: list[dict] = (), error: str = "") -> str:
    """The worker's one call that ends a job: the outcome, or "superseded" if the job is no longer this claim's.

    Rides out a database restart (the images took long to make) while the lease is still ours.
    """
    delays = [0.5, 1, 2, 4, 8, 15]
    for delay in [*delays, None]:
        try:
            stored = services.job_record_outcome(
                job_id=job.id, worker=job.worker, outcome=outcome, images=images, error=error
            )
            return str(outcome) if stored else "superseded"  # superseded: the lease was lost
        except Exception:
            if delay is None:
                raise
            if lease.is_lost(job):  # the sweeper gave the job to another attempt: nothing to store any more
                return "superseded"
            logger.warning("storing the outcome of job %s failed; retrying in %ss", job.id, delay, exc_info=True)
            connection.close()
            time.sleep(delay)
    return "superseded"
