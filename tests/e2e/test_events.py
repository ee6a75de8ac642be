"""Live job events (GET jobs/{id}/events) and Prefer: wait, through the real ASGI server, worker and Redis."""

import base64
import io
import json
import threading
import time

import pytest
import requests
from PIL import Image

from tests.e2e.conftest import session_for
from tests.e2e.test_service import poll


def sse_events(response: requests.Response):
    """(id, type, data) of each Server-Sent Event in a streaming response; comments and `retry` are skipped."""
    event_id, kind, data = None, "message", []
    for line in response.iter_lines(decode_unicode=True):
        if line == "":
            if data:
                yield event_id, kind, json.loads("\n".join(data))
            event_id, kind, data = None, "message", []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(": ")
            if name == "id":
                event_id = value
            elif name == "event":
                kind = value
            elif name == "data":
                data.append(value)


def submit(session, base, **body) -> dict:
    response = session.post(f"{base}/api/v1/jobs/", json=body, timeout=10)
    assert response.status_code == 202, response.text
    return response.json()


def test_events_follow_a_job_from_queued_to_done(service):
    base = service["base"]
    alice = session_for(service["token"]("alice"))
    blocker = submit(alice, base, prompt="a long job ahead", steps=400)
    poll(alice, blocker["url"], lambda j: j["status"] == "running")
    job = submit(alice, base, prompt="a red circle", steps=40, width=32, height=32)

    with alice.get(f"{job['url']}events?previews=1", stream=True, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        seen = list(sse_events(response))

    kinds = [kind for _, kind, _ in seen]
    assert kinds[0] == "snapshot" and seen[0][2]["status"] == "queued" and seen[0][2]["queue_position"] == 1
    assert kinds[-1] == "end" and kinds.count("end") == 1
    progress = [data for _, kind, data in seen if kind == "progress" and data["status"] == "running"]
    steps = [data["step"] for data in progress]
    assert steps and steps == sorted(steps) and steps[-1] == 40
    assert all(data["total"] == 40 for data in progress)
    assert any(data.get("eta_seconds") is not None for data in progress)
    previews = [data for _, kind, data in seen if kind == "preview"]
    assert previews, kinds
    thumbnail = Image.open(io.BytesIO(base64.b64decode(previews[0]["png_base64"])))
    assert thumbnail.format == "PNG" and max(thumbnail.size) <= 256
    final = seen[-1][2]
    assert final["status"] == "succeeded" and final["job"]["status"] == "succeeded"
    assert len(final["job"]["images"]) == 1 and final["job"]["images"][0]["png_base64"]
    ids = [event_id for event_id, _, _ in seen]
    assert all(ids) and len(set(ids)) == len(ids)


def test_last_event_id_skips_the_snapshot_the_client_has(service):
    base = service["base"]
    alice = session_for(service["token"]("alice"))
    blocker = submit(alice, base, prompt="a long job ahead", steps=600)
    poll(alice, blocker["url"], lambda j: j["status"] == "running")
    job = submit(alice, base, prompt="a waiting job", steps=4, width=32, height=32)
    with alice.get(f"{job['url']}events", stream=True, timeout=30) as response:
        first_id, kind, data = next(sse_events(response))
    assert kind == "snapshot" and data["status"] == "queued"

    resumed = alice.get(f"{job['url']}events", stream=True, timeout=60, headers={"Last-Event-ID": first_id})
    with resumed:
        seen = list(sse_events(resumed))
    assert first_id not in [event_id for event_id, _, _ in seen]
    assert seen[-1][1] == "end" and seen[-1][2]["status"] == "succeeded"


def test_events_of_another_users_job_are_a_404(service):
    base = service["base"]
    alice = session_for(service["token"]("alice"))
    bob = session_for(service["token"]("bob"))
    job = submit(alice, base, prompt="alice's job", steps=2, width=32, height=32)
    assert bob.get(f"{job['url']}events", timeout=10).status_code == 404
    assert requests.get(f"{job['url']}events", timeout=10).status_code == 401


def test_a_dropped_stream_leaves_the_job_running_to_the_end(service):
    base = service["base"]
    alice = session_for(service["token"]("alice"))
    job = submit(alice, base, prompt="a dropped watcher", steps=200, width=32, height=32)
    response = alice.get(f"{job['url']}events", stream=True, timeout=30)
    next(sse_events(response))
    response.close()  # the client goes away mid-stream
    done = poll(alice, job["url"], lambda j: j["status"] not in ("queued", "running"))
    assert done["status"] == "succeeded"


@pytest.mark.parametrize(
    "path, body",
    [
        ("/api/v1/jobs/", {"prompt": "a dropped wait", "steps": 200, "width": 32, "height": 32}),
        ("/v1/images/generations", {"prompt": "a dropped openai wait", "size": "32x32", "steps": 200}),
    ],
)
def test_a_client_that_drops_a_wait_leaves_its_job_running_to_the_end(service, path, body):
    base = service["base"]
    token = service["token"]("alice")
    alice = session_for(token)
    scheme = "Bearer" if path.startswith("/v1/") else "Token"
    with pytest.raises(requests.ReadTimeout):  # the client gives up mid-wait
        requests.post(
            f"{base}{path}",
            json=body,
            headers={"Authorization": f"{scheme} {token}", "Prefer": "wait=30"},
            timeout=(5, 0.5),
        )
    listed = alice.get(f"{base}/api/v1/jobs/", timeout=10).json()["results"]
    job = next(job for job in listed if job["prompt"] == body["prompt"])
    done = poll(alice, job["url"], lambda j: j["status"] not in ("queued", "running"))
    assert done["status"] == "succeeded" and done["images"][0]["png_base64"]


def test_prefer_wait_returns_the_finished_job(service):
    base = service["base"]
    alice = session_for(service["token"]("alice"))
    response = alice.post(
        f"{base}/api/v1/jobs/",
        json={"prompt": "a blue square", "steps": 4, "width": 32, "height": 32},
        headers={"Prefer": "wait=30"},
        timeout=40,
    )
    assert response.status_code == 200, response.text
    assert response.headers["Preference-Applied"] == "wait=30"
    job = response.json()
    assert job["status"] == "succeeded" and job["images"][0]["png_base64"]


def test_prefer_wait_gives_up_after_n_seconds_with_a_202(service):
    base = service["base"]
    alice = session_for(service["token"]("alice"))
    started = time.monotonic()
    response = alice.post(
        f"{base}/api/v1/jobs/",
        json={"prompt": "a long job", "steps": 900},
        headers={"Prefer": "wait=1"},
        timeout=30,
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 202 and response.json()["status"] in ("queued", "running")
    assert 1.0 <= elapsed < 5.0
    alice.post(f"{response.json()['url']}cancel/", timeout=10)


def test_many_waiting_clients_hold_no_thread(service):
    """More simultaneous waits than any thread pool the server has: all answer, and a plain read stays quick.

    Streams and `Prefer: wait` both: a wait runs inside its view, so a middleware chain that ran async views in
    Django's thread would hold that thread, and every other request of the process, for the whole wait."""
    base = service["base"]
    alice = session_for(service["token"]("alice"))
    blocker = submit(alice, base, prompt="a long job ahead", steps=600)
    answers, waited = [], []

    def wait_on_blocker() -> None:
        with alice.get(f"{blocker['url']}events", stream=True, timeout=60) as response:
            answers.append([kind for _, kind, _ in sse_events(response)][-1])

    def wait_on_a_new_job() -> None:
        response = alice.post(
            f"{base}/api/v1/jobs/", json={"prompt": "behind it", "steps": 2}, headers={"Prefer": "wait=8"}, timeout=30
        )
        waited.append(response.status_code)

    watchers = [threading.Thread(target=wait_on_blocker) for _ in range(64)]
    watchers += [threading.Thread(target=wait_on_a_new_job) for _ in range(6)]  # 3 per API process
    for watcher in watchers:
        watcher.start()
    time.sleep(1.5)
    for _ in range(3):
        started = time.monotonic()
        assert alice.get(blocker["url"], timeout=10).status_code == 200
        assert time.monotonic() - started < 2.0
    assert waited == []  # the waits are still waiting: the reads did not queue behind them
    alice.post(f"{blocker['url']}cancel/", timeout=10)
    for watcher in watchers:
        watcher.join(timeout=60)
    assert answers == ["end"] * 64
    assert len(waited) == 6 and set(waited) <= {200, 202}, waited
