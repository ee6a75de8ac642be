"""Redis restarts while jobs wait in its queue, with no worker running; with AOF on, no message is lost.

This module runs its own redis-server on a free port (never the machine's Redis, which others use).
"""

import base64
import json
import subprocess
import time
from pathlib import Path

import pytest
import redis

from tests.faults.conftest import REPUBLISH_AFTER, make_stack, record, wait_for
from tests.support import free_port

STEPS = 5


class OwnRedis:
    """A redis-server with an append-only file in `directory`, which it reads back when started again."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis(port=self.port, socket_timeout=5)
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "yes", "--dir", str(self.directory)]
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._answers, 20, f"redis-server on port {self.port}")

    def shutdown(self) -> None:
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown"], check=True, capture_output=True)
        self.process.wait(timeout=20)

    def _answers(self) -> bool:
        try:
            return self.client.ping()
        except redis.ConnectionError:
            return False


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory):
    server = OwnRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    if server.process.poll() is None:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir, fault_database, own_redis):
    var = tmp_path_factory.mktemp("faults-var")
    yield from make_stack(
        "redis_restart", database_url=fault_database, redis_url=own_redis.url, tiny_model_dir=tiny_model_dir, var=var
    )


def queued_job_ids(client: redis.Redis) -> list[str]:
    """The job id of each message in the tiny model's queue (Kombu's JSON envelope around a base64 Celery body)."""
    ids = []
    for raw in client.lrange("jobs.tiny", 0, -1):
        body = json.loads(base64.b64decode(json.loads(raw)["body"]))
        ids.append(body[0][0])
    return ids


def test_restart_redis_while_jobs_are_queued(stack, own_redis):
    before = [stack.submit(f"a purple hexagon {n}", steps=STEPS) for n in range(3)]
    assert sorted(queued_job_ids(own_redis.client)) == sorted(before)

    down_at = time.monotonic()
    own_redis.shutdown()
    # Stay down past JOB_REPUBLISH_AFTER, so the sweeper meets the outage: it cannot inspect the queue, so it
    # re-publishes by age alone (those publishes fail, or land as harmless duplicates once Redis is back).
    during = stack.http.post(
        f"{stack.base}/api/v1/jobs/", json={"prompt": "during the outage", "width": 32, "height": 32, "steps": STEPS}
    )
    if during.status_code == 202:
        stack.submitted.append(during.json()["id"])
    time.sleep(max(0.0, REPUBLISH_AFTER + 1 - (time.monotonic() - down_at)))
    own_redis.start()
    outage = time.monotonic() - down_at
    kept = queued_job_ids(own_redis.client)
    assert set(before) <= set(kept), "the append-only file should have kept every queued message"
    after = stack.submit("an orange ring, submitted after the restart", steps=STEPS)

    stack.start_worker()
    worker_started_at = time.monotonic()
    jobs = stack.wait_terminal(stack.submitted, timeout=120)
    assert all(j["status"] == "succeeded" and j["attempts"] == 1 for j in jobs.values()), jobs
    stack.check_invariants()
    record(
        "redis restart with jobs queued, no worker",
        seconds_redis_down=round(outage, 1),
        post_during_outage=during.status_code,
        messages_before=len(before),
        messages_after_restart=len(kept),
        original_messages_kept=len(set(before) & set(kept)),
        seconds_worker_start_to_all_succeeded=round(time.monotonic() - worker_started_at, 1),
        attempts=[j["attempts"] for j in jobs.values()],
        sweeps_republished=sum(stack.swept(i, "republished") for i in [*before, after]),
    )
