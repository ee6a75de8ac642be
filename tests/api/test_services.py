import pytest
from django.core.exceptions import ValidationError

from diffusion_api.jobs import selectors, services
from diffusion_api.jobs.models import Job, JobImage, JobStatus, ReviewStatus

pytestmark = pytest.mark.django_db


def test_create_resolves_defaults_and_publishes_after_commit(alice, published, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        job = services.job_create(owner=alice, prompt="a red circle")
        assert published == []  # not before the transaction commits
    assert len(callbacks) == 1 and published == [job.id]
    job.refresh_from_db()
    assert (job.status, job.model, job.width, job.height, job.steps, job.scheduler) == (
        JobStatus.QUEUED,
        "tiny",
        32,
        32,
        30,
        "ddim",
    )
    assert 0 <= job.seed < 2**32 and job.guidance_scale == 7.5 and job.num_images == 1


def test_create_checks_model_dependent_limits(alice, settings, published):
    settings.JOB_MAX_PIXELS = 32 * 64
    with pytest.raises(ValidationError) as error:
        services.job_create(owner=alice, prompt="x", width=33, height=64 * 2)
    assert "multiple of 2" in error.value.message_dict["width"][0]
    with pytest.raises(ValidationError) as error:
        services.job_create(owner=alice, prompt="x", width=64, height=64)
    assert "at most 2048 pixels" in error.value.message_dict["width"][0]
    with pytest.raises(ValidationError) as error:
        services.job_create(owner=alice, prompt="x", model="sd99")
    assert "unknown model 'sd99'" in error.value.message_dict["model"][0]
    assert Job.objects.count() == 0


def test_claim_is_guarded(alice, published):
    job = services.job_create(owner=alice, prompt="x")
    claimed = services.job_claim(job_id=job.id, worker="w1")
    assert claimed.status == JobStatus.RUNNING and claimed.attempts == 1 and claimed.started_at
    assert claimed.worker.startswith("w1#") and claimed.lease_expires_at > claimed.started_at
    assert services.job_claim(job_id=job.id, worker="w2") is None  # a second delivery does nothing
    assert Job.objects.get(id=job.id).worker == claimed.worker


def test_succeed_stores_images_and_ends_the_job_once(alice, published):
    job = services.job_create(owner=alice, prompt="x", num_images=2)
    token = services.job_claim(job_id=job.id, worker="w").worker
    images = [{"index": i, "seed": job.seed + i, "width": 32, "height": 32, "png": b"png%d" % i} for i in range(2)]
    assert not services.job_succeed(job_id=job.id, worker="w#other-claim", images=images)  # not this claim's
    assert services.job_succeed(job_id=job.id, worker=token, images=images)
    assert not services.job_succeed(job_id=job.id, worker=token, images=images)  # already ended: nothing stored
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.finished_at and job.percent == 100.0
    assert JobImage.objects.filter(job=job).count() == 2


def test_cancel_queued_at_once_running_at_next_step(alice, published):
    queued = services.job_create(owner=alice, prompt="x")
    assert services.job_cancel(job=queued).status == JobStatus.CANCELED
    assert services.job_claim(job_id=queued.id, worker="w") is None  # its message arrives later: skipped

    running = services.job_create(owner=alice, prompt="y")
    token = services.job_claim(job_id=running.id, worker="w").worker
    assert not services.job_report_progress(job_id=running.id, worker=token, step=1, total=30)
    job = services.job_cancel(job=running)
    assert job.status == JobStatus.RUNNING and job.cancel_requested
    assert services.job_report_progress(job_id=running.id, worker=token, step=2, total=30)  # told to stop
    assert services.job_mark_canceled(job_id=running.id, worker=token)
    running.refresh_from_db()
    assert running.status == JobStatus.CANCELED and running.progress_step == 2

    with pytest.raises(services.JobConflict, match="job is canceled"):
        services.job_cancel(job=running)


def test_fail_records_the_message_and_only_moves_forward(alice, published):
    job = services.job_create(owner=alice, prompt="x")
    token = services.job_claim(job_id=job.id, worker="w").worker
    assert services.job_fail(job_id=job.id, worker=token, error="boom")
    assert not services.job_fail(job_id=job.id, worker=token, error="again")
    job.refresh_from_db()
    assert (job.status, job.error) == (JobStatus.FAILED, "boom")


def test_retry_makes_a_new_job_with_the_same_parameters(alice, published):
    job = services.job_create(owner=alice, prompt="x", seed=5, steps=3, scheduler="euler")
    retry = services.job_retry(job=job)
    assert retry.id != job.id and retry.retry_of == job and retry.status == JobStatus.QUEUED
    assert (retry.seed, retry.steps, retry.scheduler, retry.owner) == (5, 3, "euler", alice)


def test_review(alice, staff, published):
    job = services.job_create(owner=alice, prompt="x")
    job = services.job_review(job=job, reviewer=staff, verdict=ReviewStatus.FLAGGED)
    assert job.review_status == ReviewStatus.FLAGGED and job.reviewed_by == staff and job.reviewed_at


def test_selectors_enforce_ownership_and_queue_position(alice, bob, staff, published):
    first = services.job_create(owner=alice, prompt="1")
    second = services.job_create(owner=bob, prompt="2")
    assert selectors.job_get(user=bob, job_id=first.id) is None
    assert selectors.job_get(user=staff, job_id=first.id) == first
    assert list(selectors.job_list(user=alice)) == [first]
    assert selectors.job_queue_position(job=first) == 1
    assert selectors.job_queue_position(job=second) == 2
    services.job_claim(job_id=first.id, worker="w")
    first.refresh_from_db()
    assert selectors.job_queue_position(job=first) is None
    assert selectors.job_queue_position(job=second) == 1
    assert list(selectors.job_list(user=alice, status="queued")) == []
