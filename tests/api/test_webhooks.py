"""Webhooks against a local receiver: signed, retried with backoff, only to allowed hosts."""

import hashlib
import hmac
import json
import re
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from diffusion_api.jobs import services, webhooks
from diffusion_api.jobs.models import WebhookDelivery, WebhookStatus
from tests.api.conftest import without_events

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
    assert len(without_events(callbacks)) == 1  # the delivery is queued once the job's end commits
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


# --- A hostile receiver (issue 38, items 4 and 5): it may not redirect the connection, hold the delivery worker,
# or make it read a huge answer. These go through attempt_delivery, the task's one call.


class RawReceiver:
    """A TCP server on 127.0.0.1 whose handler writes raw bytes: an answer dripped slowly, or a huge one."""

    def __init__(self, answer):
        self.answer, self.sent, self.done = answer, 0, threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        conn, _ = self.listener.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)  # little hidden in kernel buffers
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            head, body = request.split(b"\r\n\r\n", 1)
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            while len(body) < length:
                body += conn.recv(65536)
            for chunk in self.answer():
                conn.sendall(chunk)
                self.sent += len(chunk)
        except OSError:
            pass  # the client hung up: what we want
        finally:
            conn.close()
            self.listener.close()
            self.done.set()


def _delivery_to(alice, url):
    job = services.job_create(owner=alice, prompt="x", webhook_url=url)
    services.job_cancel(job=job)
    return WebhookDelivery.objects.get(job=job)


def test_a_dripping_receiver_is_cut_off_at_the_delivery_deadline(alice, webhook_settings, published):
    webhook_settings.WEBHOOK_TIMEOUT_SECONDS = 1.5

    def drip():  # a valid status line, then a header one byte every 0.2 s for up to 10 s: each read is quick
        yield b"HTTP/1.1 200 OK\r\nX-Slow: "
        for _ in range(50):
            time.sleep(0.2)
            yield b"a"

    receiver = RawReceiver(drip)
    delivery = _delivery_to(alice, receiver.url)
    started = time.monotonic()
    delay = webhooks.attempt_delivery(delivery.id)
    elapsed = time.monotonic() - started
    delivery.refresh_from_db()
    assert elapsed < 1.5 + 1.0, f"one delivery took {elapsed:.1f} s with a 1.5 s deadline"
    assert delivery.status == WebhookStatus.PENDING and delay == 2  # retried later, like any timeout
    assert "deadline" in delivery.last_error or "timed out" in delivery.last_error, delivery.last_error
    assert receiver.done.wait(5)


def test_a_huge_answer_is_read_only_up_to_a_few_kilobytes(alice, webhook_settings, published):
    size = 64 * 1024 * 1024

    def huge():  # a 500 with a 64 MiB body, sent as fast as the client reads
        yield b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n" % size
        chunk = b"x" * (1024 * 1024)
        for _ in range(size // len(chunk)):
            yield chunk

    receiver = RawReceiver(huge)
    delivery = _delivery_to(alice, receiver.url)
    assert webhooks.attempt_delivery(delivery.id) == 2
    assert receiver.done.wait(10)
    delivery.refresh_from_db()
    assert delivery.last_status_code == 500 and delivery.last_error == "x" * 500
    # What left the receiver: the few KB read, plus what the two kernels' socket buffers took before the close.
    assert receiver.sent < 4 * 1024 * 1024, f"the receiver got {receiver.sent} bytes of its answer out"


def test_delivery_connects_to_the_address_it_checked(alice, webhook_settings, published, monkeypatch):
    # DNS rebinding: the first answer is public and passes the check; a second lookup would say 127.0.0.1.
    webhook_settings.WEBHOOK_ALLOW_PRIVATE = False
    answers = iter(["93.184.216.34", "127.0.0.1", "127.0.0.1"])
    lookups, connects = [], []

    def getaddrinfo(host, port, *args, **kwargs):
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    def connect(sock, address):
        connects.append(address)
        raise ConnectionRefusedError("refused by the test")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    assert webhooks.attempt_delivery(_delivery_to(alice, "http://hooks.example.com:8080/h").id) == 2
    assert lookups == ["hooks.example.com"]  # one lookup per try: the checked answer is the one connected to
    assert connects == [("93.184.216.34", 8080)]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for hooks.test (the test's own CA)."""
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem"), "-days", "2"]
        + ["-subj", "/CN=hooks.test", "-addext", "subjectAltName=DNS:hooks.test"],
        check=True,
        capture_output=True,
    )
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture
def tls_receiver(certificate, monkeypatch):
    """An HTTPS receiver on 127.0.0.1 for hooks.test: records SNI and Host; the delivery trusts its certificate."""
    cert, key = certificate
    seen = {"sni": [], "host": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            seen["host"].append(self.headers["Host"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sslsock, name, ctx: seen["sni"].append(name)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(webhooks, "tls_context", lambda: ssl.create_default_context(cafile=str(cert)))
    local = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", server.server_port))]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: local)
    yield server.server_port, seen
    server.shutdown()


def test_https_delivery_sends_the_host_name_as_sni_and_host_and_verifies_it(alice, webhook_settings, tls_receiver):
    port, seen = tls_receiver
    delivery = _delivery_to(alice, f"https://hooks.test:{port}/h")
    assert webhooks.attempt_delivery(delivery.id) is None
    delivery.refresh_from_db()
    assert delivery.status == WebhookStatus.DELIVERED and delivery.last_status_code == 204
    assert seen == {"sni": ["hooks.test"], "host": [f"hooks.test:{port}"]}


def test_https_delivery_refuses_a_certificate_for_another_name(alice, webhook_settings, tls_receiver, monkeypatch):
    port, seen = tls_receiver
    delivery = _delivery_to(alice, f"https://other.test:{port}/h")  # resolves to the same receiver
    assert webhooks.attempt_delivery(delivery.id) == 2
    delivery.refresh_from_db()
    assert "CERTIFICATE_VERIFY_FAILED" in delivery.last_error and seen["host"] == []
