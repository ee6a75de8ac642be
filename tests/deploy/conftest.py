"""Deployment tests: real PostgreSQL and Redis (missing DATABASE_URL/REDIS_URL fail these tests, never skip them)
and real processes started from the commands the deployment files name."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import psycopg
import pytest
import redis

from scripts.services import stop

ROOT = Path(__file__).resolve().parents[2]
LOGS = ROOT / "test-output" / "deploy"


def required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"deployment tests need {name} (make test sets it; they are not skipped)")
    return value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def fresh_database():
    """A new PostgreSQL database on DATABASE_URL's server for one test module, dropped afterwards."""
    admin_url = required_env("DATABASE_URL")
    name = f"deploy_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield urlunparse(urlparse(admin_url)._replace(path=f"/{name}"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def flushed_redis() -> str:
    """REDIS_URL's database, emptied: no queued message or throttle counter from an earlier run."""
    url = required_env("REDIS_URL")
    redis.Redis.from_url(url).flushdb()
    return url


class Processes:
    """Long-running child processes, each in its own session with its output in LOGS/<group>/<name>.log."""

    def __init__(self, group: str):
        self.log_dir = LOGS / group
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = (self.log_dir / f"{name}.log").open("wb")
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.running[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def tails(self, lines: int = 40) -> str:
        """The end of every log, for an assertion message."""
        return "\n".join(
            f"--- {name}.log (exit {process.poll()}) ---\n" + "\n".join(self.log(name).splitlines()[-lines:])
            for name, process in self.running.items()
        )

    def stop_all(self) -> None:
        stop(*self.running.values())


@pytest.fixture(scope="session")
def newman() -> Path:
    path = ROOT / "node_modules" / ".bin" / "newman"
    if not path.exists():
        pytest.fail("node_modules/.bin/newman is missing: run `npm ci` (make test does)")
    return path
