"""Helpers shared by the tests that run real processes against real PostgreSQL and Redis."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlparse, urlunparse

import psycopg
import pytest


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
