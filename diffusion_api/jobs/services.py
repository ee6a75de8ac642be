"""Every write to jobs. Each state change is a guarded UPDATE: a job only moves forward."""

import hashlib
import logging
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from uuid import UUID, uuid4

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, models, transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from diffusion_api.jobs import catalog, cost, events, inputs, selectors, store
from diffusion_api.jobs.models import (
    INPUT_FIELDS,
    PARAMETER_FIELDS,
    TERMINAL_STATUSES,
    ImageState,
    Job,
    JobImage,
    JobMode,
    JobProtocol,
    JobStatus,
    ModelStepCost,
    ReviewStatus,
    Upload,
    WebhookDelivery,
    WorkerHeartbeat,
)
from diffusion_api.jobs.queue import publish_job, publish_webhook, queue_for_model, queued_messages
from generator.torch_free import LORA_WEIGHT_RANGE, PromptSyntaxError, check_prompt, images, limits, uses_syntax

# The request fields a job stores, in the table's order (generator.limits.FIELDS has library-only ones too).
JOB_REQUEST_FIELDS = [name for name, spec in limits.FIELDS.items() if spec.api]

logger = logging.getLogger(__name__)


class JobConflict(Exception):
    """The job's state does not allow the operation (e.g. cancel a finished job)."""


class IdempotencyMismatch(Exception):
    """An Idempotency-Key was used before with a different request body."""


class CapacityExceeded(Exception):
    """Too many active jobs for this user, or a full queue: try again after `retry_after` seconds."""

    def __init__(self, detail: str, *, retry_after: int, whole_service: bool):
        super().__init__(detail)
        self.retry_after = retry_after
        self.whole_service = whole_service  # True: the service is full (503); False: this user is (429)


class UploadNotFound(Exception):
    """An upload id that is not the caller's, or no longer exists (404)."""


@dataclass(frozen=True)
class ImageInput:
    """An input image as a request names it: the id of one of the owner's uploads, or the image's bytes."""

    upload: UUID | None = None
    data: bytes | None = None


def upload_create(*, owner, data: bytes) -> Upload:
    """Check an uploaded image (inputs.open_checked), store it as PNG under its content hash, owned by `owner`,
    usable until UPLOAD_RETENTION seconds from now. ValidationError({"file": …}) names the rule it broke."""
    try:
        image, source_format = inputs.open_checked(data)
    except inputs.ImageRefused as error:
        raise ValidationError({"file": str(error)}) from error
    name, digest = inputs.store_png(inputs.png_bytes(inputs.normalized(image)), folder="uploads")
    return Upload.objects.create(
        owner=owner,
        file=name,
        sha256=digest,
        width=image.width,
        height=image.height,
        format=source_format,
        expires_at=timezone.now() + timedelta(seconds=settings.UPLOAD_RETENTION),
    )


def upload_sweep() -> int:
    """Delete expired uploads, and their files where no live upload shares the content; the number deleted.

    Jobs keep their own fitted copies of their inputs, so deleting an upload never takes a job's input away. The
    file goes first: while the store refuses, the upload stays, and the next sweep tries again.
    """
    deleted = 0
    for upload in Upload.objects.filter(expires_at__lt=timezone.now()):
        if not Upload.objects.filter(file=upload.file.name).exclude(id=upload.id).exists():
            try:
                store.delete(upload.file.name)
            except store.StoreUnavailable as error:
                logger.warning("expired uploads wait for the store to delete them: %s", error)
                break
        upload.delete()
        deleted += 1
    return deleted


def image_store_sweep(*, limit: int = 100) -> int:
    """Move held images (the store refused them when their job ended) to the store; the number moved.

    Due images go oldest first. The first refusal ends the round: the store is down, and trying the rest would
    only wait on it again; each refused image waits longer before its next try (_note_store_refusal). Held bytes
    stay in the database until the store has them, however long that takes, so an outage never loses an image.
    """
    now = timezone.now()
    due = (
        JobImage.objects.filter(state=ImageState.HELD)
        .filter(models.Q(store_after__isnull=True) | models.Q(store_after__lte=now))
        .order_by(F("store_after").asc(nulls_first=True), "id")[:limit]
    )
    moved = 0
    for image in due:
        data = bytes(image.png)
        digest = image.sha256 or hashlib.sha256(data).hexdigest()
        held = JobImage.objects.filter(id=image.id, state=ImageState.HELD)
        try:
            name = store.save(store.image_name(job_id=image.job_id, index=image.index, sha256=digest), data)
        except store.StoreUnavailable as error:
            _note_store_refusal(image, error, now=now)
            held.update(
                store_attempts=image.store_attempts, store_error=image.store_error, store_after=image.store_after
            )
            logger.warning("images wait for the store (try %d of image %s): %s", image.store_attempts, image.id, error)
            break
        stored = dict(file=name, png=None, sha256=digest, size=len(data), store_error="", store_after=None)
        if held.update(state=ImageState.STORED, **stored):
            moved += 1
        elif not JobImage.objects.filter(id=image.id, state=ImageState.STORED, file=name).exists():
            # Retention expired it meanwhile, or another sweeper stored it under another name (the file system renames
            # a name two writers take at once): what was just written is nobody's. Under this very name (same job,
            # index and bytes) it is the other sweeper's file too, and must stay; a stored image can only expire.
            try:
                store.delete(name)
            except store.StoreUnavailable:
                logger.warning("could not delete %s, written for an image that left `held` meanwhile", name)
    if moved:
        logger.info("moved %d held images to the store", moved)
    return moved


def image_expiry_sweep(*, limit: int = 500) -> int:
    """Delete the bytes of images whose job ended and passed its `expires_at`; the number of images expired.

    The records stay, marked expired (the API answers 410 Gone for them). Only ended jobs: `expires_at` is set when
    a job ends, and the status is checked here as well, so the images of a job that has not ended are never
    touched. A delete the store refuses ends the round; the image is tried again at the next sweep.
    """
    due = (
        JobImage.objects.filter(job__status__in=TERMINAL_STATUSES, job__expires_at__lte=timezone.now())
        .exclude(state=ImageState.EXPIRED)
        .only("id", "state", "file")[:limit]
    )
    expired = 0
    for image in due:
        if image.state == ImageState.STORED:
            try:
                store.delete(image.file.name)
            except store.StoreUnavailable as error:
                logger.warning("expired images wait for the store to delete them: %s", error)
                break
        # Guarded by the state it was read in: a held image the store took meanwhile is deleted at the next sweep.
        if JobImage.objects.filter(id=image.id, state=image.state).update(state=ImageState.EXPIRED, file="", png=None):
            expired += 1
    if expired:
        logger.info("deleted the bytes of %d expired images", expired)
    return expired


@dataclass
class Submission:
    job: Job
    replayed: bool  # True: an earlier request with the same Idempotency-Key (or found by `earlier`) made this job


def job_submit(
    *,
    owner,
    idempotency_key: str | None = None,
    request_fingerprint: str = "",
    earlier: Callable[[], Job | None] | None = None,
    **params,
) -> Submission:
    """Create a job for an API client: idempotent per key, within the per-user and queue-depth limits.

    `earlier` finds the job an earlier try of the request made, for clients that retry without a key (OpenAI's);
    it is asked where the key would be. The request is checked and its images written to the store or read from it
    (job_plan) before the user's row is locked: a slow store must hold neither the lock nor a connection in a
    transaction. A replay is looked for before that too, so a retried request does not wait on the store again.
    """
    if (replay := _replay(owner, idempotency_key, request_fingerprint, earlier)) is not None:
        return Submission(job=replay, replayed=True)
    plan = job_plan(owner=owner, idempotency_key=idempotency_key, request_fingerprint=request_fingerprint, **params)
    job = None
    try:
        with transaction.atomic():
            # One user's submissions run one at a time, so the active-job count and the key check cannot race.
            get_user_model().objects.select_for_update().filter(pk=owner.pk).first()
            if (replay := _replay(owner, idempotency_key, request_fingerprint, earlier)) is not None:
                return Submission(job=replay, replayed=True)
            _check_capacity(owner)
            job = _job_write(plan)
    finally:
        if job is None:
            _plan_discard(plan)
    return Submission(job=job, replayed=False)


def _replay(owner, idempotency_key: str | None, request_fingerprint: str, earlier) -> Job | None:
    if not idempotency_key:
        return earlier() if earlier is not None else None
    existing = Job.objects.filter(owner=owner, idempotency_key=idempotency_key).first()
    if existing is not None and existing.request_fingerprint != request_fingerprint:
        raise IdempotencyMismatch("this Idempotency-Key was used with a different request body; use a new key")
    return existing


def _check_capacity(owner) -> None:
    # Both counts in one query: this is on the way from a POST to the worker's first step.
    counts = Job.objects.filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING]).aggregate(
        active=Count("id", filter=Q(owner=owner)), depth=Count("id", filter=Q(status=JobStatus.QUEUED))
    )
    active, depth = counts["active"], counts["depth"]
    if active >= settings.JOB_MAX_ACTIVE_PER_USER:
        raise CapacityExceeded(
            f"you have {active} unfinished jobs; at most {settings.JOB_MAX_ACTIVE_PER_USER} may be queued or "
            "running at once",
            retry_after=settings.JOB_RETRY_AFTER,
            whole_service=False,
        )
    if depth >= settings.JOB_MAX_QUEUE_DEPTH:
        raise CapacityExceeded(
            f"the queue is full ({depth} jobs waiting); try again later",
            retry_after=settings.JOB_RETRY_AFTER,
            whole_service=True,
        )


@dataclass
class JobPlan:
    """A checked request whose store work is done (inputs written, a cache hit's images read and copied): only its
    rows are left to write (_job_write), so job_submit's lock on the user waits on the database alone."""

    fields: dict  # the job's columns, but for the times set when it is written
    cached_from: Job | None = None  # a cache hit's source: the job is written succeeded, with `images`
    images: list[JobImage] = field(default_factory=list)  # rows for the job `fields["id"]`, their bytes stored


def job_create(**params) -> Job:
    """A job from job_plan's arguments, written at once: job_retry, the tests. API clients go through job_submit."""
    return _job_write(job_plan(**params))


def job_plan(
    *,
    owner,
    prompt: str,
    negative_prompt: str = "",
    width: int | None = None,
    height: int | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    scheduler: str | None = None,
    seed: int | None = None,
    num_images: int = 1,
    model: str | None = None,
    loras: list[dict] | None = None,
    retry_of: Job | None = None,
    idempotency_key: str | None = None,
    request_fingerprint: str = "",
    webhook_url: str = "",
    protocol: str = JobProtocol.NATIVE,
    cache: bool = True,
    init_image: ImageInput | None = None,
    mask: ImageInput | None = None,
    **mode_fields,
) -> JobPlan:
    """Resolve defaults and check the limits: the job to write (_job_write), which is queued once it commits.

    `init_image` (img2img) and `mask` (inpainting) are checked and fitted to width × height here, in the web
    process, and stored with the job; `mode_fields` are the table's img2img, variation, hires and speed fields
    (guidance_cutoff, deep_cache_interval).

    With `cache` and an explicit seed, a request identical to an earlier succeeded one of the same owner (same
    model files too) gets a new job that holds copies of that job's images at once, without running the model. A
    job that would run is admitted only if its estimated cost fits the time limit (jobs/cost.py).
    """
    if unknown := set(mode_fields) - set(JOB_REQUEST_FIELDS):
        raise TypeError(f"job_create got unknown fields {sorted(unknown)}")
    model = model or settings.DEFAULT_MODEL
    try:
        info = catalog.model_info(model, owner)
    except catalog.ModelUnavailable as error:
        raise ValidationError({"model": str(error)}) from error
    loras = _resolve_loras(loras or [], model=model, owner=owner)
    model_limits = catalog.model_limits(model)
    max_pixels = min(settings.JOB_MAX_PIXELS, model_limits.get("max_pixels", settings.JOB_MAX_PIXELS))
    seed_given = seed is not None
    # Defaults and limits: the one table in generator.limits (the serializer and the library read it too).
    request = limits.resolve_defaults(
        info.defaults,
        dict(
            prompt=prompt,
            negative_prompt=negative_prompt,
            width=width,
            height=height,
            steps=steps,
            guidance_scale=guidance_scale,
            scheduler=scheduler,
            seed=seed,
            num_images=num_images,
            **mode_fields,
        ),
    )
    width, height, steps = request["width"], request["height"], request["steps"]
    guidance_scale, scheduler, seed = request["guidance_scale"], request["scheduler"], request["seed"]

    errors = limits.size_errors(
        width, height, factor=info.vae_scale_factor, settings=settings, max_pixels=max_pixels, model=model
    )
    if steps > model_limits.get("max_steps", steps):
        errors["steps"] = f"model {model!r} takes at most {model_limits['max_steps']} steps, got {steps}"
    # Decided from the model's scheduler config, so a scheduler the worker would refuse is never queued.
    if message := limits.scheduler_error(scheduler, steps, info.scheduler_config):
        errors["scheduler"] = message
    for name in ("prompt", "negative_prompt"):  # A1111's weighting syntax; the worker counts the tokens
        try:
            check_prompt(request[name], name=name)
        except PromptSyntaxError as error:
            errors[name] = str(error)
        else:
            if info.sdxl and uses_syntax(request[name]):
                errors[name] = f"model {model!r} is SDXL, whose prompts take no weighting syntax here yet"
    if info.sdxl and loras:
        errors["loras"] = f"model {model!r} is SDXL, which takes no LoRAs here yet"
    if message := limits.seed_error(seed, num_images):
        errors["seed"] = message
    if request["subseed"] is not None and (message := limits.seed_error(request["subseed"], num_images)):
        errors["subseed"] = message
    mode = _mode_of(init_image, mask)
    if message := limits.hires_error(
        width,
        height,
        request["hires_scale"],
        factor=info.vae_scale_factor,
        mode=mode,
        settings=settings,
        max_pixels=max_pixels,
    ):
        errors["hires_scale"] = message
    if errors:
        raise ValidationError(errors)
    # Inputs after the size checks: fitting needs a valid width × height.
    stored_inputs = _job_inputs(owner, init_image, mask, width=width, height=height, resize_mode=request["resize_mode"])

    resolved = {
        "model": model,
        "loras": loras,
        **{name: request[name] for name in JOB_REQUEST_FIELDS},
        "model_version": catalog.model_version(model),
        # The cache keys on the inputs' pixels too: the same prompt and seed on another picture is another job.
        "init_image_sha256": stored_inputs["init_image_sha256"],
        "mask_sha256": stored_inputs["mask_sha256"],
    }
    source, pngs = None, []
    if cache and seed_given:
        # Only the owner's own jobs: a hit on someone else's would tell this user that they asked for it (an
        # instant success, and `cached_from` naming their job). Never one whose images retention deleted.
        source = (
            Job.objects.filter(owner=owner, status=JobStatus.SUCCEEDED, **resolved)
            .exclude(images__state=ImageState.EXPIRED)
            .order_by("-finished_at")
            .first()
        )
        if source is not None:
            pngs = _cached_pngs(source)
    client = dict(
        owner=owner,
        retry_of=retry_of,
        idempotency_key=idempotency_key,
        request_fingerprint=request_fingerprint,
        webhook_url=webhook_url,
        protocol=protocol,
    )
    if source is not None and pngs is not None:
        return _plan_from_cache(source, pngs, **client)

    _check_cost(
        model, width=width, height=height, steps=steps, num_images=num_images, guidance_scale=guidance_scale,
        factor=info.vae_scale_factor,
    )
    if request["hires_scale"] > 1:
        hires_message = cost.hires_over_budget_message(
            rate=selectors.model_step_rate(model=model), width=width, height=height, steps=steps,
            num_images=num_images, guidance_scale=guidance_scale, hires_scale=request["hires_scale"],
            hires_steps=request["hires_steps"], hires_strength=request["hires_strength"],
        )
        if hires_message:
            raise ValidationError({"hires_scale": [hires_message]})
    return JobPlan(fields={**resolved, **stored_inputs, "progress_total": steps, **client})


MAX_LORAS = 8


def _resolve_loras(loras: list[dict], *, model: str, owner) -> list[dict]:
    """A request's `[{"name", "weight"}]` as the job stores it: each LoRA known, enabled, the owner's to use, made for
    the model's kind and weighted within range, with its hash; sorted by name, so equal sets batch together."""
    if len(loras) > MAX_LORAS:
        raise ValidationError({"loras": f"at most {MAX_LORAS} LoRAs at once, got {len(loras)}"})
    names = [item["name"] for item in loras]
    if len(set(names)) < len(names):
        raise ValidationError({"loras": "each LoRA may appear once"})
    low, high = LORA_WEIGHT_RANGE
    resolved, errors = [], []
    for item in loras:
        name, weight = item["name"], float(item.get("weight", 1.0))
        try:
            record = catalog.lora_record(name, owner)
        except catalog.ModelUnavailable as error:
            errors.append(str(error))
            continue
        if not low <= weight <= high:
            errors.append(f"LoRA {name!r}: weight must be from {low} to {high}, got {weight}")
        elif message := catalog.lora_mismatch(record, model):
            errors.append(message)
        else:
            resolved.append({"name": name, "weight": weight, "sha256": record.sha256})
    if errors:
        raise ValidationError({"loras": errors})
    return sorted(resolved, key=lambda item: item["name"])


def _job_write(plan: JobPlan) -> Job:
    now = timezone.now()
    if plan.cached_from is not None:
        job = Job.objects.create(**plan.fields, started_at=now, **_ending(now))
        JobImage.objects.bulk_create(plan.images)
        _job_ended(job.id)
        logger.info("job served from the cache of %s", plan.cached_from.id, extra={"job_id": str(job.id)})
        return job
    reason = selectors.waiting_reason(plan.fields["model"], selectors.models_served())
    job = Job.objects.create(**plan.fields, published_at=now, waiting_reason=reason)
    transaction.on_commit(lambda: publish_job(job_id=job.id, model=job.model))
    logger.info(
        "job created by %s: %dx%d, %d steps, %s",
        job.owner,
        job.width,
        job.height,
        job.steps,
        job.scheduler,
        extra={"job_id": str(job.id)},
    )
    return job


def _plan_discard(plan: JobPlan) -> None:
    """Delete a cache hit's copies when no job will own them (refused under the lock): they are named by a job id
    that was never written, so nothing else can hold them. Inputs stay: named by content, they may be shared."""
    for row in plan.images:
        if row.state == ImageState.STORED:
            try:
                store.delete(row.file.name)
            except store.StoreUnavailable as error:
                logger.warning("could not delete %s, copied for a job that was not written: %s", row.file.name, error)


def _job_inputs(
    owner, init_image: ImageInput | None, mask: ImageInput | None, *, width: int, height: int, resize_mode: str
) -> dict:
    """The job's input fields: its mode and, for img2img/inpaint, the fitted PNGs in storage and their pixel hashes.

    The mask goes through the same geometry as its image. ValidationError names the rule a bad input broke;
    UploadNotFound for an upload id that is not the owner's or has been swept.
    """
    fields = {"mode": JobMode.TXT2IMG, "init_image": "", "init_image_sha256": "", "mask_image": "", "mask_sha256": ""}
    if init_image is None:
        return fields
    image = _open_input(owner, init_image, "init_image")
    fitted = inputs.fit_input(image, width, height, resize_mode)
    fields.update(mode=JobMode.IMG2IMG, init_image=_store_input(fitted), init_image_sha256=images.image_sha256(fitted))
    if mask is not None:
        try:
            mask_image = inputs.mask_from(_open_input(owner, mask, "mask"))
        except inputs.ImageRefused as error:
            raise ValidationError({"mask": str(error)}) from error
        if not inputs.mask_fits_image(mask_image, image):
            raise ValidationError(
                {
                    "mask": f"the mask is {mask_image.width} × {mask_image.height} and the init image "
                    f"{image.width} × {image.height}: a mask must have its image's size or aspect ratio"
                }
            )
        fitted_mask = inputs.fit_mask(mask_image, width, height, resize_mode)
        fields.update(
            mode=JobMode.INPAINT, mask_image=_store_input(fitted_mask), mask_sha256=images.image_sha256(fitted_mask)
        )
    return fields


def _mode_of(init_image: ImageInput | None, mask: ImageInput | None) -> str:
    """The job's mode as the library derives it (limits.request_mode): ValidationError for a mask alone."""
    try:
        return limits.request_mode(init_image is not None, mask is not None)
    except ValueError as error:
        raise ValidationError({"mask": f"{error} (init_image) to repaint"}) from error


def _open_input(owner, source: ImageInput, field_name: str):
    if source.upload is not None:
        upload = Upload.objects.filter(id=source.upload, owner=owner).first()
        if upload is None:
            raise UploadNotFound(f"{field_name}: no upload {source.upload} of yours")
        if upload.expires_at <= timezone.now():
            raise ValidationError(
                {field_name: f"upload {upload.id} expired at {upload.expires_at.isoformat()} (UPLOAD_RETENTION)"}
            )
        data = store.read(upload.file.name)  # store.StoreUnavailable: the request is refused (503), nothing queued
    else:
        data = source.data
    try:
        return inputs.open_checked(data)[0]
    except inputs.ImageRefused as error:
        raise ValidationError({field_name: str(error)}) from error


def _store_input(image) -> str:
    return inputs.store_png(inputs.png_bytes(image), folder="inputs")[0]


def _check_cost(model: str, **request) -> None:
    """Refuse a job that cannot finish within the time limit on the workers that serve its model (it would only
    burn a worker up to JOB_SOFT_TIME_LIMIT and fail), naming what would fit."""
    if message := cost.over_budget_message(rate=selectors.model_step_rate(model=model), **request):
        raise ValidationError({"non_field_errors": [message]})


def _cached_pngs(source: Job) -> list[dict] | None:
    """The source job's images with their bytes, to copy; None when the store cannot give them now (the job then
    runs the model instead of waiting on the store)."""
    images = list(source.images.order_by("index"))
    try:
        pngs = [selectors.image_png(image=image) for image in images]
    except (store.StoreUnavailable, selectors.ImageExpired) as error:
        logger.warning("the result cache cannot read job %s's images: %s", source.id, error)
        return None
    return [
        {"index": i.index, "seed": i.seed, "width": i.width, "height": i.height, "png": png}
        for i, png in zip(images, pngs, strict=True)
    ]


def _plan_from_cache(source: Job, images: list[dict], **client) -> JobPlan:
    """A new succeeded job with its own copy of the source's images, written to the store now under the new job's
    id: each job's bytes are its own, so retention deletes them with their job alone."""
    job_id = uuid4()
    copied = {name: getattr(source, name) for name in (*PARAMETER_FIELDS, *INPUT_FIELDS, "model_version")}
    fields = dict(
        id=job_id,
        status=JobStatus.SUCCEEDED,
        progress_step=source.steps,
        progress_total=source.steps,
        cached_from=source,
        **copied,
        **client,
    )
    return JobPlan(fields=fields, cached_from=source, images=_image_rows(job_id, images))


def job_claim(*, job_id: UUID, worker: str) -> Job | None:
    """Move a queued job to running; None if it is not queued (a repeated delivery).

    `job.worker` becomes a token unique to this claim: every later write by the worker is guarded by it,
    so a worker whose job was taken back (lease expired) cannot touch the job's next attempt.
    """
    now = timezone.now()
    token = f"{worker}#{secrets.token_hex(4)}"
    claimed = Job.objects.filter(id=job_id, status=JobStatus.QUEUED).update(
        status=JobStatus.RUNNING,
        started_at=now,
        attempts=F("attempts") + 1,
        progress_step=0,
        worker=token,
        lease_expires_at=now + timedelta(seconds=settings.JOB_LEASE_SECONDS),
        waiting_reason="",
    )
    if not claimed:
        return None
    events.announce(job_id)
    return Job.objects.get(id=job_id)


def job_claim_next(*, worker: str, models: list[str] | None = None) -> Job | None:
    """Claim the queued job that is fairest to run next (selectors.jobs_queued_fairly) among those of `models` (the
    worker's; None: every model); None if none is queued.

    A `run_job` message is a wake-up for one job's worth of work, not an order to run the job it names: the broker
    delivers in submission order, so taking the named job would let one user's backlog starve everyone else. Each
    queued job has a message in its model's queue, so every job is still claimed; a message whose job went first
    claims another.
    """
    queued = Job.objects.filter(status=JobStatus.QUEUED)
    fairly = selectors.jobs_queued_fairly()
    if models is not None:
        queued, fairly = queued.filter(model__in=models), fairly.filter(model__in=models)
    waiting = list(queued.values_list("id", flat=True)[:2])
    if len(waiting) < 2:  # none, or only one: fair by itself (the usual case on an idle service), no fair order needed
        return job_claim(job_id=waiting[0], worker=worker) if waiting else None
    for candidate in fairly.values_list("id", flat=True)[:20]:
        if job := job_claim(job_id=candidate, worker=worker):
            return job
    return None


def job_claim_batch(*, job: Job, worker: str, limit: int) -> list[Job]:
    """Claim up to `limit` more queued jobs that can share `job`'s denoising loop, taking owners in turn.

    Batch mates have the same model, size, steps and scheduler, and have never lost a worker or been in a failed
    batch: a job that may kill its worker (a poison job) must not take innocent jobs down with it. A mate joins
    only while the whole batch's estimated cost still fits the time limit, so the batch can finish in the time
    one job is given. Their own broker messages arrive later and claim other work (job_claim_next).
    """
    if not Job.objects.filter(status=JobStatus.QUEUED).exists():
        return []  # the usual case on an idle service: a simple query instead of the fair order's
    candidates = (
        selectors.jobs_queued_fairly()
        .filter(
            attempts=0,
            run_alone=False,
            model=job.model,
            width=job.width,
            height=job.height,
            steps=job.steps,
            scheduler=job.scheduler,
            **{name: getattr(job, name) for name in BATCH_FIELDS},
        )
        .exclude(id=job.id)
        .values_list("id", "owner_id", "num_images", "guidance_scale")[: 4 * limit]
    )
    candidates = list(candidates)
    if not candidates:
        return []  # no mate fits: no cost estimate needed
    rate = selectors.model_step_rate(model=job.model)
    images, guided = job.num_images, cost.is_guided(job.guidance_scale)
    mates = []
    for candidate, _owner, num_images, guidance_scale in _owners_in_turn(candidates):
        if len(mates) == limit:
            break
        with_mate = cost.unet_rows(num_images=images + num_images, guided=guided or cost.is_guided(guidance_scale))
        seconds = cost.estimated_seconds(rate=rate, width=job.width, height=job.height, steps=job.steps, rows=with_mate)
        if seconds > cost.budget_seconds():
            continue  # a smaller mate may still fit
        if mate := job_claim(job_id=candidate, worker=worker):
            mates.append(mate)
            images, guided = images + num_images, guided or cost.is_guided(guidance_scale)
    return mates


# Besides model, size, steps and scheduler, batch mates share what generator.pipeline.batch_key says the loop runs
# once for the whole batch: the mode, the strength, the hires pass, the step where guidance stops and the DeepCache
# interval. The engine takes each row's own init image, mask, mask blur, masked-area crop and variation seed, so jobs
# on different pictures do batch together.
BATCH_FIELDS = (
    "mode",
    "strength",
    "hires_scale",
    "hires_upscaler",
    "hires_steps",
    "hires_strength",
    "guidance_cutoff",
    "deep_cache_interval",
    "loras",
)


def _owners_in_turn(candidates: list[tuple]) -> list[tuple]:
    """Reorder (id, owner, …) rows so owners alternate, each owner's rows keeping their order."""
    by_owner: dict = {}
    for row in candidates:
        by_owner.setdefault(row[1], []).append(row)
    turns = []
    while by_owner:
        for owner in list(by_owner):
            turns.append(by_owner[owner].pop(0))
            if not by_owner[owner]:
                del by_owner[owner]
    return turns


def job_requeue_alone(*, job_id: UUID, worker: str) -> bool:
    """Put a job of a failed batch back in the queue, to run alone, without counting the attempt.

    A batch fails as a whole (an exception in the loop, the time limit), so the failure may belong to a mate.
    Alone, the job either succeeds or fails for its own reason. A job whose cancel was asked for ends `canceled`.
    False when the job is no longer this worker's claim.
    """
    running = Job.objects.filter(id=job_id, status=JobStatus.RUNNING, worker=worker)
    now = timezone.now()
    with transaction.atomic():
        if running.filter(cancel_requested=True).update(status=JobStatus.CANCELED, **_ending(now)):
            return _job_ended(job_id)
        requeued = running.update(
            status=JobStatus.QUEUED,
            run_alone=True,
            attempts=F("attempts") - 1,
            worker="",
            progress_step=0,
            lease_expires_at=None,
            published_at=now,
        )
        if requeued:
            model = Job.objects.filter(id=job_id).values_list("model", flat=True).first()
            transaction.on_commit(lambda: publish_job(job_id=job_id, model=model))
            events.announce(job_id)
    return bool(requeued)


def model_step_cost_record(*, model: str, host: str, seconds: float, megapixel_rows: float) -> None:
    """A worker measured `seconds` for denoising steps worth `megapixel_rows` (jobs/cost.py) of `model`.

    The host's totals decay by STEP_COST_DECAY at each record, so the rate follows the host's current speed.
    """
    now = timezone.now()
    decayed = dict(
        seconds=F("seconds") * STEP_COST_DECAY + seconds,
        megapixel_rows=F("megapixel_rows") * STEP_COST_DECAY + megapixel_rows,
        measured_at=now,
    )
    if ModelStepCost.objects.filter(model=model, host=host).update(**decayed):
        return
    try:
        with transaction.atomic():
            ModelStepCost.objects.create(
                model=model, host=host, seconds=seconds, megapixel_rows=megapixel_rows, measured_at=now
            )
    except IntegrityError:  # another process of this host created it first
        ModelStepCost.objects.filter(model=model, host=host).update(**decayed)


STEP_COST_DECAY = 0.9


def job_renew_lease(*, job_id: UUID, worker: str) -> bool:
    """Extend the running worker's lease; False if the job was taken back (lease expired) or ended."""
    return bool(
        Job.objects.filter(id=job_id, status=JobStatus.RUNNING, worker=worker).update(
            lease_expires_at=timezone.now() + timedelta(seconds=settings.JOB_LEASE_SECONDS)
        )
    )


def job_report_progress(*, job_id: UUID, worker: str, step: int, total: int) -> bool:
    """Store progress of a running job; return True when the job should stop (canceled, or no longer ours)."""
    # One statement in the usual case: a job that is still this claim's and not asked to cancel takes the step.
    ours = Job.objects.filter(id=job_id, status=JobStatus.RUNNING, worker=worker)
    if ours.filter(cancel_requested=False).update(progress_step=step, progress_total=total):
        return False
    ours.update(progress_step=step, progress_total=total)  # asked to cancel: it still shows where it stopped
    return True


class Outcome(models.TextChoices):
    """How a worker's attempt at a job ended."""

    SUCCEEDED = JobStatus.SUCCEEDED
    FAILED = JobStatus.FAILED
    CANCELED = JobStatus.CANCELED


def job_record_outcome(*, job_id: UUID, worker: str, outcome: str, images: list[dict] = (), error: str = "") -> bool:
    """The one place a worker's attempt ends the job; False (nothing written) if the job is no longer its claim.

    succeeded: the images go to the store (or are held in the database when it does not take them) and the job
    ends with them in one transaction. failed: the job ends with `error`. canceled: only when cancel was asked
    for (the worker stopped between steps).
    """
    if outcome not in Outcome.values:
        raise ValueError(f"unknown outcome {outcome!r}")
    running = Job.objects.filter(id=job_id, status=JobStatus.RUNNING, worker=worker)
    rows = []
    if outcome == Outcome.SUCCEEDED:
        if not running.exists():
            return False  # a superseded attempt writes nothing to the store either
        # Before the transaction: a slow store must not keep the job's row locked. Should the claim be lost while
        # the store writes, what was written stays: the next attempt's same bytes have the same names, and deleting
        # them could take its images away.
        rows = _image_rows(job_id, images)
    now = timezone.now()
    with transaction.atomic():
        if outcome == Outcome.SUCCEEDED:
            ended = running.update(status=JobStatus.SUCCEEDED, progress_step=F("progress_total"), **_ending(now))
            if ended:
                JobImage.objects.bulk_create(rows)
        elif outcome == Outcome.FAILED:
            ended = running.update(status=JobStatus.FAILED, error=error[:10_000], **_ending(now))
        else:
            ended = running.filter(cancel_requested=True).update(status=JobStatus.CANCELED, **_ending(now))
        if ended:
            _job_ended(job_id)
    return bool(ended)


def _ending(now) -> dict:
    """The fields every move to a final status sets: when it ended, and when its images expire (or null)."""
    retention = settings.JOB_RESULT_RETENTION_SECONDS
    return {"finished_at": now, "expires_at": now + timedelta(seconds=retention) if retention > 0 else None}


def _image_rows(job_id: UUID, images: list[dict]) -> list[JobImage]:
    """Unsaved JobImage rows for a job's new images, each PNG written to the store first.

    What the store does not take (down, slow, refusing) is held in the database instead, and the job ends all the
    same; the sweeper moves held bytes to the store later (image_store_sweep). No image is lost either way.
    """
    rows = []
    for image in images:
        data = bytes(image["png"])
        digest = hashlib.sha256(data).hexdigest()
        row = JobImage(
            job_id=job_id,
            index=image["index"],
            seed=image["seed"],
            width=image["width"],
            height=image["height"],
            sha256=digest,
            size=len(data),
        )
        try:
            row.file = store.save(store.image_name(job_id=job_id, index=row.index, sha256=digest), data)
            row.state = ImageState.STORED
        except store.StoreUnavailable as error:
            row.png, row.state = data, ImageState.HELD
            _note_store_refusal(row, error, now=timezone.now())
            logger.warning("image %d held in the database: %s", row.index, error, extra={"job_id": str(job_id)})
        rows.append(row)
    return rows


def _note_store_refusal(image: JobImage, error: Exception, *, now) -> None:
    """Count a refusal of a held image and set its next try: 15, 30, 60 … s later, at most STORAGE_RETRY_MAX_SECONDS."""
    image.store_attempts += 1
    image.store_error = str(error)[:2000]
    backoff = min(STORE_RETRY_FIRST_SECONDS * 2 ** (image.store_attempts - 1), settings.STORAGE_RETRY_MAX_SECONDS)
    image.store_after = now + timedelta(seconds=backoff)


STORE_RETRY_FIRST_SECONDS = 15


def job_succeed(*, job_id: UUID, worker: str, images: list[dict]) -> bool:
    return job_record_outcome(job_id=job_id, worker=worker, outcome=Outcome.SUCCEEDED, images=images)


def job_fail(*, job_id: UUID, worker: str, error: str) -> bool:
    return job_record_outcome(job_id=job_id, worker=worker, outcome=Outcome.FAILED, error=error)


def job_mark_canceled(*, job_id: UUID, worker: str) -> bool:
    return job_record_outcome(job_id=job_id, worker=worker, outcome=Outcome.CANCELED)


def worker_heartbeat(
    *, hostname: str, pid: int, queues: list[str], models: list[str], engine: dict | None = None
) -> None:
    """A live worker says so (every WORKER_HEARTBEAT_SECONDS); health and /metrics read it (selectors)."""
    WorkerHeartbeat.objects.update_or_create(
        hostname=hostname,
        defaults={
            "pid": pid, "last_seen": timezone.now(), "models": models, "queues": queues, "engine": engine or {},
        },
    )


def job_cancel(*, job: Job) -> Job:
    """A queued job ends at once; a running one is asked to stop at its next step."""
    now = timezone.now()
    if Job.objects.filter(id=job.id, status=JobStatus.QUEUED).update(
        status=JobStatus.CANCELED, cancel_requested=True, **_ending(now)
    ):
        _job_ended(job.id)
        job.refresh_from_db()
        return job
    if not Job.objects.filter(id=job.id, status=JobStatus.RUNNING).update(cancel_requested=True):
        job.refresh_from_db()
        raise JobConflict(f"job is {job.status}; only queued or running jobs can be canceled")
    job.refresh_from_db()
    return job


def _job_ended(job_id: UUID) -> bool:
    """After a job's last transition: tell its followers, and schedule its webhook if it has one, once the
    transaction commits."""
    events.announce(job_id)
    url = Job.objects.filter(id=job_id).values_list("webhook_url", flat=True).first()
    if url:
        delivery, created = WebhookDelivery.objects.get_or_create(job_id=job_id, defaults={"url": url})
        if created:
            transaction.on_commit(lambda: publish_webhook(delivery_id=delivery.id))
    return True


def job_retry(*, job: Job) -> Job:
    """A new job with the same parameters (seed included), owned by the same user."""
    return job_create(
        owner=job.owner,
        **{name: getattr(job, name) for name in PARAMETER_FIELDS},
        init_image=_stored_input(job.init_image),
        mask=_stored_input(job.mask_image),
        retry_of=job,
        cache=False,  # a retry runs the model again
    )


def _stored_input(file) -> ImageInput | None:
    """A job's stored input (already at its size: fitting it again changes nothing) as the input of a new job."""
    if not file:
        return None
    return ImageInput(data=store.read(file.name))


def job_review(*, job: Job, reviewer, verdict: str) -> Job:
    if verdict not in (ReviewStatus.APPROVED, ReviewStatus.FLAGGED, ReviewStatus.UNREVIEWED):
        raise ValueError(f"unknown review verdict {verdict!r}")
    Job.objects.filter(id=job.id).update(review_status=verdict, reviewed_by=reviewer, reviewed_at=timezone.now())
    job.refresh_from_db()
    return job


@dataclass
class SweepReport:
    requeued: list[UUID] = field(default_factory=list)  # running jobs whose worker lease expired
    failed: list[UUID] = field(default_factory=list)  # ... and had used up their attempts
    republished: list[UUID] = field(default_factory=list)  # queued jobs with no message in the broker
    canceled: list[UUID] = field(default_factory=list)  # running jobs whose worker vanished after a cancel request
    # Running jobs lost together with their batch: back in the queue to run alone, the loss not counted.
    requeued_alone: list[UUID] = field(default_factory=list)


def job_sweep() -> SweepReport:
    """Take back jobs whose worker vanished and re-publish queued jobs whose message was lost.

    The database is the source of truth: a running job whose lease expired goes back to `queued`
    (or to `failed` after JOB_MAX_ATTEMPTS; to `canceled` if its owner asked to cancel it, so it does
    not run again), and a queued job that has waited JOB_REPUBLISH_AFTER
    seconds since its last publish without a message in the broker is published again. A message
    published twice is harmless: the claim is a guarded update, so the second delivery does nothing.
    """
    report = SweepReport()
    now = timezone.now()
    lost = list(
        Job.objects.filter(status=JobStatus.RUNNING, lease_expires_at__lt=now).only("id", "attempts", "worker", "model")
    )
    # A worker process runs one batch at a time: expired jobs of one process were lost together, as a batch.
    per_process = Counter(_process_of(job.worker) for job in lost)
    for job in lost:
        expired = Job.objects.filter(id=job.id, status=JobStatus.RUNNING, lease_expires_at__lt=now)
        if expired.filter(cancel_requested=True).update(status=JobStatus.CANCELED, **_ending(now)):
            report.canceled.append(job.id)
            _job_ended(job.id)
        elif per_process[_process_of(job.worker)] > 1:
            # Any one of the batch may have killed the worker (a poison job): each runs again alone, and this
            # loss does not count against it. The one at fault then loses its worker alone, and that counts.
            if expired.update(
                status=JobStatus.QUEUED,
                run_alone=True,
                attempts=F("attempts") - 1,
                worker="",
                progress_step=0,
                lease_expires_at=None,
                published_at=now,
            ):
                report.requeued_alone.append(job.id)
                publish_job(job_id=job.id, model=job.model)
                events.announce(job.id)
        elif job.attempts >= settings.JOB_MAX_ATTEMPTS:
            error = (
                f"the worker running this job was lost {job.attempts} times (last: {job.worker}); "
                f"giving up after JOB_MAX_ATTEMPTS={settings.JOB_MAX_ATTEMPTS}"
            )
            if expired.update(status=JobStatus.FAILED, error=error, **_ending(now)):
                report.failed.append(job.id)
                _job_ended(job.id)
        elif expired.update(
            status=JobStatus.QUEUED, worker="", progress_step=0, lease_expires_at=None, published_at=now
        ):
            report.requeued.append(job.id)
            publish_job(job_id=job.id, model=job.model)
            events.announce(job.id)

    # Say on each queued job whether a live worker serves its model (selectors.waiting_reason).
    served = selectors.models_served()
    for model in Job.objects.filter(status=JobStatus.QUEUED).values_list("model", flat=True).distinct():
        reason = selectors.waiting_reason(model, served)
        Job.objects.filter(status=JobStatus.QUEUED, model=model).exclude(waiting_reason=reason).update(
            waiting_reason=reason
        )

    in_broker = queued_messages()  # None when the broker cannot be inspected: then re-publish by age alone
    stale = list(
        Job.objects.filter(
            status=JobStatus.QUEUED, published_at__lt=now - timedelta(seconds=settings.JOB_REPUBLISH_AFTER)
        ).values_list("id", "model")
    )
    if in_broker is not None:
        # A message wakes a worker of its model for whichever of that model's jobs is fairest then (job_claim_next),
        # not only the one it names: what must hold is one waiting message per queued job in each model's queue.
        # Re-publish only each model's shortfall.
        waiting = set().union(*in_broker.values())
        queued = Counter(Job.objects.filter(status=JobStatus.QUEUED).values_list("model", flat=True))
        missing = {model: n - len(in_broker.get(queue_for_model(model), ())) for model, n in queued.items()}
        chosen = []
        for job_id, model in stale:
            if str(job_id) not in waiting and missing.get(model, 0) > 0:
                chosen.append((job_id, model))
                missing[model] -= 1
        stale = chosen
    for job_id, model in stale:
        if Job.objects.filter(id=job_id, status=JobStatus.QUEUED).update(published_at=now):
            report.republished.append(job_id)
            publish_job(job_id=job_id, model=model)
    if report.requeued or report.failed or report.republished or report.canceled or report.requeued_alone:
        logger.warning(
            "sweep: requeued %s, failed %s, republished %s, canceled %s, requeued alone %s",
            report.requeued,
            report.failed,
            report.republished,
            report.canceled,
            report.requeued_alone,
        )
    return report


def _process_of(worker_token: str) -> str:
    """`host:pid` of a claim token (job_claim: `host:pid#random`)."""
    return worker_token.rsplit("#", 1)[0]
