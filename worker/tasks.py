"""Thin tasks: claim the fairest queued job (and batch mates), hand them to the runner, which records their outcomes."""

import logging
import os
import socket
import threading

from celery.signals import celeryd_after_setup, worker_init, worker_process_init, worker_ready, worker_shutdown
from django.conf import settings
from django.db import connection

from diffusion_api.celery import DELIVER_WEBHOOK_TASK, RUN_JOB_TASK, app
from diffusion_api.jobs import catalog, services, webhooks
from diffusion_api.jobs.queue import is_jobs_queue, publish_webhook, queue_for_model
from diffusion_api.logs import job_context
from worker import runner

logger = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"  # the pid of the process running the task


# acks_late, reject_on_worker_lost, prefetch and time limits: the CELERY_* block in settings.
# Celery's Django fix-up closes stale database connections around each task.
@app.task(name=RUN_JOB_TASK)
def run_job(job_id: str) -> str:
    # The message is a wake-up: the worker takes the job that is fairest to run now (services.job_claim_next),
    # which is not necessarily the one the message names.
    with job_context(job_id):
        job = services.job_claim_next(worker=worker_name(), models=runner.served_models())
        if job is None:
            logger.info("no job is queued (message for %s); skipping", job_id)
            return "skipped"
    with job_context(job.id):  # the logs of this work carry the id of the job it runs
        return _run_claimed(job, message_for=job_id)


def _run_claimed(job, *, message_for: str) -> str:
    jobs = [job]
    # A job that lost a worker before, or was in a batch that failed, runs alone: its failure is then its own.
    if settings.WORKER_BATCH_SIZE > 1 and job.attempts == 1 and not job.run_alone:
        jobs += services.job_claim_batch(job=job, worker=worker_name(), limit=settings.WORKER_BATCH_SIZE - 1)
    logger.info(
        "job %s claimed (attempt %d; message for %s) with %d batch mates %s",
        job.id,
        job.attempts,
        message_for,
        len(jobs) - 1,
        [str(j.id) for j in jobs[1:]],
    )
    outcomes = runner.run_jobs(jobs)  # records every outcome (services.job_record_outcome), errors included
    for other in jobs:
        logger.info("job %s %s", other.id, outcomes[other.id], extra={"job_id": str(other.id)})
    return outcomes[job.id]


@app.task(name=DELIVER_WEBHOOK_TASK)
def deliver_webhook(delivery_id: int) -> str:
    """One try; a retryable failure is published again with a backoff countdown."""
    delay = webhooks.attempt_delivery(delivery_id)
    if delay is None:
        return "settled"
    publish_webhook(delivery_id=delivery_id, countdown=delay)
    return f"retry in {delay:.0f}s"


_stop_heartbeat = threading.Event()


def _heartbeat_forever(hostname: str, queues: list[str]) -> None:
    runs_jobs = any(is_jobs_queue(queue) for queue in queues)
    engine = runner.engine().as_dict() if runs_jobs else {}
    models = settings.WORKER_MODELS if runs_jobs else []  # ["*"]: every model
    while not _stop_heartbeat.is_set():
        try:
            services.worker_heartbeat(hostname=hostname, pid=os.getpid(), queues=queues, models=models, engine=engine)
        except Exception:  # the database may be down for a while; keep trying
            logger.warning("worker heartbeat failed", exc_info=True)
        finally:
            connection.close()
        _stop_heartbeat.wait(settings.WORKER_HEARTBEAT_SECONDS)


@worker_ready.connect
def start_heartbeat(sender=None, **kwargs) -> None:
    hostname = getattr(sender, "hostname", None) or worker_name()
    queues = sorted(getattr(app.amqp.queues, "consume_from", None) or app.amqp.queues)
    threading.Thread(target=_heartbeat_forever, args=(hostname, queues), daemon=True, name="heartbeat").start()


@worker_shutdown.connect
def stop_heartbeat(**kwargs) -> None:
    _stop_heartbeat.set()


@celeryd_after_setup.connect
def consume_the_served_models_queues(sender=None, instance=None, **kwargs) -> None:
    """A worker started on the jobs queue (`-Q jobs`) consumes each of its models' queues (jobs.<name>): those
    WORKER_MODELS names, or with "*" every model offered now, and the plain queue too."""
    queues = instance.app.amqp.queues
    if settings.CELERY_TASK_DEFAULT_QUEUE not in (queues.consume_from or {}):
        return
    served = runner.served_models()
    for name in catalog.model_names() if served is None else served:
        queues.select_add(queue_for_model(name))
    if served is not None:
        queues.deselect(settings.CELERY_TASK_DEFAULT_QUEUE)
    logger.info("consuming %s", ", ".join(sorted(queues.consume_from)))


@worker_init.connect
def refuse_an_engine_this_machine_cannot_run(sender=None, **kwargs) -> None:
    """A jobs worker checks its dtype and backend before it starts: an explicit one this machine cannot run well (bf16
    on an AVX2-only CPU, compile without a C++ compiler) stops it with the reason, instead of running 100× slower."""
    queues = getattr(app.amqp.queues, "consume_from", None) or app.amqp.queues
    if settings.CELERY_TASK_DEFAULT_QUEUE not in queues:
        return
    try:
        runner.check_engine()
    except ValueError as error:  # EngineError, or an unknown name
        logger.critical("the worker cannot start: %s", error)
        raise SystemExit(f"the worker cannot start: {error}") from error


@worker_process_init.connect
def warm_up_model(**kwargs) -> None:
    """A pool process that serves the jobs queue loads (and compiles) the default model at once, not at its first job.

    On a thread: this signal's handler must return within seconds, and a compile takes minutes.
    """
    queues = getattr(app.amqp.queues, "consume_from", None) or app.amqp.queues
    if any(is_jobs_queue(queue) for queue in queues):
        runner.warm_up_in_background()
