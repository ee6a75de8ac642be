"""Deployment tests: real PostgreSQL and Redis (missing DATABASE_URL/REDIS_URL fail these tests, never skip them)
and real processes started from the commands the deployment files name."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import redis

from diffusion_api.processes import stop
from tests import support
from tests.support import required_env

ROOT = Path(__file__).resolve().parents[2]
LOGS = ROOT / "test-output" / "deploy"


@pytest.fixture(scope="module")
def fresh_database():
    """A new PostgreSQL database on DATABASE_URL's server for one test module, dropped afterwards."""
    with support.fresh_database("deploy") as url:
        yield url


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
