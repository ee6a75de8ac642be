"""PostgreSQL, the source of truth, restarts while a job runs: the job still ends once, with one set of images.

This restarts the machine's cluster (others' connections drop for a second too): once, in this module only.
"""

import os
import shutil
import subprocess
import time

import pytest

from tests.faults.conftest import make_stack, record, wait_for
from tests.support import required_env

STEPS = 60  # several seconds: the restart lands mid-job


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir, fault_database, fault_redis):
    var = tmp_path_factory.mktemp("faults-var")
    yield from make_stack(
        "postgres_restart", database_url=fault_database, redis_url=fault_redis, tiny_model_dir=tiny_model_dir, var=var
    )


def restart_postgres() -> None:
    if not shutil.which("pg_ctlcluster") or not os.path.isdir("/etc/postgresql"):
        pytest.fail("restarting PostgreSQL needs pg_ctlcluster and /etc/postgresql (Debian's postgresql-common)")
    (version,) = os.listdir("/etc/postgresql")
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"]
    subprocess.run(command, check=True, capture_output=True, timeout=60)


def postgres_ready() -> bool:
    return subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"]).returncode == 0


def test_restart_postgres_mid_job(stack):
    required_env("DATABASE_URL")
    stack.start_worker()
    job_id = stack.submit("a white cross, database restarted", steps=STEPS)
    stack.wait_running(job_id, min_step=2, timeout=120)

    restarted_at = time.monotonic()
    restart_postgres()
    wait_for(postgres_ready, 60, "pg_isready after the restart", every=0.2)
    outage = time.monotonic() - restarted_at

    job = stack.wait_terminal([job_id], timeout=120)[job_id]
    # The restart may outlast the 3 s lease: then the sweeper re-queues the job and it runs once more.
    assert job["status"] == "succeeded" and job["attempts"] <= 2, job
    recovered = time.monotonic() - restarted_at

    # The API and the (now idle) worker reconnect: a job submitted after the restart runs as usual.
    answered_5xx = []
    submit_after = stack.submit("a black dot, after the restart", steps=5, retries=3, on_5xx=answered_5xx.append)
    after = stack.wait_terminal([submit_after], timeout=60)[submit_after]
    assert after["status"] == "succeeded" and after["attempts"] == 1, after
    stack.check_invariants()
    record(
        "postgres restart mid-job",
        seconds_restart_until_pg_isready=round(outage, 1),
        seconds_restart_to_succeeded=round(recovered, 1),
        attempts=job["attempts"],
        sweeps_requeued=stack.swept(job_id, "requeued"),
        api_5xx_after_restart=len(answered_5xx),
        next_job_attempts=after["attempts"],
    )
