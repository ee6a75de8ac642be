"""The one place that publishes to the broker."""

import logging
from uuid import UUID

from diffusion_api.celery import RUN_JOB_TASK, app

logger = logging.getLogger(__name__)


def publish_job(*, job_id: UUID) -> bool:
    """Queue a job for a worker. A failed publish leaves the job `queued` in the database, not lost."""
    try:
        app.send_task(RUN_JOB_TASK, args=[str(job_id)])
    except Exception:  # the broker may be down; the job row is the source of truth
        logger.exception("could not publish job %s", job_id)
        return False
    return True
