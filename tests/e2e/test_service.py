import base64
import io
import time

import requests
from PIL import Image

from tests.e2e.conftest import session_for
from tests.support import s3_client


def poll(session: requests.Session, url: str, until, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = session.get(url, timeout=10).json()
        if until(job):
            return job
        time.sleep(0.2)
    raise AssertionError(f"timed out; last state: {job}")


def test_a_job_runs_to_succeeded_and_returns_pngs(service):
    alice = session_for(service["token"]("alice"))
    response = alice.post(
        f"{service['base']}/api/v1/jobs/",
        json={"prompt": "a red circle", "width": 48, "height": 32, "steps": 4, "num_images": 2},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    job = poll(alice, response.json()["url"], lambda j: j["status"] not in ("queued", "running"))
    assert job["status"] == "succeeded", job
    assert job["progress"]["percent"] == 100.0 and job["attempts"] == 1
    pngs = [base64.b64decode(i["png_base64"]) for i in job["images"]]
    assert [Image.open(io.BytesIO(png)).size for png in pngs] == [(48, 32), (48, 32)]
    # The worker wrote them to the object store; each `url` is a presigned link to it that needs no token.
    endpoint, bucket = service["s3"]["endpoint"], service["s3"]["bucket"]
    listed = s3_client(endpoint).list_objects_v2(Bucket=bucket, Prefix=f"images/{job['id']}/")
    assert len(listed["Contents"]) == 2
    for image, png in zip(job["images"], pngs, strict=True):
        assert image["url"].startswith(f"{endpoint}/{bucket}/images/{job['id']}/")
        assert "X-Amz-Signature=" in image["url"]
        fetched = requests.get(image["url"], timeout=10)
        assert fetched.status_code == 200 and fetched.content == png
    served = alice.get(f"{response.json()['url']}images/0.png", timeout=10)  # the API's route, read from the store
    assert served.headers["Content-Type"] == "image/png" and served.content == pngs[0]


def test_cancel_a_running_job(service):
    alice = session_for(service["token"]("alice"))
    response = alice.post(f"{service['base']}/api/v1/jobs/", json={"prompt": "a long job", "steps": 900}, timeout=10)
    url = response.json()["url"]
    running = poll(alice, url, lambda j: j["status"] == "running" and j["progress"]["step"] >= 2)
    assert running["progress"]["total"] == 900

    bob = session_for(service["token"]("bob"))
    assert bob.get(url, timeout=10).status_code == 404
    assert bob.post(f"{url}cancel/", timeout=10).status_code == 404

    assert alice.post(f"{url}cancel/", timeout=10).status_code == 202
    job = poll(alice, url, lambda j: j["status"] not in ("queued", "running"), timeout=60)
    assert job["status"] == "canceled" and job["images"] is None
    assert job["progress"]["step"] < 900


def test_health_reports_database_broker_and_worker(service):
    body = requests.get(f"{service['base']}/api/v1/health/", timeout=10).json()
    assert body["status"] == "ok"
    assert body["database"]["ok"] and body["broker"]["ok"] and body["workers"]["alive"] == 1
    assert body["storage"]["ok"] and body["storage"]["backend"] == "s3" and body["storage"]["held_images"] == 0
    assert body["broker"]["transport"] == "redis"


def test_webhook_is_delivered_signed_by_the_worker(service):
    import hashlib
    import hmac
    import json

    from tests.api.test_webhooks import Receiver

    receiver = Receiver([500, 200])  # the first try fails: the worker retries with backoff
    try:
        alice = session_for(service["token"]("alice"))
        response = alice.post(
            f"{service['base']}/api/v1/jobs/",
            json={"prompt": "a webhook job", "steps": 2, "webhook_url": receiver.url},
            timeout=10,
        )
        assert response.status_code == 202, response.text
        deadline = time.monotonic() + 60
        while len(receiver.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(receiver.requests) == 2, receiver.requests
        headers, body = receiver.requests[1]
        signed = headers["X-Webhook-Timestamp"].encode() + b"." + body
        expected = hmac.new(b"e2e-webhook-secret", signed, hashlib.sha256).hexdigest()
        assert headers["X-Webhook-Signature"] == f"sha256={expected}"
        assert json.loads(body)["event"] == "job.succeeded"
    finally:
        receiver.close()
