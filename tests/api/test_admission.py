"""Admission and fair order, as the API and the admin show them (the worker's side: tests/worker/test_tasks.py)."""

import pytest

from diffusion_api.jobs import selectors, services
from diffusion_api.jobs.models import Job

pytestmark = pytest.mark.django_db


def test_queue_position_follows_the_fair_order(alice, bob, published):
    """Alice queues three jobs, then Bob one: Bob's is second in line, not fourth."""
    alices = [services.job_create(owner=alice, prompt=f"a{i}", steps=1) for i in range(3)]
    bobs = services.job_create(owner=bob, prompt="b", steps=1)
    services.job_claim(job_id=alices[0].id, worker="w")  # Alice is being served now
    positions = [selectors.job_queue_position(job=Job.objects.get(id=j.id)) for j in (*alices, bobs)]
    assert positions == [None, 2, 3, 1]


def test_admin_retry_of_a_job_that_no_longer_fits_says_why(admin_client, alice, settings, published):
    job = services.job_create(owner=alice, prompt="x", width=256, height=256, steps=30, num_images=4, seed=1)
    settings.CELERY_TASK_SOFT_TIME_LIMIT = 10  # lowered since the job was made: its retry cannot finish now
    response = admin_client.post(
        "/admin/jobs/job/", {"action": "retry_jobs", "_selected_action": [str(job.id)]}, follow=True
    )
    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"]]
    assert "Queued 0 new jobs." in shown and any("Not retried" in m and "at most" in m for m in shown)
    assert not Job.objects.filter(retry_of=job).exists()


def test_the_sweeper_counts_wake_ups_not_names(alice, published, monkeypatch):
    """Any waiting message claims the fairest job, so one message naming a job that already runs still wakes a
    worker for one of the two queued jobs: the sweeper re-publishes one message, not two."""
    from datetime import timedelta

    from django.utils import timezone

    running = services.job_create(owner=alice, prompt="taken out of turn")
    services.job_claim(job_id=running.id, worker="w")
    waiting = [services.job_create(owner=alice, prompt=f"w{i}") for i in range(2)]
    Job.objects.update(published_at=timezone.now() - timedelta(hours=1))
    monkeypatch.setattr(services, "queued_messages", lambda: {"jobs.tiny": {str(running.id)}})
    republished = services.job_sweep().republished
    assert len(republished) == 1 and republished[0] in {j.id for j in waiting}


def test_a_batch_lost_with_its_worker_runs_again_alone_without_using_attempts(alice, bob, published, settings):
    """A worker dies running Alice's and Bob's jobs as one batch (one of them may be a poison job): neither loses
    an attempt to that, and each runs alone next; a job lost alone still counts its attempt."""
    from datetime import timedelta

    from django.utils import timezone

    settings.JOB_MAX_ATTEMPTS = 1  # before the fix, both batch mates would end failed here
    first = services.job_create(owner=alice, prompt="a", steps=1)
    mate = services.job_create(owner=bob, prompt="b", steps=1)
    alone = services.job_create(owner=bob, prompt="c", steps=1)
    services.job_claim(job_id=first.id, worker="h:1")
    assert [m.id for m in services.job_claim_batch(job=first, worker="h:1", limit=1)] == [mate.id]  # one batch
    services.job_claim(job_id=alone.id, worker="h:2")  # another process, alone
    Job.objects.update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    report = services.job_sweep()
    assert sorted(report.requeued_alone) == sorted([first.id, mate.id]) and report.failed == [alone.id]
    for job in (first, mate):
        job.refresh_from_db()
        assert (job.status, job.attempts, job.run_alone) == ("queued", 0, True)


def test_a_job_taken_back_from_a_lost_worker_goes_behind_its_owners_waiting_jobs(alice, published, settings):
    """The broker's order was first queued, first served; the fair order keeps it within one owner, so a job that
    kills its worker every time (re-queued by the sweeper) cannot run again before the jobs that waited."""
    from datetime import timedelta

    from django.utils import timezone

    poison = services.job_create(owner=alice, prompt="kills its worker")
    services.job_claim(job_id=poison.id, worker="h:1")
    waiting = [services.job_create(owner=alice, prompt=f"w{i}") for i in range(2)]
    Job.objects.filter(id=poison.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert services.job_sweep().requeued == [poison.id]
    assert list(selectors.jobs_queued_fairly().values_list("id", flat=True)) == [*(j.id for j in waiting), poison.id]
