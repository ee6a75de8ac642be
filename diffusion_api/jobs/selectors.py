"""Every read of jobs. Ownership is enforced here, in the queryset."""

from uuid import UUID

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from diffusion_api.jobs.models import Job, JobImage, JobStatus, WorkerHeartbeat


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
    return job_visible_to(user=user).filter(id=job_id).first()


def job_queue_position(*, job: Job) -> int | None:
    """1 for the next job a worker will take; None when the job is not waiting."""
    if job.status != JobStatus.QUEUED:
        return None
    return Job.objects.filter(status=JobStatus.QUEUED, created_at__lt=job.created_at).count() + 1


def job_images(*, job: Job) -> QuerySet[JobImage]:
    return job.images.order_by("index")


def job_image(*, job: Job, index: int) -> JobImage | None:
    return job.images.filter(index=index).first()


def workers_alive() -> QuerySet[WorkerHeartbeat]:
    """Workers whose heartbeat (services.worker_heartbeat) is recent: within 3 WORKER_HEARTBEAT_SECONDS."""
    horizon = timezone.now() - timezone.timedelta(seconds=3 * settings.WORKER_HEARTBEAT_SECONDS)
    return WorkerHeartbeat.objects.filter(last_seen__gte=horizon)
