"""A worker, its pool child or the API process dies at the worst moment; the sweeper gets every job to an end.

The tests share one stack (API, sweeper, one worker at a time) and run in file order; each leaves every job
ended, and the module ends by checking that no job has a second set of images.
"""

import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime

import psutil
import pytest
import redis
from django.conf import settings

from tests.faults.conftest import (
    LEASE_SECONDS,
    MAX_ATTEMPTS,
    POISON_PROMPT,
    REPUBLISH_AFTER,
    ROOT,
    make_stack,
    record,
    wait_for,
)
from tests.support import required_env

LONG_STEPS = 40  # a few seconds on the tiny model: long enough to be killed mid-job
SHORT_STEPS = 5


def seconds(start: datetime, end: datetime) -> float:
    return round((end - start).total_seconds(), 1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir, fault_database, fault_redis):
    var = tmp_path_factory.mktemp("faults-var")
    yield from make_stack(
        "process_crashes", database_url=fault_database, redis_url=fault_redis, tiny_model_dir=tiny_model_dir, var=var
    )


def test_redis_redelivers_only_after_the_hard_time_limit():
    """The broker must not hand a running job to a second worker; the lease and the sweeper do that."""
    required_env("REDIS_URL")
    visibility_timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    assert visibility_timeout > settings.CELERY_TASK_TIME_LIMIT
    assert settings.CELERY_TASK_ACKS_LATE and settings.CELERY_TASK_REJECT_ON_WORKER_LOST


def test_sigkill_the_pool_child_mid_job(stack):
    worker = stack.live_worker()
    job_id = stack.submit("a red circle, child killed", steps=LONG_STEPS)
    stack.wait_running(job_id, timeout=120)
    (child,) = psutil.Process(worker.pid).children()
    child.send_signal(signal.SIGKILL)
    killed_at = datetime.now(UTC)

    job = stack.wait_terminal([job_id])[job_id]
    # Celery re-delivers the message at once (reject_on_worker_lost), but the job is still `running` under the
    # dead child's lease: that delivery is skipped, and the sweeper re-queues the job once the lease expires.
    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    assert stack.swept(job_id, "requeued") == 1
    assert worker.poll() is None, "the worker's main process should have replaced its child"
    stack.check_invariants()
    record(
        "sigkill pool child mid-job",
        attempts=job["attempts"],
        sweeps_requeued=stack.swept(job_id, "requeued"),
        seconds_kill_to_reclaimed=seconds(killed_at, job["started_at"]),
        seconds_kill_to_succeeded=seconds(killed_at, job["finished_at"]),
    )


def test_sigkill_the_whole_worker_mid_job_then_start_another(stack):
    worker = stack.live_worker()
    running_id = stack.submit("a blue square, worker killed", steps=LONG_STEPS)
    stack.wait_running(running_id, timeout=120)
    waiting_id = stack.submit("a green triangle, waiting behind it", steps=SHORT_STEPS)
    stack.kill_worker(worker)
    killed_at = datetime.now(UTC)
    # The dead worker's message sits in Redis's `unacked` hash until the visibility timeout (hard limit + 600 s):
    # only the sweeper can bring the job back in time.
    held = redis.Redis.from_url(stack.redis_url).hlen("unacked")

    stack.start_worker()

    def taken_back() -> bool:  # re-queued by the sweeper (or already claimed again, if the new worker was quick)
        job = stack.job(running_id)
        return job["status"] != "running" or job["attempts"] > 1

    wait_for(taken_back, 30, "the sweeper to re-queue the job")
    requeued_at = datetime.now(UTC)  # to within one 0.2 s poll
    jobs = stack.wait_terminal([running_id, waiting_id], timeout=120)
    job = jobs[running_id]
    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    assert jobs[waiting_id]["status"] == "succeeded" and jobs[waiting_id]["attempts"] == 1, jobs[waiting_id]
    assert stack.swept(running_id, "requeued") == 1
    stack.check_invariants()
    record(
        "sigkill whole worker mid-job, start another",
        attempts=job["attempts"],
        messages_held_unacked=held,
        seconds_kill_to_requeued=seconds(killed_at, requeued_at),
        seconds_kill_to_reclaimed=seconds(killed_at, job["started_at"]),
        seconds_kill_to_succeeded=seconds(killed_at, job["finished_at"]),
    )


def test_crash_between_commit_and_publish(stack):
    """The process that created the jobs dies after the commit, before publishing: only the sweeper knows."""
    stack.live_worker()
    script = textwrap.dedent(
        f"""
        import os, signal
        from django.contrib.auth import get_user_model
        from django.db import transaction
        from diffusion_api.jobs import services

        owner = get_user_model().objects.get(username="fault-tester")
        services.publish_job = lambda **_: os.kill(os.getpid(), signal.SIGKILL)  # dies in the first on_commit
        with transaction.atomic():
            for n in range(2):
                job = services.job_create(owner=owner, prompt=f"lost publish {{n}}", width=32, height=32,
                                          steps={SHORT_STEPS}, num_images=2)
                print(job.id, flush=True)
        """
    )
    crashed = subprocess.run(
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", script],
        cwd=ROOT,
        env=stack.run_env,
        capture_output=True,
        text=True,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    job_ids = crashed.stdout.split()
    stack.submitted += job_ids
    assert len(job_ids) == 2 and all(stack.job(i)["status"] == "queued" for i in job_ids)
    assert redis.Redis.from_url(stack.redis_url).llen("jobs") == 0, "nothing should have been published"

    jobs = list(stack.wait_terminal(job_ids).values())
    assert all(j["status"] == "succeeded" and j["attempts"] == 1 for j in jobs), jobs
    assert all(stack.swept(i, "republished") == 1 for i in job_ids)
    waited = [seconds(j["created_at"], j["started_at"]) for j in jobs]
    assert min(waited) >= REPUBLISH_AFTER, "a job started before the sweeper could have re-published it"
    stack.check_invariants()
    record(
        "crash between commit and publish",
        attempts=[j["attempts"] for j in jobs],
        sweeps_republished=[stack.swept(i, "republished") for i in job_ids],
        seconds_created_to_started=waited,
        seconds_created_to_succeeded=[seconds(j["created_at"], j["finished_at"]) for j in jobs],
    )


def test_poison_job_fails_after_the_attempt_cap_without_holding_up_others(stack):
    stack.live_worker()
    poison_id = stack.submit(POISON_PROMPT, steps=SHORT_STEPS)
    others = [stack.submit(f"a yellow star {n}", steps=SHORT_STEPS) for n in range(2)]

    jobs = stack.wait_terminal([poison_id, *others], timeout=120)
    poison = jobs[poison_id]
    assert poison["status"] == "failed" and poison["attempts"] == MAX_ATTEMPTS, poison
    assert f"lost {MAX_ATTEMPTS} times" in poison["error"], poison
    assert f"JOB_MAX_ATTEMPTS={MAX_ATTEMPTS}" in poison["error"], poison
    assert stack.swept(poison_id, "requeued") == MAX_ATTEMPTS - 1 and stack.swept_once_logged(poison_id, "failed") == 1
    for other in others:
        # With batching (WORKER_BATCH_SIZE, default 4) a good job queued beside the poison job can share its
        # first attempt and die with it, once: from then on the poison job has lost a worker and runs alone.
        assert jobs[other]["status"] == "succeeded" and jobs[other]["attempts"] <= 2, jobs[other]
        assert jobs[other]["finished_at"] < poison["finished_at"], "a good job waited for the poison job"
    # Each attempt costs one lease (3 s) before the sweeper takes the job back.
    assert (poison["finished_at"] - poison["created_at"]).total_seconds() >= MAX_ATTEMPTS * LEASE_SECONDS
    stack.check_invariants()
    record(
        "poison job (kills its worker every time)",
        poison_status=poison["status"],
        poison_attempts=poison["attempts"],
        sweeps_requeued=stack.swept(poison_id, "requeued"),
        seconds_created_to_failed=seconds(poison["created_at"], poison["finished_at"]),
        others_succeeded=sum(jobs[o]["status"] == "succeeded" for o in others),
        others_attempts=[jobs[o]["attempts"] for o in others],
        seconds_others_done_before_poison_failed=seconds(
            max(jobs[o]["finished_at"] for o in others), poison["finished_at"]
        ),
        error=poison["error"],
    )


def test_cancel_a_running_job_whose_worker_died(stack):
    """Cancel asked for while the job's worker is dead: the job ends `canceled` at the sweep, not run again."""
    worker = stack.live_worker()
    job_id = stack.submit("a grey square, canceled while its worker is dead", steps=LONG_STEPS)
    stack.wait_running(job_id, timeout=120)
    (child,) = psutil.Process(worker.pid).children()
    child.send_signal(signal.SIGSTOP)  # frozen, it can neither see the cancel request nor renew its lease
    response = stack.http.post(f"{stack.base}/api/v1/jobs/{job_id}/cancel/", timeout=30)
    child.send_signal(signal.SIGKILL)
    killed_at = datetime.now(UTC)
    # "running": the cancel reached the dead worker's job. Only on a very slow machine can the lease expire
    # first; then the sweeper has re-queued the job already, and a queued job is canceled at once.
    assert response.status_code == 202 and response.json()["status"] in ("running", "canceled"), response.text

    job = stack.wait_terminal([job_id])[job_id]
    assert job["status"] == "canceled" and job["attempts"] == 1, job
    stack.check_invariants()
    record(
        "cancel a running job whose worker was SIGKILLed",
        status=job["status"],
        attempts=job["attempts"],
        status_when_cancel_asked=response.json()["status"],
        sweeps_canceled=stack.swept(job_id, "canceled"),
        seconds_kill_to_canceled=seconds(killed_at, job["finished_at"]),
    )
