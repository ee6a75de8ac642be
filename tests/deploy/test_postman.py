"""The Postman collection (postman/), run by newman against a live service: gunicorn and a Celery worker on a
fresh PostgreSQL database and Redis, as in the end-to-end tests, with a user made by `issue_token --password`."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid

import pytest

from diffusion_api.processes import start_api, start_worker, stop, wait_healthy
from tests.deploy.conftest import LOGS, ROOT
from tests.support import free_port

USERNAME = "postman"


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_model_dir, fresh_database, flushed_redis):
    env = {
        "DJANGO_SETTINGS_MODULE": "diffusion_api.settings.production",
        "SECRET_KEY": "postman-" + uuid.uuid4().hex,
        "SECURE_SSL_REDIRECT": "false",  # newman talks plain HTTP to gunicorn; no TLS proxy here
        "DATABASE_URL": fresh_database,
        "REDIS_URL": flushed_redis,
        "MODELS": f"tiny={tiny_model_dir}",
        "GENERATOR_DEVICE": "cpu",
        "JOB_PROGRESS_INTERVAL": "0.1",
        "WORKER_HEARTBEAT_SECONDS": "2",
        "VAR_DIR": str(tmp_path_factory.mktemp("postman-var")),
        "HF_HUB_OFFLINE": "1",
    }
    run_env = {**os.environ, **env}
    subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, env=run_env, check=True)
    password = secrets.token_urlsafe(16)
    subprocess.run(
        [sys.executable, "manage.py", "issue_token", USERNAME, f"--password={password}"],
        cwd=ROOT,
        env=run_env,
        check=True,
        capture_output=True,
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = start_api(port, env=env, log=LOGS / "postman" / "api.log", gunicorn=True)
    worker = start_worker(env=env, log=LOGS / "postman" / "worker.log")
    try:
        wait_healthy(base, timeout=120)
        yield {"base": base, "password": password}
    finally:
        stop(api, worker)


def newman_command(newman, base: str, password: str) -> list[str]:
    return [
        str(newman),
        "run",
        "postman/collection.json",
        "-e",
        "postman/environment.json",
        "--env-var",
        f"baseUrl={base}",
        "--env-var",
        f"username={USERNAME}",
        "--env-var",
        f"password={password}",
        "--timeout-request",
        "30000",
        "--color",
        "off",
    ]


def test_the_postman_collection_passes_under_newman(service, newman):
    command = newman_command(newman, service["base"], service["password"])
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    (LOGS / "postman" / "newman.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, f"newman failed:\n{result.stdout}\n{result.stderr}"
    # Every request ran and asserted something, and the loops polled to the end.
    for name in ("Get a token", "Fetch the image", "Cancel the long job", "List succeeded jobs"):
        assert name in result.stdout, name
    assert "succeeded, with one PNG of the asked size" in result.stdout
    assert "canceled before its last step, without images" in result.stdout


def test_the_collection_fails_when_the_service_says_no(service, newman):
    """The collection's assertions bite: a wrong password fails the token request and everything after it."""
    command = newman_command(newman, service["base"], "not-the-password")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "200 with a token" in result.stdout and "AssertionError" in result.stdout
