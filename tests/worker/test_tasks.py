import io
from collections import OrderedDict

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from PIL import Image

from diffusion_api.jobs import selectors, services
from diffusion_api.jobs.models import Job, JobStatus
from generator import backends, read_manifest
from worker import runner, tasks

pytestmark = pytest.mark.django_db


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("worker-test")


def test_runs_a_job_and_stores_reproducible_pngs(user, published, image_store):
    job = services.job_create(owner=user, prompt="a red circle", steps=3, num_images=2, seed=9, width=16, height=24)
    assert tasks.run_job(str(job.id)) == "succeeded"
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 1 and job.progress_step == 3
    images = list(job.images.order_by("index"))
    assert [(i.index, i.seed, i.width, i.height) for i in images] == [(0, 9, 16, 24), (1, 10, 16, 24)]
    assert Image.open(io.BytesIO(selectors.image_png(image=images[0]))).size == (16, 24)
    assert read_manifest(selectors.image_png(image=images[1]))["seed"] == 10

    again = services.job_create(owner=user, prompt="a red circle", steps=3, num_images=2, seed=9, width=16, height=24)
    tasks.run_job(str(again.id))
    assert selectors.image_png(image=again.images.get(index=0)) == selectors.image_png(image=images[0])


def test_a_second_delivery_does_nothing(user, published):
    job = services.job_create(owner=user, prompt="x", steps=1)
    assert tasks.run_job(str(job.id)) == "succeeded"
    assert tasks.run_job(str(job.id)) == "skipped"
    job.refresh_from_db()
    assert job.attempts == 1 and job.images.count() == 1


def test_cancel_between_steps(user, published, monkeypatch, settings):
    settings.JOB_PROGRESS_INTERVAL = 0
    job = services.job_create(owner=user, prompt="x", steps=20)
    steps_seen = []
    real_report = services.job_report_progress

    def report_and_cancel_at_three(*, job_id, worker, step, total):
        steps_seen.append(step)
        if step == 3:
            services.job_cancel(job=Job.objects.get(id=job_id))
        return real_report(job_id=job_id, worker=worker, step=step, total=total)

    monkeypatch.setattr(services, "job_report_progress", report_and_cancel_at_three)
    assert tasks.run_job(str(job.id)) == "canceled"
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELED and job.images.count() == 0
    assert steps_seen == [1, 2, 3]


def test_progress_writes_are_throttled(user, published, monkeypatch, settings):
    settings.JOB_PROGRESS_INTERVAL = 3600  # only the last step may write
    job = services.job_create(owner=user, prompt="x", steps=6)
    writes = []
    real_report = services.job_report_progress
    monkeypatch.setattr(services, "job_report_progress", lambda **kw: writes.append(kw["step"]) or real_report(**kw))
    tasks.run_job(str(job.id))
    assert writes == [1, 6]


def test_failure_stores_the_message(user, published, monkeypatch, settings, django_capture_on_commit_callbacks):
    settings.WORKER_BATCH_SIZE = 2
    job, mate = (services.job_create(owner=user, prompt=p, steps=1) for p in ("x", "y"))

    def explode(model, requests, callback=None):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(runner, "generate", explode)
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.run_job(str(job.id)) == "requeued"  # the batch failed: each job runs again alone
    for each in (job, mate):  # alone, each fails with the message, on its first counted attempt
        assert tasks.run_job(str(each.id)) == "failed"
        each.refresh_from_db()
        assert each.status == JobStatus.FAILED and each.error == "RuntimeError: CUDA out of memory" and each.finished_at
        assert each.attempts == 1 and each.run_alone


def test_every_outcome_is_recorded_by_one_service(user, published, monkeypatch, settings):
    settings.WORKER_BATCH_SIZE = 3
    settings.JOB_PROGRESS_INTERVAL = 0
    settings.JOB_MAX_PROMPT_CHARS = 3000  # a prompt of more windows than the worker takes
    good, bad, dropped = (services.job_create(owner=user, prompt=p, steps=3) for p in ("fine", "red " * 601, "dropped"))
    recorded = []
    real_record = services.job_record_outcome
    monkeypatch.setattr(
        services, "job_record_outcome", lambda **kw: recorded.append(kw["outcome"]) or real_record(**kw)
    )
    real_report = services.job_report_progress

    def cancel_dropped(*, job_id, worker, step, total):
        if job_id == dropped.id and step == 1:
            services.job_cancel(job=Job.objects.get(id=job_id))
        return real_report(job_id=job_id, worker=worker, step=step, total=total)

    monkeypatch.setattr(services, "job_report_progress", cancel_dropped)
    assert tasks.run_job(str(good.id)) == "succeeded"
    assert sorted(recorded) == ["canceled", "failed", "succeeded"]
    assert {j.status for j in Job.objects.all()} == {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED}


def test_the_heartbeat_is_a_service_and_health_reads_it(db):
    from diffusion_api.jobs import selectors

    services.worker_heartbeat(hostname="worker@a", pid=7, queues=["jobs"], models=["tiny"])
    services.worker_heartbeat(hostname="worker@a", pid=8, queues=["jobs"], models=["tiny"])
    assert [(w.hostname, w.pid) for w in selectors.workers_alive()] == [("worker@a", 8)]


def test_production_code_holds_no_fault_injection():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    sources = [
        p for folder in ("diffusion_api", "worker", "generator", "scripts") for p in (root / folder).rglob("*.py")
    ]
    assert [str(p) for p in sources if re.search(r"\bFAULT_", p.read_text())] == []
    # What runs in production kills nothing; scripts may stop their own children (scripts/gpu_check.py does).
    running = [p for p in sources if p.parts[len(root.parts)] != "scripts"]
    assert [str(p) for p in running if "SIGKILL" in p.read_text()] == []


def test_prompt_too_long_for_the_tokenizer_fails_with_a_clear_message(user, published, settings):
    settings.JOB_MAX_PROMPT_CHARS = 3000  # the web process counts characters; the tokens are the worker's to count
    job = services.job_create(owner=user, prompt="red " * 601, steps=1)
    assert tasks.run_job(str(job.id)) == "failed"
    job.refresh_from_db()
    assert "prompt is 601 tokens long, 9 windows" in job.error


def test_model_is_loaded_once_per_process(user, published, monkeypatch):
    runner._loaded.clear()
    loads = []
    real_load = runner.load_model
    monkeypatch.setattr(runner, "load_model", lambda *a, **kw: loads.append(a) or real_load(*a, **kw))
    for _ in range(2):
        tasks.run_job(str(services.job_create(owner=user, prompt="x", steps=1).id))
    assert len(loads) == 1


def test_task_options_come_from_settings(settings):
    from diffusion_api.celery import app

    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.task_time_limit == settings.CELERY_TASK_TIME_LIMIT
    assert app.conf.task_soft_time_limit == settings.CELERY_TASK_SOFT_TIME_LIMIT


def pixels(image_row) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(selectors.image_png(image=image_row)))).astype(int)


def test_compatible_jobs_run_as_one_batch(user, published, settings):
    settings.WORKER_BATCH_SIZE = 3
    same = dict(steps=3, width=16, height=16, scheduler="euler")
    first, second, third = (
        services.job_create(owner=user, prompt=p, seed=s, **same)
        for p, s in (("a red circle", 1), ("a blue square", 2), ("a green triangle", 3))
    )
    other = services.job_create(owner=user, prompt="x", seed=4, steps=4, width=16, height=16, scheduler="euler")
    assert tasks.run_job(str(first.id)) == "succeeded"
    statuses = {j.id: j.status for j in Job.objects.all()}
    assert [statuses[j.id] for j in (first, second, third)] == [JobStatus.SUCCEEDED] * 3
    assert statuses[other.id] == JobStatus.QUEUED  # different steps: not in this batch
    assert tasks.run_job(str(second.id)) == "succeeded"  # its own message arrives later and runs the next job
    assert Job.objects.get(id=other.id).status == JobStatus.SUCCEEDED
    assert tasks.run_job(str(third.id)) == "skipped"  # nothing is left to run

    settings.WORKER_BATCH_SIZE = 1
    alone = services.job_create(owner=user, prompt="a blue square", seed=2, cache=False, **same)
    tasks.run_job(str(alone.id))
    batched = Job.objects.get(id=second.id).images.get()
    assert abs(pixels(batched) - pixels(alone.images.get())).max() <= 1  # its own seed, as if alone


def test_cancel_one_job_of_a_batch(user, published, settings, monkeypatch):
    settings.WORKER_BATCH_SIZE = 2
    settings.JOB_PROGRESS_INTERVAL = 0
    keep, drop = (services.job_create(owner=user, prompt=p, steps=6) for p in ("keep", "drop"))
    real_report = services.job_report_progress

    def cancel_drop_at_two(*, job_id, worker, step, total):
        if job_id == drop.id and step == 2:
            services.job_cancel(job=Job.objects.get(id=job_id))
        return real_report(job_id=job_id, worker=worker, step=step, total=total)

    monkeypatch.setattr(services, "job_report_progress", cancel_drop_at_two)
    assert tasks.run_job(str(keep.id)) == "succeeded"
    keep.refresh_from_db()
    drop.refresh_from_db()
    assert keep.status == JobStatus.SUCCEEDED and keep.images.count() == 1
    assert drop.status == JobStatus.CANCELED and drop.images.count() == 0 and drop.progress_step == 2


def test_a_bad_job_fails_alone_in_its_batch(user, published, settings):
    settings.WORKER_BATCH_SIZE = 2
    settings.JOB_MAX_PROMPT_CHARS = 3000
    good = services.job_create(owner=user, prompt="fine", steps=1)
    bad = services.job_create(owner=user, prompt="red " * 601, steps=1)
    tasks.run_job(str(good.id))
    good.refresh_from_db()
    bad.refresh_from_db()
    assert good.status == JobStatus.SUCCEEDED
    assert bad.status == JobStatus.FAILED and "prompt is 601 tokens long" in bad.error


def test_a_job_that_lost_a_worker_runs_alone(user, published, settings):
    settings.WORKER_BATCH_SIZE = 4
    retried = services.job_create(owner=user, prompt="x", steps=1)
    Job.objects.filter(id=retried.id).update(attempts=1)  # the sweeper took it back once
    waiting = services.job_create(owner=user, prompt="y", steps=1)
    tasks.run_job(str(retried.id))
    assert Job.objects.get(id=waiting.id).status == JobStatus.QUEUED
    fresh_first = services.job_create(owner=user, prompt="z", steps=1)
    tasks.run_job(str(fresh_first.id))
    assert Job.objects.get(id=waiting.id).status == JobStatus.SUCCEEDED  # fresh jobs do batch together


def test_fast_path_settings_reach_the_model(user, published, settings, monkeypatch):
    """GENERATOR_DTYPE/CHANNELS_LAST/DECODER/COMPILE are applied when the worker loads a model."""
    import torch

    from generator import fastpath

    settings.GENERATOR_DTYPE = "bf16"
    settings.GENERATOR_BACKEND = "compile"
    settings.GENERATOR_DECODER = "tiny"  # the tiny test model has no tiny_vae/: its VAE decodes
    settings.GENERATOR_COMPILE = "32x32x1"
    # The engine as a bf16-capable CPU with a compiler would choose it, whatever this CPU is.
    monkeypatch.setattr(
        runner, "engine", lambda: backends.choose_engine("cpu", "bf16", "compile", flags=frozenset({"avx512_bf16"}))
    )
    # Compiling is left out (tests/generator/test_fastpath.py compiles for real): a job that outlasts a third of
    # its lease would look lost here, since the lease thread's connection cannot see the test's transaction.
    compiled_for = []
    monkeypatch.setattr(
        fastpath.BucketedUNet,
        "compile_for",
        lambda self, batch, h, w, context, graph="unet", added=None: compiled_for.append((batch, h, w, graph)) or 0.0,
    )
    monkeypatch.setattr(runner, "_loaded", OrderedDict())
    model = runner.get_model("tiny")
    assert model.dtype == torch.bfloat16 and model.decoder == "vae"
    assert model.unet.eager.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert compiled_for == [(2, 16, 16, "unet")]  # 1 image under guidance = 2 UNet rows, at 32 px's 16² latents
    job = services.job_create(owner=user, prompt="a red circle", steps=2, seed=1)
    assert tasks.run_job(str(job.id)) == "succeeded"
    manifest = read_manifest(selectors.image_png(image=job.images.get()))
    assert manifest["dtype"] == "bfloat16" and manifest["engine"]["backend"] == "compile"


def test_worker_process_start_warms_up_the_default_model(settings, monkeypatch):
    monkeypatch.setattr(runner, "_loaded", OrderedDict())
    tasks.warm_up_model()
    for thread in __import__("threading").enumerate():
        if thread.name == "warm-up":
            thread.join(timeout=60)
    assert "tiny" in runner._loaded


def test_a_failed_batch_does_not_fail_a_job_that_succeeds_alone(
    user, published, monkeypatch, settings, django_capture_on_commit_callbacks
):
    """Alice's small job shares a batch with Bob's big one, and the batch runs out of time: Alice's job must not
    fail with it. Both run again alone, and neither loses an attempt to the batch."""
    from celery.exceptions import SoftTimeLimitExceeded

    settings.WORKER_BATCH_SIZE = 2
    bob = get_user_model().objects.create_user("bob")
    alices = services.job_create(owner=user, prompt="a red circle", steps=2, seed=1)
    bobs = services.job_create(owner=bob, prompt="a blue square", steps=2, seed=2, num_images=4)
    real_generate = runner.generate

    def out_of_time_when_batched(model, requests, callback=None):
        if len(requests) > 1:
            raise SoftTimeLimitExceeded()
        return real_generate(model, requests, callback=callback)

    monkeypatch.setattr(runner, "generate", out_of_time_when_batched)
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.run_job(str(alices.id)) == "requeued"
    assert sorted(published[-2:]) == sorted([alices.id, bobs.id])  # both published again
    for job in (alices, bobs):
        job.refresh_from_db()
        assert (job.status, job.attempts, job.run_alone, job.error) == (JobStatus.QUEUED, 0, True, "")
    assert tasks.run_job(str(alices.id)) == "succeeded"  # alone
    assert tasks.run_job(str(bobs.id)) == "succeeded"
    for job in (alices, bobs):
        job.refresh_from_db()
        assert job.status == JobStatus.SUCCEEDED and job.attempts == 1 and job.images.count() == job.num_images


def test_a_lone_job_that_runs_out_of_time_fails(user, published, monkeypatch, settings):
    from celery.exceptions import SoftTimeLimitExceeded

    def out_of_time(model, requests, callback=None):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(runner, "generate", out_of_time)
    job = services.job_create(owner=user, prompt="x", steps=1)
    assert tasks.run_job(str(job.id)) == "failed"
    job.refresh_from_db()
    assert job.error == f"time limit of {settings.CELERY_TASK_SOFT_TIME_LIMIT}s exceeded" and job.attempts == 1


def test_batch_mates_join_only_while_the_batch_fits_the_time_limit(user, published, settings):
    """The batch's estimated cost (its UNet rows together) must fit the time limit one job is given."""
    settings.WORKER_BATCH_SIZE = 4
    settings.CELERY_TASK_SOFT_TIME_LIMIT = 100
    settings.JOB_COST_HEADROOM = 0.8  # 80 s for a batch
    # 32 × 32 px, 10 steps, guided: 0.0205 megapixel-row steps per image; at 1000 s each, 20.5 s an image.
    settings.JOB_STEP_SECONDS_PER_MEGAPIXEL = 1000.0
    same = dict(steps=10, width=32, height=32, guidance_scale=7.5)
    first = services.job_create(owner=user, prompt="a", num_images=2, **same)  # 41 s
    big = services.job_create(owner=user, prompt="b", num_images=3, **same)  # 61.4 s: 102 s with first
    small = services.job_create(owner=user, prompt="c", num_images=1, **same)  # 20.5 s: 61.4 s with first
    mates = services.job_claim_batch(job=services.job_claim(job_id=first.id, worker="w"), worker="w", limit=3)
    assert [m.id for m in mates] == [small.id]
    assert Job.objects.get(id=big.id).status == JobStatus.QUEUED


def test_batch_mates_take_owners_in_turn(user, published, settings):
    settings.WORKER_BATCH_SIZE = 3
    bob = get_user_model().objects.create_user("bob")
    same = dict(steps=2, width=32, height=32)
    first, *alices = (services.job_create(owner=user, prompt=f"a{i}", **same) for i in range(4))
    bobs = services.job_create(owner=bob, prompt="b", **same)
    mates = services.job_claim_batch(job=services.job_claim(job_id=first.id, worker="w"), worker="w", limit=2)
    assert {m.owner_id for m in mates} == {user.id, bob.id} and bobs.id in {m.id for m in mates}


def test_one_users_backlog_does_not_starve_another(user, published, settings):
    """Alice queues three jobs, then Bob one; the broker delivers in that order. Bob's job runs second."""
    settings.WORKER_BATCH_SIZE = 1
    bob = get_user_model().objects.create_user("bob")
    alices = [services.job_create(owner=user, prompt=f"a{i}", steps=1) for i in range(3)]
    bobs = services.job_create(owner=bob, prompt="b", steps=1)
    started = []
    for message in [*alices, bobs]:  # the broker's order: submission order
        tasks.run_job(str(message.id))
        started.append(Job.objects.filter(status=JobStatus.SUCCEEDED).order_by("-started_at").first().id)
    assert started == [alices[0].id, bobs.id, alices[1].id, alices[2].id]
    assert all(job.status == JobStatus.SUCCEEDED for job in Job.objects.all())


def test_the_worker_measures_a_models_step_cost(user, published, settings):
    from diffusion_api.jobs import selectors
    from diffusion_api.jobs.models import ModelStepCost

    job = services.job_create(owner=user, prompt="x", steps=4, width=32, height=32, guidance_scale=7.5, num_images=2)
    assert tasks.run_job(str(job.id)) == "succeeded"
    measured = ModelStepCost.objects.get(model="tiny")
    # steps 1 → 4 are 3 steps, of 2 images doubled by guidance: 4 rows of 32 × 32 px.
    assert measured.megapixel_rows == pytest.approx(3 * 4 * 32 * 32 / 1e6) and measured.seconds > 0
    prior = settings.JOB_STEP_SECONDS_PER_MEGAPIXEL
    rate = selectors.model_step_rate(model="tiny")
    assert rate == pytest.approx((measured.seconds + prior) / (measured.megapixel_rows + 1))
