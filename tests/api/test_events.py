"""Job events and Prefer: wait without servers (events by database polling), and the Redis path's hub."""

import asyncio
import json
import os

import pytest
from asgiref.sync import async_to_sync, sync_to_async

from diffusion_api.jobs import events, services
from diffusion_api.jobs.models import Job, JobStatus
from tests.api.conftest import client_for


@pytest.fixture
def polling(settings, monkeypatch):
    """Embedded defaults: no Redis, so followers read the database."""
    settings.REDIS_URL = ""
    monkeypatch.setattr(events, "POLL_SECONDS", 0.01)


def a_job(owner, **fields) -> Job:
    return services.job_create(owner=owner, prompt="a red circle", steps=4, **fields)


def finish(job: Job) -> None:
    claimed = services.job_claim(job_id=job.id, worker="test-worker")
    services.job_record_outcome(
        job_id=job.id,
        worker=claimed.worker,
        outcome="succeeded",
        images=[{"index": 0, "seed": claimed.seed, "width": 8, "height": 8, "png": b"\x89PNG fake"}],
    )


def test_follow_by_polling_sees_queued_progress_and_the_end(alice, published, polling):
    job = a_job(alice)
    seen = []

    async def watch() -> None:
        worker = None
        async for event in events.follow(job.id):
            seen.append(event)
            if event.type == "snapshot":
                worker = (await sync_to_async(services.job_claim)(job_id=job.id, worker="w")).worker
            elif event.data["step"] == 0:
                await sync_to_async(services.job_report_progress)(job_id=job.id, worker=worker, step=2, total=4)
            elif event.data["step"] == 2:
                await sync_to_async(services.job_record_outcome)(job_id=job.id, worker=worker, outcome="failed",
                                                                 error="boom")

    async_to_sync(watch)()
    assert [(e.type, e.data["status"], e.data["step"]) for e in seen] == [
        ("snapshot", "queued", 0),
        ("progress", "running", 0),
        ("progress", "running", 2),
        ("end", "failed", 2),
    ]
    assert seen[0].data["queue_position"] == 1 and seen[2].data["percent"] == 50.0
    assert len({e.id for e in seen}) == 4


def test_last_event_id_skips_a_snapshot_the_client_already_has(alice, published, polling):
    job = a_job(alice)

    async def resume() -> tuple[list, list]:
        follower = events.follow(job.id)
        snapshot = await anext(follower)
        await follower.aclose()
        resumed = []

        async def follow_again():
            async for event in events.follow(job.id, last_event_id=snapshot.id):
                resumed.append(event)

        task = asyncio.create_task(follow_again())
        await asyncio.sleep(0.2)  # many polls of an unchanged job
        before_the_end = list(resumed)
        await sync_to_async(finish)(job)
        await asyncio.wait_for(task, 5)
        return [snapshot], before_the_end, resumed

    first, before_the_end, resumed = async_to_sync(resume)()
    assert first[0].type == "snapshot" and before_the_end == []
    assert [e.type for e in resumed] == ["end"] and resumed[0].data["status"] == "succeeded"


def test_wait_for_end_times_out_on_a_job_that_does_not_run(alice, published, polling):
    job = a_job(alice)
    assert async_to_sync(events.wait_for_end)(job.id, 0.1) is False
    finish(job)
    assert async_to_sync(events.wait_for_end)(job.id, 0.1) is True


async def read_all(content) -> bytes:
    return b"".join([part async for part in content])


def sse(body: bytes) -> list[tuple[str, dict]]:
    frames = []
    for block in body.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "data" in fields:
            frames.append((fields["event"], json.loads(fields["data"])))
    return frames


def test_events_route_ends_with_the_job_and_hides_other_users_jobs(alice, bob, published, polling):
    job = a_job(alice)
    finish(job)
    response = client_for(alice).get(f"/api/v1/jobs/{job.id}/events", HTTP_ACCEPT="text/event-stream")
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    frames = sse(async_to_sync(read_all)(response.streaming_content))
    assert [kind for kind, _ in frames] == ["end"]
    assert frames[0][1]["job"]["status"] == "succeeded" and frames[0][1]["job"]["images"][0]["index"] == 0
    assert client_for(bob).get(f"/api/v1/jobs/{job.id}/events").status_code == 404


def create(client, prefer: str):
    return client.post("/api/v1/jobs/", {"prompt": "a red circle", "steps": 4}, format="json", HTTP_PREFER=prefer)


def test_prefer_wait_answers_200_with_the_job_that_ended_meanwhile(alice, published, monkeypatch):
    waited = []

    async def worker_finishes(job_id, timeout):
        waited.append(timeout)
        await sync_to_async(lambda: finish(Job.objects.get(id=job_id)))()
        return True

    monkeypatch.setattr(events, "wait_for_end", worker_finishes)
    response = create(client_for(alice), "wait=5")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "succeeded" and response["Preference-Applied"] == "wait=5"
    assert response["Location"].endswith(f"/api/v1/jobs/{response.json()['id']}/") and waited == [5]


@pytest.mark.parametrize(("prefer", "granted"), [("wait", 60), ("respond-async, wait=600", 60), ("wait=0", 0)])
def test_prefer_wait_is_capped_and_a_job_still_running_is_a_202(alice, published, monkeypatch, prefer, granted):
    async def nothing_ends(job_id, timeout):
        return False

    monkeypatch.setattr(events, "wait_for_end", nothing_ends)
    response = create(client_for(alice), prefer)
    assert response.status_code == 202 and response.json()["status"] == "queued"
    assert response["Preference-Applied"] == f"wait={granted}"


def test_prefer_wait_with_a_bad_number_is_a_400_and_no_job(alice, published):
    response = create(client_for(alice), "wait=soon")
    assert response.status_code == 400 and "Prefer" in response.json()
    assert Job.objects.count() == 0


def test_without_prefer_create_answers_at_once(alice, published):
    response = create(client_for(alice), "")
    assert response.status_code == 202 and "Preference-Applied" not in response


def test_publishing_to_a_dead_redis_is_quick_and_harmless(settings, monkeypatch):
    import time

    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    monkeypatch.setattr(events, "_client", None)
    monkeypatch.setattr(events, "_paused_until", 0.0)
    started = time.monotonic()
    for step in range(100):
        events.publish_progress("00000000-0000-0000-0000-000000000000", attempt=1, step=step, total=100,
                                eta_seconds=None)
    assert time.monotonic() - started < 3.0  # one failed connect, then paused: not 100 timeouts
    assert events._paused_until > time.monotonic()


@pytest.mark.servers
def test_the_hub_fans_redis_messages_out_to_followers(alice, published, settings):
    settings.REDIS_URL = os.environ.get("REDIS_URL") or pytest.fail("REDIS_URL is required for this test")
    job = a_job(alice)
    worker = services.job_claim(job_id=job.id, worker="w").worker
    events._client = None

    async def two_followers():
        async def one(previews):
            got = []
            async for event in events.follow(job.id, previews=previews):
                got.append(event)
                if event.type == "snapshot":
                    ready.set()
                if event.type == "preview":
                    return got
            return got

        ready = asyncio.Event()
        tasks = [asyncio.create_task(one(True)), asyncio.create_task(one(False))]
        await ready.wait()
        await asyncio.sleep(0.2)  # both subscribed
        await sync_to_async(events.publish_progress)(job.id, attempt=1, step=3, total=4, eta_seconds=0.5)
        assert await sync_to_async(events.previews_wanted)([job.id]) == {job.id}
        await sync_to_async(events.publish_preview)(job.id, attempt=1, step=3, total=4, png=b"png")
        await sync_to_async(services.job_record_outcome)(job_id=job.id, worker=worker, outcome="failed", error="x")
        await sync_to_async(events.publish)(job.id, {"type": "status"})  # the test's transaction never commits
        return await asyncio.wait_for(asyncio.gather(*tasks), 10)

    with_previews, without = async_to_sync(two_followers)()
    assert [e.type for e in with_previews] == ["snapshot", "progress", "preview"]
    assert with_previews[1].data["eta_seconds"] == 0.5 and with_previews[2].data["step"] == 3
    assert [e.type for e in without] == ["snapshot", "progress", "end"]
    assert events.latest_preview(job.id) == b"png"


@pytest.mark.servers
def test_followers_of_many_jobs_arriving_at_once_all_hear_their_job(alice, published, settings):
    # 500 followers arriving together once lost most jobs' events: concurrent first subscribes opened two
    # connections, and channels subscribed on the dropped one heard nothing.
    settings.REDIS_URL = os.environ.get("REDIS_URL") or pytest.fail("REDIS_URL is required for this test")
    jobs = [a_job(alice) for _ in range(6)]
    for job in jobs:
        services.job_claim(job_id=job.id, worker="w")
    events._client = None

    async def followers():
        subscribed = asyncio.Semaphore(0)

        async def one(job_id):
            kinds = []
            async for event in events.follow(job_id):
                kinds.append(event.type)
                if event.type == "snapshot":
                    subscribed.release()
            return kinds

        tasks = [asyncio.create_task(one(jobs[i % len(jobs)].id)) for i in range(60)]  # all at once, on a new hub
        for _ in tasks:
            await subscribed.acquire()
        for job in jobs:
            await sync_to_async(events.publish_progress)(job.id, attempt=1, step=1, total=4, eta_seconds=None)
        await sync_to_async(Job.objects.filter(id__in=[job.id for job in jobs]).update)(status=JobStatus.SUCCEEDED)
        for job in jobs:
            await sync_to_async(events.publish)(job.id, {"type": "status"})
        return await asyncio.wait_for(asyncio.gather(*tasks), 5)  # under SILENCE_SECONDS: by message, not resync

    assert async_to_sync(followers)() == [["snapshot", "progress", "end"]] * 60
