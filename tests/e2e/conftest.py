"""End-to-end: a real gunicorn API, a real Celery worker process, real Redis, real PostgreSQL, and the images in an
S3-compatible store (the local moto server, a fresh bucket per module)."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
import requests

from diffusion_api.processes import start_api, start_worker, stop, wait_healthy
from tests.support import free_port, fresh_database, new_bucket, required_env, s3_environment

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def e2e_database():
    """A fresh PostgreSQL database for this module, dropped afterwards."""
    with fresh_database("e2e") as url:
        yield url


@pytest.fixture(scope="module")
def e2e_redis():
    url = required_env("REDIS_URL")
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="module")  # stopped when its module ends, so it never consumes later tests' jobs
def service(tmp_path_factory, tiny_model_dir, e2e_database, e2e_redis, s3_endpoint):
    """Start the API under gunicorn and one worker, as production would, and yield how to reach them."""
    var = tmp_path_factory.mktemp("e2e-var")
    bucket = new_bucket(s3_endpoint)
    env = {
        "DJANGO_SETTINGS_MODULE": "diffusion_api.settings.production",
        "SECRET_KEY": "e2e-" + uuid.uuid4().hex,
        "SECURE_SSL_REDIRECT": "false",
        "DATABASE_URL": e2e_database,
        "REDIS_URL": e2e_redis,
        "MODELS": f"tiny={tiny_model_dir}",
        "GENERATOR_DEVICE": "cpu",
        "JOB_MAX_STEPS": "1000",
        "JOB_MAX_PROMPT_CHARS": "3000",
        "JOB_PROGRESS_INTERVAL": "0.1",
        "JOB_PREVIEW_INTERVAL": "0.05",
        "WORKER_HEARTBEAT_SECONDS": "2",
        "WEBHOOK_ALLOW_PRIVATE": "true",  # the test's receiver listens on loopback
        "WEBHOOK_SECRET": "e2e-webhook-secret",
        "WEBHOOK_BACKOFF_SECONDS": "1",
        "VAR_DIR": str(var),
        "HF_HUB_OFFLINE": "1",
        **s3_environment(s3_endpoint, bucket),
    }
    run_env = {**os.environ, **env}
    subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, env=run_env, check=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    logs = ROOT / "test-output" / "e2e"
    api = start_api(port, env=env, log=logs / "api.log", gunicorn=True)
    worker = start_worker(env=env, log=logs / "worker.log")
    try:
        wait_healthy(base, timeout=180)

        def token(username: str) -> str:
            result = subprocess.run(
                [sys.executable, "manage.py", "issue_token", username],
                cwd=ROOT,
                env=run_env,
                check=True,
                capture_output=True,
                text=True,
            )
            return result.stdout.strip()

        yield {"base": base, "token": token, "env": run_env, "s3": {"endpoint": s3_endpoint, "bucket": bucket}}
    finally:
        stop(api, worker)


def session_for(token: str) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Token {token}"
    return session
