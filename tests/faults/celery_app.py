"""The fault tests' Celery app: the service's own, plus test-only fault injection (production code has none).

The fault tests start their workers with `celery -A tests.faults.celery_app worker` (start_worker(app=APP)).
With FAULT_KILL_WORKER_ON_PROMPT set, a pool process SIGKILLs itself when it is handed a batch holding a job with
exactly that prompt, after the claim (so the attempt counts, as when a real job kills its worker).
"""

import os
import signal

from celery.signals import worker_process_init

from diffusion_api.celery import app

__all__ = ["app", "arm_poison_prompt"]
POISON_PROMPT_ENV = "FAULT_KILL_WORKER_ON_PROMPT"


def arm_poison_prompt(prompt: str) -> None:
    """Wrap worker.runner.run_jobs (tasks call it through the module) so the poison prompt kills this process."""
    from worker import runner

    run_jobs = runner.run_jobs

    def run_jobs_or_die(jobs):
        if any(job.prompt == prompt for job in jobs):
            os.kill(os.getpid(), signal.SIGKILL)
        return run_jobs(jobs)

    runner.run_jobs = run_jobs_or_die


@worker_process_init.connect
def _arm(**kwargs) -> None:  # in each pool process, after Django is set up
    if prompt := os.environ.get(POISON_PROMPT_ENV):
        arm_poison_prompt(prompt)
