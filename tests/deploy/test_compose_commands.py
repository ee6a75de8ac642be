"""Run docker-compose.yml's own commands as local processes and put a job through them over HTTP.

Docker cannot run here, so this takes from the compose file each service's `entrypoint` + `command` (the exact
argv) and environment (the image's ENV, then `.env.example` as the env file, then the service's `environment`,
interpolated as compose does) and changes only what differs between a container and this machine:
- hosts: `postgres` and `redis` (service names) → the test's PostgreSQL and Redis at 127.0.0.1, with a fresh
  database for this module and REDIS_URL's (flushed) database; `minio` → the test's local S3 server (moto), with a
  fresh bucket, which image links are signed for too; the API's bind 0.0.0.0:8000 → 127.0.0.1:<free>;
- container paths: /app/var → a temporary folder, /opt/venv/bin → this venv, MODELS → the 32×32 tiny model;
- the GPU: GENERATOR_DEVICE=cuda → cpu and its GENERATOR_DTYPE=fp16 → fp32 (no GPU on the test machines, and the
  worker refuses fp16 on a CPU without AVX-512 FP16);
- WEBHOOK_ALLOW_PRIVATE → true: the test's webhook receiver is on loopback, which production refuses;
- the secrets .env.example leaves blank on purpose (SECRET_KEY, POSTGRES_PASSWORD, MINIO_ROOT_PASSWORD) → test
  values (moto takes any key).
Everything else is the deployment's: production settings, SECURE_SSL_REDIRECT=true, ALLOWED_HOSTS, limits,
gunicorn's flags, the worker's queue and concurrency, the sweeper, the image's and compose's healthchecks.
Requests carry `X-Forwarded-Proto: https`, as the TLS-terminating proxy in front of the API would set it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests
from PIL import Image

from diffusion_api.processes import wait_healthy
from tests.deploy.conftest import ROOT, Processes
from tests.deploy.deployfiles import (
    ENV_EXAMPLE,
    as_argv,
    load_compose,
    read_dockerfile,
    read_env_file,
    service_environment,
)
from tests.support import free_port, new_bucket

VENV_BIN = str(Path(sys.executable).parent)
CONTAINER_BIND = "0.0.0.0:8000"
BEHIND_TLS_PROXY = {"X-Forwarded-Proto": "https"}


def compose_variables() -> dict[str, str]:
    """What compose would read from .env, made from .env.example with its blank secrets filled in."""
    variables = read_env_file(ENV_EXAMPLE)
    blank = ("SECRET_KEY", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD")
    assert all(variables[name] == "" for name in blank), "the example ships no secrets"
    return {
        **variables,
        "SECRET_KEY": secrets.token_urlsafe(50),
        "POSTGRES_PASSWORD": secrets.token_urlsafe(16),
        "MINIO_ROOT_PASSWORD": secrets.token_urlsafe(16),
    }


def local_environment(
    container_env: dict[str, str],
    *,
    database_url: str,
    redis_url: str,
    s3_endpoint: str,
    bucket: str,
    var_dir: Path,
    tiny_model_dir: Path,
) -> dict[str, str]:
    """A container's environment, changed only where this machine differs (see the module docstring)."""
    compose_db, compose_redis = urlparse(container_env["DATABASE_URL"]), urlparse(container_env["REDIS_URL"])
    assert compose_db.hostname == "postgres" and compose_redis.hostname == "redis", (compose_db, compose_redis)
    assert urlparse(container_env["AWS_S3_ENDPOINT_URL"]).hostname == "minio", container_env["AWS_S3_ENDPOINT_URL"]
    env = {key: value.replace("/app/var", str(var_dir)) for key, value in container_env.items()}
    env["DATABASE_URL"] = database_url
    env["REDIS_URL"] = redis_url
    env["AWS_S3_ENDPOINT_URL"] = env["AWS_S3_PUBLIC_ENDPOINT_URL"] = s3_endpoint
    env["AWS_STORAGE_BUCKET_NAME"] = bucket
    env["MODELS"] = f"tiny={tiny_model_dir}"
    env["PATH"] = env["PATH"].replace("/opt/venv/bin", VENV_BIN).replace("$PATH", os.environ["PATH"])
    if env.get("GENERATOR_DEVICE") == "cuda":
        env["GENERATOR_DEVICE"] = "cpu"
        if env.get("GENERATOR_DTYPE") == "fp16":
            env["GENERATOR_DTYPE"] = "fp32"
    env["WEBHOOK_ALLOW_PRIVATE"] = "true"
    # The host's own variables a container does not have but a local process needs (HOME, locale, BLAS tuning).
    return {
        **{
            k: v
            for k, v in os.environ.items()
            if k in {"HOME", "LANG", "LC_ALL", "TMPDIR", "USER"} or k.startswith("OPENBLAS_")
        },
        **env,
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir, fresh_database, flushed_redis, s3_endpoint):
    variables = compose_variables()
    bucket = new_bucket(s3_endpoint)  # what minio-setup makes in compose
    compose = load_compose(variables)
    image_env = read_dockerfile()[-1].environment()
    var_dir = tmp_path_factory.mktemp("compose-var")
    port = free_port()

    def env_of(name: str) -> dict[str, str]:
        container_env = {**image_env, **service_environment(compose["services"][name], variables)}
        return local_environment(
            container_env,
            database_url=fresh_database,
            redis_url=flushed_redis,
            s3_endpoint=s3_endpoint,
            bucket=bucket,
            var_dir=var_dir,
            tiny_model_dir=tiny_model_dir,
        )

    def argv_of(name: str) -> list[str]:
        service = compose["services"][name]
        argv = as_argv(service.get("entrypoint")) + as_argv(service["command"])
        return [f"127.0.0.1:{port}" if arg == CONTAINER_BIND else arg for arg in argv]

    migrate = subprocess.run(argv_of("migrate"), cwd=ROOT, env=env_of("migrate"), capture_output=True, text=True)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr

    processes = Processes("compose")
    for name in ("api", "worker", "webhooks", "sweeper"):
        processes.start(name, argv_of(name), env_of(name))
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_healthy(base, timeout=120)
        except TimeoutError as error:
            pytest.fail(f"{error}\n{processes.tails()}")
        yield {
            "base": base,
            "port": port,
            "env_of": env_of,
            "argv_of": argv_of,
            "compose": compose,
            "processes": processes,
        }
    finally:
        processes.stop_all()


def manage(stack, *args: str) -> subprocess.CompletedProcess:
    """`docker compose exec api python manage.py …`, here."""
    return subprocess.run(
        ["python", "manage.py", *args], cwd=ROOT, env=stack["env_of"]("api"), capture_output=True, text=True
    )


def test_the_services_run_from_the_compose_commands(stack):
    argv = {name: stack["argv_of"](name) for name in ("api", "worker", "webhooks", "sweeper", "migrate")}
    assert argv["api"][:2] == ["gunicorn", "diffusion_api.asgi:application"]
    assert argv["worker"][:4] == argv["webhooks"][:4] == ["celery", "-A", "diffusion_api", "worker"]
    assert argv["sweeper"] == ["python", "manage.py", "sweep"]
    assert all(process.poll() is None for process in stack["processes"].running.values()), stack["processes"].tails()
    assert stack["env_of"]("api")["DJANGO_SETTINGS_MODULE"] == "diffusion_api.settings.production"


def test_a_job_runs_through_the_compose_services(stack):
    base = stack["base"]
    token = manage(stack, "issue_token", "deployer")
    assert token.returncode == 0, token.stderr
    session = requests.Session()
    session.headers.update({"Authorization": f"Token {token.stdout.strip()}", **BEHIND_TLS_PROXY})

    created = session.post(
        f"{base}/api/v1/jobs/",
        json={"prompt": "a red circle", "width": 32, "height": 32, "steps": 4, "seed": 7},
        timeout=10,
    )
    assert created.status_code == 202, created.text
    job_url = f"{base}/api/v1/jobs/{created.json()['id']}/"
    deadline = time.monotonic() + 90
    while (job := session.get(job_url, timeout=10).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"job still {job['status']}\n{stack['processes'].tails()}"
        time.sleep(0.25)
    assert job["status"] == "succeeded", f"{job}\n{stack['processes'].tails()}"
    assert job["parameters"]["seed"] == 7 and job["progress"]["percent"] == 100.0

    png = session.get(f"{job_url}images/0.png", timeout=10)
    assert png.status_code == 200 and png.headers["Content-Type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n") and png.content == base64.b64decode(
        job["images"][0]["png_base64"]
    )
    assert Image.open(io.BytesIO(png.content)).size == (32, 32)
    # The image is in the store (MinIO in compose), and its url a link presigned for the store's public address.
    env = stack["env_of"]("api")
    link = job["images"][0]["url"]
    assert link.startswith(f"{env['AWS_S3_PUBLIC_ENDPOINT_URL']}/{env['AWS_STORAGE_BUCKET_NAME']}/images/{job['id']}/")
    assert requests.get(link, timeout=10).content == png.content


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that records the POSTs it gets and answers 200."""

    def __init__(self):
        self.requests: list[tuple[dict, bytes]] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_the_webhooks_service_delivers_a_finished_jobs_webhook(stack):
    """The compose topology consumes the webhooks queue: the final state reaches the job's webhook_url, signed."""
    token = manage(stack, "issue_token", "hooked").stdout.strip()
    headers = {"Authorization": f"Token {token}", **BEHIND_TLS_PROXY}
    receiver = WebhookReceiver()
    try:
        body = {"prompt": "a blue square", "width": 32, "height": 32, "steps": 2, "webhook_url": receiver.url}
        created = requests.post(f"{stack['base']}/api/v1/jobs/", json=body, headers=headers, timeout=10)
        assert created.status_code == 202, created.text
        deadline = time.monotonic() + 90
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.25)
        assert receiver.requests, f"no webhook arrived\n{stack['processes'].tails()}"
        headers, payload = receiver.requests[0]
        assert json.loads(payload)["event"] == "job.succeeded"
        assert headers["X-Webhook-Signature"].startswith("sha256=")
        assert "deliver_webhook" in stack["processes"].log("webhooks")  # delivered by the webhooks service
    finally:
        receiver.server.shutdown()


def test_plain_http_is_redirected_to_https_except_health(stack):
    """SECURE_SSL_REDIRECT=true from .env.example is honoured; the health probe still answers over plain HTTP."""
    redirected = requests.get(f"{stack['base']}/api/v1/models/", allow_redirects=False, timeout=10)
    assert redirected.status_code == 301 and redirected.headers["Location"].startswith("https://")
    assert requests.get(f"{stack['base']}/api/v1/health/", allow_redirects=False, timeout=10).status_code == 200


def test_the_image_healthcheck_passes_against_the_api(stack):
    command = read_dockerfile()[-1].all("HEALTHCHECK")[0].exec_form()
    command = [arg.replace("127.0.0.1:8000", f"127.0.0.1:{stack['port']}") for arg in command]
    result = subprocess.run(command, cwd=ROOT, env=stack["env_of"]("api"), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "healthy" in result.stdout, result.stdout + result.stderr


def test_the_image_healthcheck_fails_when_nothing_answers(stack):
    command = read_dockerfile()[-1].all("HEALTHCHECK")[0].exec_form()
    command = [arg.replace("127.0.0.1:8000", f"127.0.0.1:{free_port()}") for arg in command]
    result = subprocess.run(command, cwd=ROOT, env=stack["env_of"]("api"), capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "unhealthy" in result.stdout


@pytest.mark.parametrize("service", ["worker", "webhooks"])
def test_the_compose_worker_healthchecks_ping_the_workers(stack, service):
    test = stack["compose"]["services"][service]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    # Docker sets HOSTNAME to the container's host name, which Celery's `<name>@%h` also uses.
    env = {**stack["env_of"](service), "HOSTNAME": socket.gethostname()}
    result = subprocess.run(["/bin/sh", "-c", test[1]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "pong" in result.stdout, result.stdout + result.stderr


def test_the_sweeper_keeps_sweeping_without_errors(stack):
    sweeper = stack["processes"].running["sweeper"]
    assert sweeper.poll() is None, stack["processes"].tails()
    assert "sweep failed" not in stack["processes"].log("sweeper")


def test_django_security_deploy_checks_pass_with_the_compose_environment(stack):
    """.env.example + compose give a production configuration Django has no security warning about."""
    result = manage(stack, "check", "--deploy", "--tag", "security", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
