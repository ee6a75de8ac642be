"""Job status reads without the Django stack when nothing has changed since the last answer.

A client polling `GET /api/v1/jobs/{id}/` mostly asks again about a job whose row has not changed. Profiled under
load (BENCHMARKS.md, "Where a status read's time went"), each read cost three queries through the ORM (token, job,
images), DRF's request and serializers, and the middleware chain. This module answers such a read with one query
and a copy of the answer Django gave last time:

* The query authenticates and authorises as the API does (the token's digest, an active user, the job's owner or
  staff) and returns an MD5 of the job's row and of its images' rows, computed by PostgreSQL. It runs on every read:
  a revoked token or a changed job is seen at once.
* The answer Django gave is kept per (job, user, row digest, queue position, host, scheme, Accept). Every field of
  the status is a function of those: it has no clock in it. Two exceptions are handled apart: presigned image links
  (S3) expire, so an answer is given again for at most half their life (and a minute); and an image the store could
  not read, or that expired, is null in `png_base64`, so such an answer is not kept.
* The queue position is the fair order's (selectors.jobs_queued_fairly), read for the whole queue at most every
  QUEUE_ORDER_SECONDS per process, so a position shown can lag the queue by that long.
* Anything else (no entry yet, another route, a query string, a body, an error) goes to Django, whose 200 answers
  are kept for next time. Django alone decides every error and every new answer.

Only with PostgreSQL (the digest is computed by the database); with SQLite every read goes to Django.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict

import psycopg
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection

from diffusion_api.accounts.models import ApiToken
from diffusion_api.jobs import selectors
from diffusion_api.jobs.models import Job, JobImage

logger = logging.getLogger(__name__)

DETAIL_PATH = re.compile(r"/api/v1/jobs/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})/")
KEYWORD = b"token"  # as HashedTokenAuthentication reads it (any case); the native API takes no Bearer
QUEUE_ORDER_SECONDS = 0.5
ENTRY_SECONDS = 60.0  # an answer is kept at most this long, whatever happens to the job


class StatusReads:
    """The answers kept, least recently used first out when over `max_bytes`, and the one connection that checks
    them (asyncio: one query at a time per process, each a fraction of a millisecond)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        # An answer may carry presigned image links (S3): it is given again only while they have most of their life.
        self.entry_seconds = min(ENTRY_SECONDS, settings.IMAGE_URL_EXPIRES_SECONDS / 2)
        self.entries: OrderedDict[tuple, tuple[float, list, bytes]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._connection: psycopg.AsyncConnection | None = None
        self._connecting = asyncio.Lock()
        self._order: dict[str, int] = {}
        self._order_read_at = -1.0
        self._check_sql = _check_sql()
        order = selectors.jobs_queued_fairly().values_list("id", flat=True)
        self._order_sql, self._order_params = order.query.sql_with_params()

    async def __call__(self, scope, receive, send, django) -> None:
        """Answer the request from a kept answer, or let `django` answer it (and keep a 200)."""
        key = await self._key(scope)
        if key is not None:
            entry = self.entries.get(key)
            if entry is not None and time.monotonic() - entry[0] < self.entry_seconds:
                self.entries.move_to_end(key)
                self.hits += 1
                await send({"type": "http.response.start", "status": 200, "headers": entry[1]})
                await send({"type": "http.response.body", "body": entry[2]})
                return
        self.misses += 1
        await django(scope, receive, self._keeping(send, key) if key is not None else send)

    async def _key(self, scope) -> tuple | None:
        if scope["method"] != "GET" or scope.get("query_string") or scope["path"] == "":
            return None
        found = DETAIL_PATH.fullmatch(scope["path"])
        if found is None:
            return None
        headers = dict(scope["headers"])
        if len(headers) != len(scope["headers"]):
            return None  # a repeated header: Django joins the copies (a repeated Authorization is a 401 there)
        if headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers:
            return None
        keyword, _, token = headers.get(b"authorization", b"").partition(b" ")
        if keyword.lower() != KEYWORD or not token or b" " in token:
            return None
        job_id = found.group(1)
        try:
            row = await self._check(job_id, token.decode("latin-1"))
        except (psycopg.Error, OSError) as error:  # Django answers, and says what is wrong if it is wrong there too
            logger.warning("status read check failed, asking Django: %s", error)
            await self._drop_connection()
            return None
        if row is None:
            return None
        digest, user_id, status = row
        position = (await self._queue_order()).get(job_id) if status == "queued" else None
        return (
            job_id,
            user_id,
            digest,
            status,
            position,
            headers.get(b"host"),
            scope.get("scheme"),
            headers.get(b"x-forwarded-proto"),
            headers.get(b"accept"),
        )

    def _keeping(self, send, key: tuple):
        """`send`, also keeping a 200 answer (one without cookies) under `key`."""
        started: dict = {}
        chunks: list[bytes] = []

        async def keeping_send(message) -> None:
            if message["type"] == "http.response.start":
                started.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body") and started.get("status") == 200:
                    self._keep(key, started["headers"], b"".join(chunks))
            await send(message)

        return keeping_send

    def _keep(self, key: tuple, headers, body: bytes) -> None:
        headers = [(bytes(name), bytes(value)) for name, value in headers]
        if any(name.lower() == b"set-cookie" for name, _ in headers) or len(body) > self.max_bytes:
            return
        if b'"png_base64":null' in body:
            return  # expired, or the store did not answer: the bytes may come back without any row changing
        if key[3] == "queued":
            # Kept under the position Django showed: it read the queue later than our copy of the order was.
            key = (*key[:4], json.loads(body).get("queue_position"), *key[5:])
        old = self.entries.pop(key, None)
        if old is not None:
            self.bytes -= len(old[2])
        self.entries[key] = (time.monotonic(), headers, body)
        self.bytes += len(body)
        while self.bytes > self.max_bytes:
            _, (_, _, dropped) = self.entries.popitem(last=False)
            self.bytes -= len(dropped)

    async def _db(self) -> psycopg.AsyncConnection:
        async with self._connecting:
            if self._connection is None or self._connection.closed:
                params = connection.get_connection_params()
                params.pop("cursor_factory", None)
                params.pop("context", None)
                self._connection = await psycopg.AsyncConnection.connect(**params, autocommit=True)
        return self._connection

    async def close(self) -> None:
        await self._drop_connection()

    async def _drop_connection(self) -> None:
        if self._connection is not None:
            await self._connection.close()
        self._connection = None

    async def _check(self, job_id: str, token: str):
        digest = hashlib.sha256(token.encode()).hexdigest()
        db = await self._db()
        cursor = await db.execute(self._check_sql, (job_id, digest))
        return await cursor.fetchone()

    async def _queue_order(self) -> dict[str, int]:
        if time.monotonic() - self._order_read_at > QUEUE_ORDER_SECONDS:
            db = await self._db()
            cursor = await db.execute(self._order_sql, self._order_params)
            self._order = {str(job_id): n for n, (job_id,) in enumerate(await cursor.fetchall(), start=1)}
            self._order_read_at = time.monotonic()
        return self._order


def _check_sql() -> str:
    """One row (digest of the job's and its images' rows, user id, status) when the token may read the job."""
    user = get_user_model()._meta.db_table
    token, job, image = ApiToken._meta.db_table, Job._meta.db_table, JobImage._meta.db_table
    # The images' digest leaves out the PNG bytes themselves: they are written once, with the row.
    image_columns = ", ".join(
        f"i.{field.column}" for field in JobImage._meta.concrete_fields if field.get_internal_type() != "BinaryField"
    )
    return (
        f"SELECT md5(j::text || coalesce((SELECT string_agg(row({image_columns})::text, ',' ORDER BY i.id) "
        f"FROM {image} i WHERE i.job_id = j.id), '')), u.id, j.status "
        f"FROM {token} t JOIN {user} u ON u.id = t.user_id "
        f"JOIN {job} j ON j.id = %s AND (j.owner_id = u.id OR u.is_staff) "
        f"WHERE t.digest = %s AND u.is_active"
    )


def status_reads() -> StatusReads | None:
    """The process's kept answers, or None where they cannot work (not PostgreSQL) or are turned off."""
    if connection.vendor != "postgresql" or settings.STATUS_READ_CACHE_MB <= 0:
        return None
    return StatusReads(max_bytes=settings.STATUS_READ_CACHE_MB * 1024 * 1024)
