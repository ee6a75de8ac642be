"""`make serve`'s script as `make serve` runs it: gunicorn (ASGI), a worker and the sweeper on embedded defaults
(no DATABASE_URL, no REDIS_URL, no DJANGO_SETTINGS_MODULE: SQLite and the file broker in a fresh VAR_DIR)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from diffusion_api.processes import wait_healthy
from tests.e2e.conftest import session_for
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def served(tmp_path, tiny_model_dir):
    unset = {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "MODELS", "SECRET_KEY"}
    env = {k: v for k, v in os.environ.items() if k not in unset}
    port = free_port()
    env.update(VAR_DIR=str(tmp_path / "var"), PORT=str(port), MODELS=f"tiny={tiny_model_dir}", GENERATOR_DEVICE="cpu")
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [sys.executable, "scripts/serve.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, timeout=180)
        yield {"base": base, "env": env, "process": serve, "log": tmp_path / "serve.log"}
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)  # serve.py stops its three processes on the way out
            serve.wait(timeout=60)
        log.close()


def test_serve_runs_gunicorn_a_worker_and_the_sweeper_on_embedded_defaults(served, tmp_path):
    base, env = served["base"], served["env"]
    health = requests.get(f"{base}/api/v1/health/", timeout=10).json()
    assert health["status"] == "ok" and health["broker"]["transport"] != "redis", health
    assert (tmp_path / "var" / "db.sqlite3").is_file() and (tmp_path / "var" / "broker" / "queue").is_dir()

    token = subprocess.run(
        [sys.executable, "manage.py", "issue_token", "serve-user"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    alice = session_for(token)
    response = alice.post(f"{base}/api/v1/jobs/", json={"prompt": "a red circle", "steps": 2}, timeout=30)
    assert response.status_code == 202, response.text
    deadline = time.monotonic() + 180
    job = response.json()
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.3)
        job = alice.get(job["url"], timeout=10).json()
    assert job["status"] == "succeeded", job
    assert alice.get(job["images"][0]["url"], timeout=10).headers["Content-Type"] == "image/png"

    # gunicorn with uvicorn's ASGI workers, not runserver, and its static files (whitenoise): the admin's login page
    # and stylesheet.
    assert requests.get(f"{base}/api/v1/health/", timeout=10).headers.get("Server") == "uvicorn"
    assert "Using worker: uvicorn_worker.UvicornWorker" in served["log"].read_text()
    login = requests.get(f"{base}/admin/login/", timeout=10)
    assert login.status_code == 200 and "/static/admin/css/" in login.text
    css = requests.get(f"{base}/static/admin/css/base.css", timeout=10)
    assert css.status_code == 200 and css.headers["Content-Type"].startswith("text/css")
    docs = requests.get(f"{base}/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js", timeout=10)
    assert docs.status_code == 200

    serve = served["process"]
    serve.send_signal(signal.SIGTERM)
    assert serve.wait(timeout=60) == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{base}/api/v1/health/", timeout=5)
