"""Fault tests: real gunicorn, Celery worker and sweeper processes on real PostgreSQL and Redis, hurt on purpose.

Each test module gets a fresh PostgreSQL database and its own `Stack` (the API under gunicorn and the sweeper;
workers are started by the tests, because killing them is the point). Short crash-safety settings make a lost
worker visible in seconds: a 3 s lease, a sweep every second, re-publish after 3 s, at most 3 attempts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import psycopg
import pytest
import redis
import requests
from psycopg.rows import dict_row

from diffusion_api.processes import start_api, start_sweeper, start_worker, stop, wait_healthy
from tests.support import free_port, fresh_database, required_env

ROOT = Path(__file__).resolve().parents[2]

LOGS = ROOT / "test-output" / "faults"
MEASUREMENTS = LOGS / "measurements.jsonl"  # one JSON line per fault run: what RELIABILITY.md reports

LEASE_SECONDS = 3
MAX_ATTEMPTS = 3
REPUBLISH_AFTER = 3
CRASH_SETTINGS = {
    "JOB_LEASE_SECONDS": str(LEASE_SECONDS),
    "JOB_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
    "JOB_REPUBLISH_AFTER": str(REPUBLISH_AFTER),
    "SWEEP_INTERVAL": "1",
}
POISON_PROMPT = "poison: this prompt kills its worker"  # every fault-test worker runs with this fault armed
WORKER_APP = "tests.faults.celery_app"  # the service's Celery app plus the test-only poison-prompt hook
TERMINAL = ("succeeded", "failed", "canceled")


def record(fault: str, **measured) -> None:
    """Print a measurement and append it to test-output/faults/measurements.jsonl."""
    line = json.dumps({"fault": fault, **measured}, default=str)
    print(f"\nMEASURED {line}")
    LOGS.mkdir(parents=True, exist_ok=True)
    with MEASUREMENTS.open("a") as file:
        file.write(line + "\n")


def wait_for(condition: Callable[[], object], timeout: float, what: str, every: float = 0.2):
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture(scope="module")
def fault_database():
    """A fresh PostgreSQL database for this test module, dropped afterwards (a test may restart the server)."""
    with fresh_database("faults", before_drop=lambda admin_url: _wait_postgres(admin_url, timeout=60)) as url:
        yield url


@pytest.fixture(scope="module")
def fault_redis() -> str:
    """The machine's Redis, on the db number REDIS_URL names, emptied for this module."""
    url = required_env("REDIS_URL")
    redis.Redis.from_url(url).flushdb()
    return url


def _wait_postgres(url: str, timeout: float) -> None:
    def answers() -> bool:
        try:
            with psycopg.connect(url, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    wait_for(answers, timeout, "PostgreSQL to accept connections", every=0.5)


class Stack:
    """The service's processes for one test module, and what the tests need to submit jobs and check them."""

    def __init__(
        self, *, name: str, database_url: str, redis_url: str, tiny_model_dir: Path, var: Path, env: dict | None = None
    ):
        self.logs = LOGS / name
        self.logs.mkdir(parents=True, exist_ok=True)
        for old in self.logs.glob("*.log"):
            old.unlink()
        self.database_url = database_url
        self.redis_url = redis_url
        self.env = {
            "DJANGO_SETTINGS_MODULE": "diffusion_api.settings.production",
            "SECRET_KEY": "faults-" + uuid.uuid4().hex,
            "SECURE_SSL_REDIRECT": "false",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "MODELS": f"tiny={tiny_model_dir}",
            "GENERATOR_DEVICE": "cpu",
            "JOB_MAX_STEPS": "1000",
            "JOB_PROGRESS_INTERVAL": "0.1",
            "JOB_CREATE_RATE": "1000/min",
            "WORKER_HEARTBEAT_SECONDS": "2",
            "FAULT_KILL_WORKER_ON_PROMPT": POISON_PROMPT,  # read by tests/faults/celery_app.py alone
            "VAR_DIR": str(var),
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",  # on 2 shared cores, one torch thread is steadier (and faster) than two
            **CRASH_SETTINGS,
            **(env or {}),  # a module's own settings (the object store's, for one)
        }
        self.run_env = {**os.environ, **self.env}
        self.base = f"http://127.0.0.1:{free_port()}"
        self.api: subprocess.Popen | None = None
        self.sweeper: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.http = requests.Session()
        self.submitted: list[str] = []  # every job the API accepted in this module

    # --- processes
    def start(self) -> None:
        self.manage("migrate", "--verbosity", "0")
        self.api = start_api(int(self.base.rsplit(":", 1)[1]), env=self.env, log=self.logs / "api.log", gunicorn=True)
        self.sweeper = start_sweeper(env=self.env, log=self.logs / "sweeper.log", interval=1)
        wait_healthy(self.base, timeout=120, need_worker=False)
        self.http.headers["Authorization"] = f"Token {self.manage('issue_token', 'fault-tester')}"

    def start_worker(self) -> subprocess.Popen:
        number = len(self.workers) + 1
        log = self.logs / f"worker-{number}.log"
        worker = start_worker(env=self.env, log=log, name=f"faults{number}", app=WORKER_APP)
        self.workers.append(worker)
        return worker

    def live_worker(self) -> subprocess.Popen:
        """The running worker, or a new one if the last was killed."""
        if self.workers and self.workers[-1].poll() is None:
            return self.workers[-1]
        return self.start_worker()

    def kill_worker(self, worker: subprocess.Popen) -> None:
        """SIGKILL the whole worker: the main process and its pool children (its process group)."""
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)

    def stop(self) -> None:
        stop(*[p for p in (self.api, self.sweeper, *self.workers) if p is not None])

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.run_env, check=True, capture_output=True, text=True
        )
        return result.stdout.strip()

    def sweeper_log(self) -> str:
        return (self.logs / "sweeper.log").read_text(errors="replace")

    def swept(self, job_id: str, action: str) -> int:
        """How many sweeps listed the job under `action` (requeued, failed, republished or canceled)."""
        lists = re.findall(rf"\b{action} \[([^\]]*)\]", self.sweeper_log())
        return sum(job_id in listed for listed in lists)

    def swept_once_logged(self, job_id: str, action: str, timeout: float = 10.0) -> int:
        """`swept`, after waiting for the sweep's log line: the sweeper logs a sweep after it commits, so a job
        the API already shows as ended by a sweep may not be in the log yet."""
        deadline = time.monotonic() + timeout
        while not self.swept(job_id, action) and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.swept(job_id, action)

    # --- jobs through the API
    def submit(
        self, prompt: str, *, steps: int, num_images: int = 2, retries: int = 0, on_5xx: Callable | None = None
    ) -> str:
        """POST a job; returns its id. `retries`: how many 5xx answers to ride out (each goes to `on_5xx`)."""
        body = {"prompt": prompt, "width": 32, "height": 32, "steps": steps, "num_images": num_images}
        for _ in range(retries + 1):
            response = self.http.post(f"{self.base}/api/v1/jobs/", json=body, timeout=30)
            if response.status_code < 500:
                break
            if on_5xx is not None:
                on_5xx(response)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        self.submitted.append(job_id)
        return job_id

    # --- jobs in the database, the source of truth
    def query(self, sql: str, params: Iterable = ()) -> list[dict]:
        """Run one query on a new connection, so a restarted server only costs a retry."""
        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(self.database_url, connect_timeout=2, row_factory=dict_row) as conn:
                    return conn.execute(sql, params).fetchall()
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def job(self, job_id: str) -> dict:
        return self.query("SELECT * FROM jobs_job WHERE id = %s", [job_id])[0]

    def wait_running(self, job_id: str, min_step: int = 2, timeout: float = 60) -> dict:
        """Wait until the job is running and has made `min_step` denoising steps."""

        def running():
            job = self.job(job_id)
            assert job["status"] in ("queued", "running"), job
            return job if job["status"] == "running" and job["progress_step"] >= min_step else None

        return wait_for(running, timeout, f"job {job_id} to run {min_step} steps")

    def wait_terminal(self, job_ids: Iterable[str], timeout: float = 90) -> dict[str, dict]:
        """Wait until every job is succeeded, failed or canceled; returns the jobs by id."""
        job_ids = list(job_ids)

        def all_done():
            jobs = {str(j["id"]): j for j in self.query("SELECT * FROM jobs_job WHERE id = ANY(%s)", [job_ids])}
            ended = len(jobs) == len(set(job_ids)) and all(j["status"] in TERMINAL for j in jobs.values())
            return jobs if ended else None

        return wait_for(all_done, timeout, f"jobs {job_ids} to end", every=0.3)

    def check_invariants(self) -> None:
        """Every accepted job ended, and each succeeded job has exactly one set of images: indexes 0..n-1."""
        jobs = {str(j["id"]): j for j in self.query("SELECT id, status, num_images FROM jobs_job")}
        assert set(self.submitted) <= set(jobs), "a job the API accepted is missing"
        unfinished = {i: j["status"] for i, j in jobs.items() if j["status"] not in TERMINAL}
        assert not unfinished, f"jobs that did not end: {unfinished}"
        rows = self.query('SELECT job_id, "index" FROM jobs_jobimage ORDER BY job_id, "index"')
        indexes: dict[str, list[int]] = {}
        for row in rows:
            indexes.setdefault(str(row["job_id"]), []).append(row["index"])
        for job_id, job in jobs.items():
            expected = list(range(job["num_images"])) if job["status"] == "succeeded" else []
            assert indexes.get(job_id, []) == expected, (job_id, job["status"], indexes.get(job_id))


def make_stack(
    name: str, *, database_url: str, redis_url: str, tiny_model_dir: Path, var: Path, env: dict | None = None
):
    """Start a Stack, yield it, stop its processes (the tests check the invariants themselves)."""
    stack = Stack(
        name=name, database_url=database_url, redis_url=redis_url, tiny_model_dir=tiny_model_dir, var=var, env=env
    )
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
