"""Start the API, a worker and the sweeper as child processes (demo.py, serve.py, the e2e and fault tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]


def start_api(
    port: int, env: dict | None = None, log: Path | None = None, gunicorn: bool = False, server: str = "asgi"
) -> subprocess.Popen:
    """The API: Django's development server, or gunicorn as deployed (`server`: "asgi", uvicorn workers, the
    default; "wsgi", gunicorn's sync workers, kept for comparing the two in benchmarks/bench_service.py)."""
    if gunicorn:
        app = ["diffusion_api.asgi:application", "--worker-class", "uvicorn_worker.UvicornWorker"]
        if server == "wsgi":
            app = ["diffusion_api.wsgi:application"]
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            *app,
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--access-logfile",
            "-",
        ]
    else:
        command = [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"]
    return _start(command, env, log)


def start_worker(
    env: dict | None = None, log: Path | None = None, name: str = "worker", app: str = "diffusion_api"
) -> subprocess.Popen:
    """One Celery worker on the jobs and webhooks queues; `app`: the module holding the Celery app (-A)."""
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "-c",
        "1",
        "-n",
        f"{name}@%h",
        "--loglevel",
        "INFO",
        "-Q",
        "jobs,webhooks",
    ]
    return _start(command, env, log)


def start_sweeper(env: dict | None = None, log: Path | None = None, interval: float | None = None) -> subprocess.Popen:
    """The periodic sweeper (`manage.py sweep`); without `interval` it sweeps every SWEEP_INTERVAL seconds."""
    command = [sys.executable, "manage.py", "sweep"]
    if interval is not None:
        command += ["--interval", str(interval)]
    return _start(command, env, log)


def _start(command: list[str], env: dict | None, log: Path | None) -> subprocess.Popen:
    output = None  # no log file: share this terminal
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        output = log.open("ab")
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=output,
        stderr=subprocess.STDOUT if log is not None else None,
        start_new_session=True,
    )


def wait_healthy(base_url: str, timeout: float = 180.0, need_worker: bool = True) -> dict:
    """Poll /api/v1/health/ until the database, the broker and (optionally) a worker answer."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = requests.get(f"{base_url}/api/v1/health/", timeout=5).json()
            if last["database"]["ok"] and last["broker"]["ok"] and (last["workers"]["ok"] or not need_worker):
                return last
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the service did not become healthy within {timeout:.0f}s; last health: {last}")


def stop(*processes: subprocess.Popen) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, 15)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
