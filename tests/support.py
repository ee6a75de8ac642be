"""Helpers shared by the tests that run real processes against real PostgreSQL, Redis and a local S3 server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import psycopg
import pytest
import requests


def required_env(name: str) -> str:
    """These tests fail, never skip, without their servers: make test sets DATABASE_URL and REDIS_URL."""
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"this test needs {name} (make test sets it; tests that need servers are not skipped)")
    return value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def fresh_database(prefix: str, before_drop: Callable[[str], None] | None = None) -> Iterator[str]:
    """A new database on DATABASE_URL's server, as a URL; dropped afterwards."""
    admin_url = required_env("DATABASE_URL")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunparse(urlparse(admin_url)._replace(path=f"/{name}"))
    finally:
        if before_drop is not None:
            before_drop(admin_url)
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- A local S3-protocol server: moto's standalone server (requirements-dev.txt), started by the tests themselves
# as they need it, like the service's own processes; nothing for .ci/run to start. It keeps objects in memory.
S3_ACCESS_KEY = S3_SECRET_KEY = "testing"  # moto takes any key and does not check signatures


class S3Server:
    """A running moto S3 server: its endpoint URL, and a way to make it hang (every request times out) and resume."""

    def __init__(self, endpoint: str, process: subprocess.Popen):
        self.endpoint, self.process = endpoint, process

    def hang(self) -> None:
        os.killpg(self.process.pid, signal.SIGSTOP)  # connections still open (the kernel accepts), nothing answers

    def resume(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)


@contextmanager
def s3_server(log: Path) -> Iterator[S3Server]:
    """moto's S3 server on a free port; stopped afterwards."""
    port = free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = S3Server(f"http://127.0.0.1:{port}", process)
    try:
        deadline = time.monotonic() + 60
        while not _answers(server.endpoint):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto's S3 server did not start; see {log}")
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            server.resume()  # a test may have left it hanging
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)


def _answers(endpoint: str) -> bool:
    try:
        return requests.get(f"{endpoint}/moto-api/", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def new_bucket(endpoint: str, prefix: str = "images") -> str:
    """A new, empty bucket on the S3 server at `endpoint`: its name."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


def s3_client(endpoint: str):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
    )


def s3_environment(endpoint: str, bucket: str) -> dict[str, str]:
    """The settings' environment variables for a service whose default storage is `bucket` on `endpoint`."""
    return {
        "AWS_STORAGE_BUCKET_NAME": bucket,
        "AWS_S3_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
    }
