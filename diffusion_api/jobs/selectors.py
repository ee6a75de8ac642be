"""Every read of jobs. Ownership is enforced here, in the queryset."""

from datetime import timedelta
from uuid import UUID

from django.conf import settings
from django.db.models import Count, F, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from diffusion_api.jobs import store
from diffusion_api.jobs.models import ImageState, Job, JobImage, JobStatus, ModelStepCost, WorkerHeartbeat
from diffusion_api.jobs.queue import is_jobs_queue
from diffusion_api.queries import one_or_none


def job_list(*, user, status: str | None = None) -> QuerySet[Job]:
    """The user's own jobs, newest first, without image data."""
    jobs = Job.objects.filter(owner=user).order_by("-created_at")
    if status is not None:
        jobs = jobs.filter(status=status)
    return jobs


def job_visible_to(*, user) -> QuerySet[Job]:
    """Staff see every job; anyone else only their own."""
    return Job.objects.all() if user.is_staff else Job.objects.filter(owner=user)


def job_get(*, user, job_id: UUID) -> Job | None:
    return one_or_none(job_visible_to(user=user).filter(id=job_id))


def job_queue_position(*, job: Job) -> int | None:
    """1 for the next job a worker will take (in the fair order workers claim in); None when it is not waiting.

    The queue is at most JOB_MAX_QUEUE_DEPTH ids long, and the fair order is not a column: read it whole.
    """
    if job.status != JobStatus.QUEUED:
        return None
    order = list(jobs_queued_fairly().values_list("id", flat=True))
    return order.index(job.id) + 1 if job.id in order else None


def job_images(*, job: Job) -> QuerySet[JobImage]:
    return job.images.order_by("index")


def job_image(*, job: Job, index: int) -> JobImage | None:
    return one_or_none(job.images.filter(index=index))


class ImageExpired(Exception):
    """The image's bytes were deleted after its job's retention (JOB_RESULT_RETENTION_SECONDS); its record stays."""


def image_png(*, image: JobImage) -> bytes:
    """An image's PNG wherever it is: in the database while held, in the store after.

    ImageExpired once retention deleted it; store.StoreUnavailable when the store does not give it now.
    """
    if image.state == ImageState.EXPIRED:
        when = f" at {image.job.expires_at.isoformat()}" if image.job.expires_at else ""
        raise ImageExpired(f"image {image.index} of job {image.job_id} expired{when}; only its record stays")
    if image.state == ImageState.HELD:
        return bytes(image.png)
    return store.read(image.file.name)


def images_held_count() -> int:
    """Images whose bytes wait in the database for the store (health)."""
    return JobImage.objects.filter(state=ImageState.HELD).count()


def workers_alive() -> QuerySet[WorkerHeartbeat]:
    """Workers whose heartbeat (services.worker_heartbeat) is recent: within 3 WORKER_HEARTBEAT_SECONDS."""
    horizon = timezone.now() - timezone.timedelta(seconds=3 * settings.WORKER_HEARTBEAT_SECONDS)
    return WorkerHeartbeat.objects.filter(last_seen__gte=horizon)


def models_served() -> set[str] | None:
    """Models some live jobs worker serves (WORKER_MODELS); None when one serves every model."""
    served: set[str] = set()
    for queues, models in workers_alive().values_list("queues", "models"):
        if any(is_jobs_queue(queue) for queue in queues):
            if "*" in models:
                return None
            served.update(models)
    return served


def models_waiting_for_a_worker() -> list[str]:
    """Models with queued jobs that no live worker serves."""
    served = models_served()
    if served is None:
        return []
    queued = Job.objects.filter(status=JobStatus.QUEUED).values_list("model", flat=True).distinct()
    return sorted(set(queued) - served)


def waiting_reason(model: str, served: set[str] | None) -> str:
    if served is None or model in served:
        return ""
    return f"no live worker serves model {model!r}; the job waits in its queue until one does"


# A host that has not measured a model for this long no longer counts (it has probably left the fleet).
STEP_COST_HORIZON = timedelta(days=7)


def model_step_rate(*, model: str) -> float:
    """Seconds a denoising step of `model` takes per megapixel-row (jobs/cost.py), on its slowest recent host.

    Each host's measured totals are blended with the JOB_STEP_SECONDS_PER_MEGAPIXEL prior, worth one megapixel-row
    step: tiny batches (whose steps are mostly fixed overhead) barely move the estimate, large ones decide it.
    The slowest host counts because any worker may take the job.
    """
    prior = settings.JOB_STEP_SECONDS_PER_MEGAPIXEL
    measured = ModelStepCost.objects.filter(model=model, measured_at__gte=timezone.now() - STEP_COST_HORIZON)
    return max(((c.seconds + prior) / (c.megapixel_rows + 1.0) for c in measured), default=prior)


def jobs_queued_fairly() -> QuerySet[Job]:
    """Queued jobs in the order workers should take them: fair across owners, first queued first within one owner.

    Owners with the fewest running jobs come first, then the owner served longest ago (never served first): a
    round robin, so one user's backlog cannot starve the others, whatever order the broker delivers messages in.
    """
    owner_jobs = Job.objects.filter(owner=OuterRef("owner"), cached_from__isnull=True)
    running = (
        owner_jobs.filter(status=JobStatus.RUNNING).order_by().values("owner").annotate(n=Count("id")).values("n")
    )
    last_started = owner_jobs.filter(started_at__isnull=False).order_by("-started_at").values("started_at")[:1]
    return (
        Job.objects.filter(status=JobStatus.QUEUED)
        .annotate(owner_running=Coalesce(Subquery(running), 0), owner_last_started=Subquery(last_started))
        # Within an owner, the order of hand-over to the queue (as a broker would): a job taken back from a lost
        # worker goes behind the owner's waiting jobs, so a job that kills workers cannot hold up the rest.
        .order_by(
            "owner_running",
            F("owner_last_started").asc(nulls_first=True),
            F("published_at").asc(nulls_first=True),
            "created_at",
        )
    )
