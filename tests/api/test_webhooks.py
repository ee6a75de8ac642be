"""Webhooks against a local receiver: signed, retried with backoff, only to allowed hosts."""

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from diffusion_api.jobs import services, webhooks
from diffusion_api.jobs.models import WebhookDelivery, WebhookStatus

pytestmark = pytest.mark.django_db


class Receiver:
    """An HTTP server on 127.0.0.1 that records POSTs and answers with the next scripted status."""

    def __init__(self, statuses):
        self.statuses = list(statuses)
        self.requests = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture
def receiver():
    made = []

    def make(*statuses):
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def webhook_settings(settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True  # the receiver is on loopback
    settings.WEBHOOK_SECRET = "shh"
    settings.WEBHOOK_BACKOFF_SECONDS = 2
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    return settings


def finish(job):
    claim = services.job_claim(job_id=job.id, worker="w").worker
    services.job_succeed(
        job_id=job.id,
        worker=claim,
        images=[{"index": 0, "seed": job.seed, "width": 32, "height": 32, "png": b"\x89PNG"}],
    )


def test_final_state_is_posted_signed(alice, webhook_settings, receiver, published, django_capture_on_commit_callbacks):
    r = receiver(200)
    job = services.job_create(owner=alice, prompt="x", webhook_url=r.url)
    with django_capture_on_commit_callbacks() as callbacks:
        finish(job)
    assert len(callbacks) == 1  # the delivery is queued once the job's end commits
    delivery = WebhookDelivery.objects.get(job=job)
    assert webhooks.attempt_delivery(delivery.id) is None
    delivery.refresh_from_db()
    assert delivery.status == WebhookStatus.DELIVERED and delivery.attempts == 1

    headers, body = r.requests[0]
    expected = hmac.new(b"shh", headers["X-Webhook-Timestamp"].encode() + b"." + body, hashlib.sha256).hexdigest()
    assert headers["X-Webhook-Signature"] == f"sha256={expected}"
    event = json.loads(body)
    assert event["event"] == "job.succeeded" and event["job"]["id"] == str(job.id)
    assert event["job"]["images"][0]["url"].endswith(f"/api/v1/jobs/{job.id}/images/0.png")


def test_failures_are_retried_with_backoff_then_given_up(alice, webhook_settings, receiver, published):
    r = receiver(500, 503, 500, 500)
    job = services.job_create(owner=alice, prompt="x", webhook_url=r.url)
    services.job_cancel(job=job)
    delivery = WebhookDelivery.objects.get(job=job)
    assert [webhooks.attempt_delivery(delivery.id) for _ in range(3)] == [2, 4, None]  # 2 s, 4 s, then give up
    delivery.refresh_from_db()
    assert delivery.status == WebhookStatus.FAILED and delivery.attempts == 3 and delivery.last_status_code == 500
    assert json.loads(r.requests[0][1])["event"] == "job.canceled"


def test_a_retry_that_succeeds(alice, webhook_settings, receiver, published):
    r = receiver(502, 200)
    job = services.job_create(owner=alice, prompt="x", webhook_url=r.url)
    services.job_cancel(job=job)
    delivery = WebhookDelivery.objects.get(job=job)
    assert webhooks.attempt_delivery(delivery.id) == 2
    assert webhooks.attempt_delivery(delivery.id) is None
    delivery.refresh_from_db()
    assert delivery.status == WebhookStatus.DELIVERED and len(r.requests) == 2


def test_client_errors_are_not_retried(alice, webhook_settings, receiver, published):
    r = receiver(404)
    job = services.job_create(owner=alice, prompt="x", webhook_url=r.url)
    services.job_cancel(job=job)
    delivery = WebhookDelivery.objects.get(job=job)
    assert webhooks.attempt_delivery(delivery.id) is None
    delivery.refresh_from_db()
    assert delivery.status == WebhookStatus.FAILED and delivery.attempts == 1


def test_private_and_loopback_hosts_are_refused_unless_allowed(alice_client, settings, published):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    for url in [
        "http://127.0.0.1:9/hook",
        "http://10.0.0.5/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/x",
        "ftp://example.com/hook",
        "http://localhost/hook",
    ]:
        response = alice_client.post("/api/v1/jobs/", {"prompt": "x", "webhook_url": url}, format="json")
        assert response.status_code == 400, url
        assert response.json()["webhook_url"], url


def test_allowed_hosts_setting(alice_client, settings, published):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    settings.WEBHOOK_ALLOWED_HOSTS = ["hooks.example.com", "*.internal.test"]
    refused = alice_client.post("/api/v1/jobs/", {"prompt": "x", "webhook_url": "http://127.0.0.1/h"}, format="json")
    assert refused.status_code == 400 and "not allowed" in refused.json()["webhook_url"][0]
    ok = alice_client.post("/api/v1/jobs/", {"prompt": "x", "webhook_url": "http://a.internal.test/h"}, format="json")
    assert ok.status_code == 202


def test_no_webhook_no_delivery(alice, published):
    job = services.job_create(owner=alice, prompt="x")
    services.job_cancel(job=job)
    assert not WebhookDelivery.objects.exists()
