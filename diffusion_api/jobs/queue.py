"""The one place that publishes to the broker."""

import base64
import json
import logging
from uuid import UUID

from django.conf import settings

from diffusion_api.celery import DELIVER_WEBHOOK_TASK, RUN_JOB_TASK, WEBHOOK_QUEUE, app

logger = logging.getLogger(__name__)


def publish_job(*, job_id: UUID) -> bool:
    """Queue a job for a worker. A failed publish leaves the job `queued` in the database, not lost."""
    try:
        app.send_task(RUN_JOB_TASK, args=[str(job_id)])
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
    """Job ids of the messages waiting in the Redis queue; None when the broker cannot be inspected."""
    if not settings.REDIS_URL:
        return None
    import redis

    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    try:
        # Kombu keeps a queue as a list, with extra lists for priorities ("jobs\x06\x163" and so on).
        keys = [queue] + [k.decode() for k in client.scan_iter(match=f"{queue}\x06\x16*")]
        raw_messages = [m for key in keys for m in client.lrange(key, 0, -1)]
    except redis.RedisError:
        logger.warning("could not inspect the broker's queue", exc_info=True)
        return None
    finally:
        client.close()
    ids = set()
    for raw in raw_messages:
        try:
            message = json.loads(raw)
            body = message["body"]
            if message.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            args = json.loads(body)[0]
            ids.add(str(args[0]))
        except (ValueError, KeyError, IndexError, TypeError):
            continue
    return ids
