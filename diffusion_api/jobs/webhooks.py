"""Webhooks: when a job ends, POST its final state to the job's `webhook_url`, signed, retried with backoff.

Signature: `X-Webhook-Signature: sha256=<hex>` where hex = HMAC-SHA256(WEBHOOK_SECRET, f"{timestamp}.{body}")
and `timestamp` is the `X-Webhook-Timestamp` header (Unix seconds). A receiver recomputes it over the raw
body, compares in constant time, and refuses old timestamps (replays).
"""

import hashlib
import hmac
import ipaddress
import json
import socket
import time
from fnmatch import fnmatch
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.utils import timezone

from diffusion_api.jobs.models import PARAMETER_FIELDS, Job, JobStatus, WebhookDelivery, WebhookStatus

RETRYABLE_STATUS = {408, 425, 429}  # and every 5xx


class WebhookRefused(ValueError):
    """The URL may not receive webhooks (scheme, host not allowed, or a private address)."""


def check_webhook_url(url: str) -> None:
    """Refuse URLs that could reach inside the network (SSRF), unless the settings allow it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused("must be an http or https URL with a host")
    host = parts.hostname.lower()
    allowed = settings.WEBHOOK_ALLOWED_HOSTS
    if allowed and not any(fnmatch(host, pattern) for pattern in allowed):
        raise WebhookRefused(f"host {host!r} is not allowed; allowed: {', '.join(allowed)}")
    if settings.WEBHOOK_ALLOW_PRIVATE:
        return
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)}
    except socket.gaierror as error:
        raise WebhookRefused(f"host {host!r} does not resolve: {error}") from error
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not ip.is_global:
            raise WebhookRefused(f"host {host!r} resolves to {ip}, a private or reserved address")


def webhook_secret() -> str:
    if settings.WEBHOOK_SECRET:
        return settings.WEBHOOK_SECRET
    return hmac.new(settings.SECRET_KEY.encode(), b"webhook-signing", hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def payload(job: Job) -> bytes:
    base = settings.PUBLIC_BASE_URL.rstrip("/")
    images = [
        {"index": image.index, "seed": image.seed, "url": f"{base}/api/v1/jobs/{job.id}/images/{image.index}.png"}
        for image in job.images.order_by("index")
    ]
    body = {
        "event": f"job.{job.status}",
        "job": {
            "id": str(job.id),
            "status": job.status,
            "error": job.error,
            "attempts": job.attempts,
            "parameters": {name: getattr(job, name) for name in PARAMETER_FIELDS},
            "created_at": job.created_at.isoformat(),
            "started_at": job.started_at.isoformat() if job.started_at else None,
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            "images": images if job.status == JobStatus.SUCCEEDED else [],
        },
    }
    return json.dumps(body, sort_keys=True).encode()


def retry_delay(attempts: int) -> float:
    """Exponential backoff after `attempts` failed tries: base, 2·base, 4·base, … capped."""
    return min(settings.WEBHOOK_BACKOFF_SECONDS * 2 ** (attempts - 1), settings.WEBHOOK_BACKOFF_MAX_SECONDS)


def attempt_delivery(delivery_id: int) -> float | None:
    """POST once. Returns seconds to wait before the next try, or None when the delivery is settled."""
    delivery = WebhookDelivery.objects.select_related("job").get(id=delivery_id)
    if delivery.status != WebhookStatus.PENDING:
        return None
    delivery.attempts += 1
    retry = False
    try:
        check_webhook_url(delivery.url)  # again at send time: DNS may have changed since the job was created
        body = payload(delivery.job)
        timestamp = int(time.time())
        response = requests.post(
            delivery.url,
            data=body,
            headers={
                "Content-Type": "application/json",
                "User-Agent": "diffusion-service-webhook/1",
                "X-Webhook-Id": str(delivery.id),
                "X-Webhook-Timestamp": str(timestamp),
                "X-Webhook-Signature": sign(webhook_secret(), timestamp, body),
            },
            timeout=settings.WEBHOOK_TIMEOUT_SECONDS,
            allow_redirects=False,  # a redirect could point inside the network
        )
        delivery.last_status_code = response.status_code
        delivery.last_error = "" if response.ok else response.text[:500]
        if response.ok:
            delivery.status, delivery.delivered_at = WebhookStatus.DELIVERED, timezone.now()
        else:
            retry = response.status_code >= 500 or response.status_code in RETRYABLE_STATUS
    except WebhookRefused as error:
        delivery.last_error = f"refused: {error}"
    except requests.RequestException as error:
        delivery.last_error = f"{type(error).__name__}: {error}"[:500]
        retry = True
    if delivery.status == WebhookStatus.PENDING and not (retry and delivery.attempts < settings.WEBHOOK_MAX_ATTEMPTS):
        delivery.status = WebhookStatus.FAILED
    delivery.save()
    return retry_delay(delivery.attempts) if delivery.status == WebhookStatus.PENDING else None
