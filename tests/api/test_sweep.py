"""The sweeper's decisions, on the database (the fault tests run it as a real process)."""

from datetime import timedelta

import pytest
import redis
from django.utils import timezone
from rest_framework.test import APIClient

from diffusion_api.jobs import services
from diffusion_api.jobs.models import Job, JobStatus, WorkerHeartbeat

pytestmark = pytest.mark.django_db


def expire(job: Job) -> None:
    Job.objects.filter(id=job.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))


def running_job(owner) -> Job:
    job = services.job_create(owner=owner, prompt="x")
    return services.job_claim(job_id=job.id, worker="w")


def test_expired_lease_is_requeued_and_published(alice, published, settings):
    settings.REDIS_URL = ""
    job = running_job(alice)
    assert services.job_sweep().requeued == []  # the lease is still good
    expire(job)
    report = services.job_sweep()
    job.refresh_from_db()
    assert report.requeued == [job.id] and published == [job.id]
    assert job.status == JobStatus.QUEUED and job.worker == "" and job.attempts == 1
    again = services.job_claim(job_id=job.id, worker="w2")
    assert again.attempts == 2


def test_expired_lease_after_the_last_attempt_fails_with_the_reason(alice, published, settings):
    settings.JOB_MAX_ATTEMPTS = 1
    job = running_job(alice)
    expire(job)
    assert services.job_sweep().failed == [job.id]
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "lost 1 times" in job.error and "JOB_MAX_ATTEMPTS=1" in job.error


def test_expired_lease_with_a_cancel_asked_ends_canceled(alice, published):
    job = running_job(alice)
    services.job_cancel(job=job)
    expire(job)
    assert services.job_sweep().canceled == [job.id]
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELED


def test_stale_queued_job_is_republished_by_age_when_the_broker_cannot_be_read(alice, published, settings):
    settings.REDIS_URL = ""
    settings.JOB_REPUBLISH_AFTER = 60
    job = services.job_create(owner=alice, prompt="x")
    assert services.job_sweep().republished == []  # too young
    Job.objects.filter(id=job.id).update(published_at=timezone.now() - timedelta(seconds=61))
    assert services.job_sweep().republished == [job.id] and published == [job.id]
    assert services.job_sweep().republished == []  # published_at moved on


@pytest.mark.servers
def test_a_job_whose_message_is_in_redis_is_not_republished(alice, published, settings):
    from diffusion_api.celery import app
    from diffusion_api.jobs.queue import queue_for_model, queued_job_ids

    if not settings.REDIS_URL:
        pytest.fail("this test needs REDIS_URL (make test sets it)")
    client = redis.Redis.from_url(settings.REDIS_URL)
    queue = queue_for_model("tiny")
    client.delete(queue)
    waiting, lost = (services.job_create(owner=alice, prompt=p) for p in ("waiting", "lost"))
    app.send_task("worker.tasks.run_job", args=[str(waiting.id)], queue=queue)  # a real message in the real queue
    try:
        assert queued_job_ids() == {str(waiting.id)}
        Job.objects.update(published_at=timezone.now() - timedelta(hours=1))
        assert services.job_sweep().republished == [lost.id]
    finally:
        client.delete(queue)


def test_throttle_lets_requests_through_when_its_cache_is_down(alice_client, published, monkeypatch):
    def down(*args, **kwargs):
        raise redis.ConnectionError("Redis is restarting")

    monkeypatch.setattr("rest_framework.throttling.SimpleRateThrottle.cache.get", down)
    assert alice_client.post("/api/v1/jobs/", {"prompt": "x"}, format="json").status_code == 202


def test_health_counts_only_workers_that_run_jobs(db):
    now = timezone.now()
    WorkerHeartbeat.objects.create(hostname="webhooks@a", pid=1, last_seen=now, queues=["webhooks"])
    workers = APIClient().get("/api/v1/health/").json()["workers"]
    assert workers["ok"] is False and workers["alive"] == 1 and workers["job_workers"] == 0
    WorkerHeartbeat.objects.create(hostname="gpu@b", pid=2, last_seen=now, queues=["jobs"])
    WorkerHeartbeat.objects.create(hostname="gone@c", pid=3, last_seen=now - timedelta(hours=1), queues=["jobs"])
    workers = APIClient().get("/api/v1/health/").json()["workers"]
    assert workers["ok"] is True and workers["alive"] == 2 and workers["job_workers"] == 1
