"""A job's live events: what the worker publishes, and what a waiting or streaming client awaits.

PROVISIONAL first version (database polling only); the Redis pub/sub version keeps these signatures.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from uuid import UUID

from asgiref.sync import sync_to_async

from diffusion_api.jobs.models import TERMINAL_STATUSES, Job

POLL_SECONDS = 0.25


@dataclass
class Event:
    """One server-sent event. `type`: snapshot, queued, progress, preview or end; `id` orders a job's events."""

    type: str
    id: str
    data: dict = field(default_factory=dict)


@sync_to_async
def _state(job_id: UUID) -> dict | None:
    return Job.objects.filter(id=job_id).values("status", "progress_step", "progress_total").first()


async def wait_for_end(job_id: UUID, timeout: float) -> bool:
    """True once the job has ended (succeeded, failed or canceled), False if `timeout` seconds pass first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        state = await _state(job_id)
        if state is None or state["status"] in TERMINAL_STATUSES:
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(min(POLL_SECONDS, max(deadline - loop.time(), 0)))


async def follow(job_id: UUID, *, previews: bool = False, last_event_id: str | None = None) -> AsyncIterator[Event]:
    """A job's events until it ends: progress as it changes, previews if asked (PNG base64 in data["png_base64"]),
    and a last `end` event. The caller has checked that the job is the user's."""
    last = None
    while True:
        state = await _state(job_id)
        if state is None:
            return
        key = (state["status"], state["progress_step"])
        if key != last:
            last = key
            kind = "end" if state["status"] in TERMINAL_STATUSES else "progress"
            yield Event(kind, f"{state['status']}-{state['progress_step']}", dict(state))
            if kind == "end":
                return
        await asyncio.sleep(POLL_SECONDS)


def latest_preview(job_id: UUID) -> bytes | None:
    """The PNG of the job's latest preview, if the worker made one (only with Redis)."""
    return None
