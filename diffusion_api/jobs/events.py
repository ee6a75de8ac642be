"""A job's live events: what the worker and the services publish, and what a waiting or streaming client awaits.

With Redis (REDIS_URL), events travel by pub/sub on one channel per job: the worker publishes progress (throttled)
and previews, the services publish each status change once its transaction commits. Every API process holds one
subscriber connection (`_Hub`) and fans messages out to its waiting coroutines, so a thousand watchers cost one
Redis connection per process and no database reads beyond one snapshot when each connects (and one per status
change). Polling the job stays the source of truth: a follower starts from a database snapshot, and reads one again
whenever the subscriber connection was lost, so a missed message costs freshness, never the end of a job.

On embedded defaults (no Redis) followers poll the database instead (every POLL_SECONDS), and there are no
previews.

Publishing is best effort: a Redis outage never fails a job or a request; it pauses events for a few seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from uuid import UUID

import redis
import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction

from diffusion_api.jobs import selectors
from diffusion_api.jobs.models import TERMINAL_STATUSES, Job, JobStatus

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5  # embedded defaults: how often a follower reads the job
QUEUE_POSITION_SECONDS = 2.0  # how often a follower of a queued job reads its queue position again
SILENCE_SECONDS = 10.0  # a follower of a running job that hears nothing this long reads the job (a lost message)
PREVIEWS_WANTED_SECONDS = 30  # a follower asking for previews renews its wish this often (the key's lifetime)
PREVIEW_KEEP_SECONDS = 600  # the latest preview stays readable (A1111's progress route) this long
PAUSE_AFTER_FAILURE = 5.0  # seconds without publishing after Redis failed, so steps never wait on a dead server


def _channel(job_id) -> str:
    return f"job-events:{job_id}"


def _preview_key(job_id) -> str:
    return f"job-preview:{job_id}"


def _wanted_key(job_id) -> str:
    return f"job-previews-wanted:{job_id}"


@dataclass
class Event:
    """One server-sent event. `type`: snapshot, queued, progress, preview or end (then the stream stops)."""

    type: str
    id: str
    data: dict = field(default_factory=dict)


# -- Publishing (sync: the worker and the services) --------------------------------------------------------------

_client: redis.Redis | None = None
_paused_until = 0.0


def _redis() -> redis.Redis | None:
    global _client
    if not settings.REDIS_URL or time.monotonic() < _paused_until:
        return None
    if _client is None:
        _client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    return _client


def _best_effort(action) -> object:
    global _paused_until
    client = _redis()
    if client is None:
        return None
    try:
        return action(client)
    except redis.RedisError as error:
        _paused_until = time.monotonic() + PAUSE_AFTER_FAILURE
        logger.warning("job events paused for %ss: %s", PAUSE_AFTER_FAILURE, error)
        return None


def publish(job_id: UUID, message: dict) -> None:
    _best_effort(lambda client: client.publish(_channel(job_id), json.dumps(message)))


def publish_progress(job_id: UUID, *, attempt: int, step: int, total: int, eta_seconds: float | None) -> None:
    # `at`: the worker's clock (Unix seconds) when the step ended; a follower on a synchronised clock sees its delay.
    message = {"type": "progress", "attempt": attempt, "step": step, "total": total, "eta_seconds": eta_seconds}
    publish(job_id, {**message, "at": round(time.time(), 4)})


def announce(job_id: UUID) -> None:
    """Tell followers that the job's status changed, once the current transaction (if any) commits."""
    transaction.on_commit(lambda: publish(job_id, {"type": "status"}))


def previews_wanted(job_ids: list[UUID]) -> set[UUID]:
    """The jobs among `job_ids` that someone follows with previews (or whose latest preview a route reads)."""
    if not job_ids:
        return set()
    found = _best_effort(lambda client: client.mget([_wanted_key(job_id) for job_id in job_ids])) or []
    return {job_id for job_id, value in zip(job_ids, found, strict=False) if value is not None}


def want_previews(job_id: UUID) -> None:
    _best_effort(lambda client: client.set(_wanted_key(job_id), b"1", ex=PREVIEWS_WANTED_SECONDS))


def publish_preview(job_id: UUID, *, attempt: int, step: int, total: int, png: bytes) -> None:
    import base64

    def send(client) -> None:
        with client.pipeline(transaction=False) as pipe:
            pipe.set(_preview_key(job_id), png, ex=PREVIEW_KEEP_SECONDS)
            message = {"type": "preview", "attempt": attempt, "step": step, "total": total}
            pipe.publish(_channel(job_id), json.dumps({**message, "png_base64": base64.b64encode(png).decode()}))
            pipe.execute()

    _best_effort(send)


def latest_preview(job_id: UUID) -> bytes | None:
    """The PNG of the job's latest preview, if the worker made one (only with Redis); asks for the next ones."""
    want_previews(job_id)
    return _best_effort(lambda client: client.get(_preview_key(job_id)))


# -- Following (async: the API's waiting and streaming routes) ---------------------------------------------------

_RESYNC = object()  # put in every queue after the subscriber reconnected: messages may have been missed


class _Hub:
    """One Redis subscriber per event loop, fanning each job's messages out to that job's local followers."""

    def __init__(self) -> None:
        self.queues: dict[str, set[asyncio.Queue]] = {}
        self.client = aioredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2)
        self.pubsub = self.client.pubsub()
        self.ready = asyncio.Event()
        # One (un)subscribe at a time: redis-py's PubSub opens its connection on the first command, and two first
        # commands at once each opened one, so a channel subscribed on the dropped one never heard a message (500
        # followers arriving together lost most jobs' events; benchmarks/bench_service.py --streams found it).
        self.lock = asyncio.Lock()
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def add(self, job_id) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(maxsize=256)
        channel = _channel(job_id)
        first = channel not in self.queues
        self.queues.setdefault(channel, set()).add(queue)
        if first:
            async with self.lock:
                try:
                    if channel in self.queues:  # still followed once the lock came round
                        await self.pubsub.subscribe(channel)
                except (redis.RedisError, OSError):
                    pass  # the reader reconnects, subscribes every channel again and tells each queue to resync
        self.ready.set()
        return queue

    async def remove(self, job_id, queue: asyncio.Queue) -> None:
        channel = _channel(job_id)
        followers = self.queues.get(channel, set())
        followers.discard(queue)
        if not followers:
            self.queues.pop(channel, None)
            async with self.lock:
                try:
                    if channel not in self.queues:  # not followed again meanwhile
                        await self.pubsub.unsubscribe(channel)
                except (redis.RedisError, OSError):
                    pass

    async def _read(self) -> None:
        while True:
            try:
                await self.ready.wait()  # pubsub cannot listen before its first subscribe
                async for message in self.pubsub.listen():
                    if message["type"] == "message":
                        self._deliver(message["channel"].decode(), json.loads(message["data"]))
                if not self.pubsub.subscribed:  # listen() ends when the last follower left: wait for the next
                    self.ready.clear()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the connection broke: reconnect, resubscribe, resync everyone
                logger.warning("job events subscriber lost Redis (%s); reconnecting", error)
                await asyncio.sleep(1)
                try:
                    async with self.lock:
                        await self.pubsub.reset()
                        if self.queues:
                            await self.pubsub.subscribe(*self.queues)
                except (redis.RedisError, OSError):
                    continue
                for followers in self.queues.values():
                    for queue in followers:
                        _offer(queue, _RESYNC)

    def _deliver(self, channel: str, message: dict) -> None:
        for queue in self.queues.get(channel, ()):
            _offer(queue, message)


def _offer(queue: asyncio.Queue, item) -> None:
    """A slow follower loses old progress rather than holding memory: it resyncs from the database instead."""
    if queue.full():
        while not queue.empty():
            queue.get_nowait()
        item = _RESYNC
    queue.put_nowait(item)


_hubs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _hub() -> _Hub:
    loop = asyncio.get_running_loop()
    if loop not in _hubs:
        _hubs[loop] = _Hub()
    return _hubs[loop]


@sync_to_async
def _snapshot(job_id: UUID) -> dict | None:
    job = Job.objects.filter(id=job_id).only("status", "progress_step", "progress_total", "attempts").first()
    if job is None:
        return None
    return {
        "status": job.status,
        "attempt": job.attempts,
        "step": job.progress_step,
        "total": job.progress_total,
        "percent": job.percent,
        "queue_position": selectors.job_queue_position(job=job) if job.status == JobStatus.QUEUED else None,
    }


def _snapshot_event(state: dict) -> Event:
    kind = "end" if state["status"] in TERMINAL_STATUSES else "snapshot"
    return Event(kind, _event_id(state["attempt"], state["step"], state["status"]), state)


def _event_id(attempt: int, step: int, status: str) -> str:
    return f"{attempt}.{step}.{status}"


async def follow(job_id: UUID, *, previews: bool = False, last_event_id: str | None = None) -> AsyncIterator[Event]:
    """A job's events until it ends: a snapshot (skipped when `last_event_id` says the client has it), queue
    position while queued, progress (step, total, percent, ETA), previews if asked (data["png_base64"]), and a
    last `end` event. The caller has checked that the job is the user's."""
    if not settings.REDIS_URL:
        async for event in _follow_by_polling(job_id, last_event_id):
            yield event
        return
    hub = _hub()
    queue = await hub.add(job_id)
    try:
        state = await _snapshot(job_id)
        if state is None:
            return
        event = _snapshot_event(state)
        if event.id != last_event_id or event.type == "end":
            yield event
        if event.type == "end":
            return
        if previews:
            await sync_to_async(want_previews)(job_id)
        renewed = asyncio.get_running_loop().time()
        while True:
            queued = state["status"] == JobStatus.QUEUED
            try:
                message = await asyncio.wait_for(queue.get(), QUEUE_POSITION_SECONDS if queued else SILENCE_SECONDS)
            except TimeoutError:
                message = _RESYNC  # queued: its position may have moved; running: a message may have been lost
            if previews and asyncio.get_running_loop().time() - renewed > PREVIEWS_WANTED_SECONDS / 2:
                await sync_to_async(want_previews)(job_id)
                renewed = asyncio.get_running_loop().time()
            if message is _RESYNC or message["type"] == "status":
                fresh = await _snapshot(job_id)
                if fresh is None:
                    return
                event = _snapshot_event(fresh)
                changed = (fresh["status"], fresh["step"], fresh["queue_position"]) != (
                    state["status"], state["step"], state["queue_position"],
                )
                state = fresh
                if event.type == "end":
                    yield event
                    return
                if changed:
                    yield Event("queued" if fresh["status"] == JobStatus.QUEUED else "progress", event.id, fresh)
            elif message["type"] == "progress":
                state = {**state, "status": JobStatus.RUNNING, "step": message["step"], "total": message["total"]}
                data = {
                    "status": JobStatus.RUNNING,
                    "attempt": message["attempt"],
                    "step": message["step"],
                    "total": message["total"],
                    "percent": round(100.0 * message["step"] / message["total"], 1) if message["total"] else 0.0,
                    "eta_seconds": message["eta_seconds"],
                    "at": message.get("at"),
                }
                yield Event("progress", _event_id(message["attempt"], message["step"], "running"), data)
            elif message["type"] == "preview" and previews:
                yield Event("preview", _event_id(message["attempt"], message["step"], "preview"), message)
    finally:
        await hub.remove(job_id, queue)


async def _follow_by_polling(job_id: UUID, last_event_id: str | None) -> AsyncIterator[Event]:
    state = None
    while True:
        fresh = await _snapshot(job_id)
        if fresh is None:
            return
        event = _snapshot_event(fresh)
        if state is None:
            if event.id != last_event_id or event.type == "end":
                yield event
        elif event.type == "end":
            yield event
        elif (fresh["status"], fresh["step"], fresh["queue_position"]) != (
            state["status"], state["step"], state["queue_position"]
        ):
            yield Event("queued" if fresh["status"] == JobStatus.QUEUED else "progress", event.id, fresh)
        if event.type == "end":
            return
        state = fresh
        await asyncio.sleep(POLL_SECONDS)


async def wait_for_end(job_id: UUID, timeout: float) -> bool:
    """True once the job has ended (succeeded, failed or canceled), False if `timeout` seconds pass first."""

    async def until_end() -> None:
        async for event in follow(job_id):
            if event.type == "end":
                return

    try:
        await asyncio.wait_for(until_end(), timeout)
    except TimeoutError:
        return False
    return True
