"""The one place that publishes to the broker."""

import base64
import json
import logging
from uuid import UUID

from django.conf import settings

from diffusion_api.celery import DELIVER_WEBHOOK_TASK, RUN_JOB_TASK, WEBHOOK_QUEUE, app

logger = logging.getLogger(__name__)


def queue_for_model(model: str) -> str:
    """Each model has its own queue, so its jobs wake only the workers that serve it (worker/tasks.py)."""
    return f"{settings.CELERY_TASK_DEFAULT_QUEUE}.{model}"


def is_jobs_queue(name: str) -> bool:
    """A model's queue, or the plain jobs queue that workers serving every model also consume."""
    default = settings.CELERY_TASK_DEFAULT_QUEUE
    return name == default or name.startswith(f"{default}.")


def publish_job(*, job_id: UUID, model: str) -> bool:
    """Queue a job for a worker that serves its model. A failed publish leaves the job `queued` in the database, not
    lost."""
    try:
        app.send_task(RUN_JOB_TASK, args=[str(job_id)], queue=queue_for_model(model))
    except Exception:  # the broker may be down; the job row is the source of truth
        logger.exception("could not publish job %s", job_id)
        return False
    return True


def publish_webhook(*, delivery_id: int, countdown: float | None = None) -> bool:
    try:
        app.send_task(DELIVER_WEBHOOK_TASK, args=[delivery_id], queue=WEBHOOK_QUEUE, countdown=countdown)
    except Exception:
        logger.exception("could not publish webhook delivery %s", delivery_id)
        return False
    return True


def queued_job_ids() -> set[str] | None:
    """Job ids of the messages waiting in the jobs queues; None when the broker cannot be inspected."""
    messages = queued_messages()
    return None if messages is None else set().union(*messages.values())


def queued_messages() -> dict[str, set[str]] | None:
    """Queue name → job ids of the messages waiting in it, for every jobs queue (the plain one and each model's)."""
    if not settings.REDIS_URL:
        return None
    import redis

    default = settings.CELERY_TASK_DEFAULT_QUEUE
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    raw: dict[str, list[bytes]] = {}
    try:
        # Kombu keeps a queue as a list, with extra lists for priorities ("jobs.x\x06\x163" and so on).
        keys = [default.encode()] + list(client.scan_iter(match=f"{default}.*")) + list(
            client.scan_iter(match=f"{default}\x06\x16*")
        )
        for key in keys:
            if client.type(key) == b"list":
                queue = key.decode(errors="replace").split("\x06\x16", 1)[0]
                raw.setdefault(queue, []).extend(client.lrange(key, 0, -1))
    except redis.RedisError:
        logger.warning("could not inspect the broker's queues", exc_info=True)
        return None
    finally:
        client.close()
    return {queue: {job_id for m in messages if (job_id := _job_id_of(m))} for queue, messages in raw.items()}


def _job_id_of(raw: bytes) -> str | None:
    try:
        message = json.loads(raw)
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        return str(json.loads(body)[0][0])
    except (ValueError, KeyError, IndexError, TypeError):
        return None
