"""Routing on real Redis and PostgreSQL: a worker that serves model b consumes b's queue only, runs b's job and never
takes a's, which stays queued, says why, and keeps its message in a's queue for a worker of a."""

import os
import shutil
import subprocess
import sys
import time

import psycopg
import pytest
import redis

from diffusion_api.processes import ROOT, start_worker, stop
from tests.support import fresh_database, required_env

pytestmark = pytest.mark.servers


def manage(env: dict, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def wait_for(query, conn, check, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = conn.execute(query).fetchall()
        if check(rows):
            return rows
        time.sleep(0.3)
    raise TimeoutError(f"{query}: last {rows}")


def test_a_job_goes_only_to_a_worker_of_its_model(tmp_path, tiny_model_dir):
    for name in ("a", "b"):
        shutil.copytree(tiny_model_dir, tmp_path / name)
    redis_url = required_env("REDIS_URL")
    client = redis.Redis.from_url(redis_url)
    client.delete("jobs.a", "jobs.b")
    with fresh_database("routing") as database_url:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "diffusion_api.settings.local",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "MODELS": f"a={tmp_path / 'a'},b={tmp_path / 'b'}",
            "WORKER_MODELS": "b",
            "GENERATOR_DEVICE": "cpu",
            "WORKER_HEARTBEAT_SECONDS": "1",
            "VAR_DIR": str(tmp_path / "var"),
            "HF_HUB_OFFLINE": "1",
        }
        manage(env, "migrate", "--verbosity", "0")
        worker = start_worker(env=env, log=ROOT / "test-output" / "e2e" / "routing-worker.log", name="b-only")
        try:
            with psycopg.connect(database_url, autocommit=True) as conn:
                ((queues, models),) = wait_for(
                    "SELECT queues, models FROM jobs_workerheartbeat", conn, lambda rows: len(rows) == 1
                )
                assert "jobs.b" in queues and "jobs.a" not in queues and "jobs" not in queues and models == ["b"]
                script = (
                    "from django.contrib.auth import get_user_model; from diffusion_api.jobs import services; "
                    "u = get_user_model().objects.create_user('router'); "
                    "print(services.job_create(owner=u, prompt='for a', model='a', steps=1, width=32, height=32).id); "
                    "print(services.job_create(owner=u, prompt='for b', model='b', steps=1, width=32, height=32).id)"
                )
                for_a, for_b = manage(env, "shell", "-c", script).splitlines()[-2:]
                wait_for(f"SELECT status FROM jobs_job WHERE id = '{for_b}'", conn, lambda r: r == [("succeeded",)])
                time.sleep(2)  # a's message has had time to reach a wrong consumer, were there one
                ((status, reason),) = conn.execute(
                    f"SELECT status, waiting_reason FROM jobs_job WHERE id = '{for_a}'"
                ).fetchall()
                assert status == "queued" and "no live worker serves model 'a'" in reason
                assert client.llen("jobs.a") == 1 and client.llen("jobs.b") == 0
        finally:
            stop(worker)
            client.delete("jobs.a", "jobs.b")
