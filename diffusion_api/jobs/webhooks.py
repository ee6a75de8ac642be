"""Webhooks: when a job ends, POST its final state to the job's `webhook_url`, signed, retried with backoff.

Signature: `X-Webhook-Signature: sha256=<hex>` where hex = HMAC-SHA256(WEBHOOK_SECRET, f"{timestamp}.{body}")
and `timestamp` is the `X-Webhook-Timestamp` header (Unix seconds). A receiver recomputes it over the raw
body, compares in constant time, and refuses old timestamps (replays).

Delivery resolves the host once per try, checks every address, and connects to those addresses only (sending
the URL's host as Host and, on https, as SNI and the name the certificate must carry). Each try has one deadline,
WEBHOOK_TIMEOUT_SECONDS, for all of it, and reads at most MAX_ANSWER_BYTES of the answer.
"""

import base64
import hashlib
import hmac
import http.client
import io
import ipaddress
import json
import re
import socket
import ssl
import time
from dataclasses import dataclass
from fnmatch import fnmatch
from urllib.parse import quote, unquote, urlsplit

from django.conf import settings
from django.utils import timezone

from diffusion_api.jobs.models import PARAMETER_FIELDS, Job, JobStatus, WebhookDelivery, WebhookStatus

RETRYABLE_STATUS = {408, 425, 429}  # and every 5xx
MAX_ANSWER_BYTES = 4096  # of a receiver's answer body: enough for an error message in last_error, never more

# IPv6 ranges that carry an IPv4 address inside them. A receiver's network may translate them to that IPv4
# address (NAT64, 6to4, Teredo, or the host's own stack for the mapped and compatible forms), so they could
# reach 127.0.0.1 or 10.x behind an address that ipaddress calls global: refused whatever IPv4 they embed.
EMBEDS_IPV4 = {
    ipaddress.ip_network("::/96"): "an IPv4-compatible IPv6 address",
    ipaddress.ip_network("::ffff:0:0/96"): "an IPv4-mapped IPv6 address",
    ipaddress.ip_network("64:ff9b::/96"): "a NAT64 address",
    ipaddress.ip_network("64:ff9b:1::/48"): "a local-use NAT64 address",
    ipaddress.ip_network("2002::/16"): "a 6to4 address",
    ipaddress.ip_network("2001::/32"): "a Teredo address",
}
# Special-purpose IPv4 ranges that Python 3.11's ipaddress still calls global.
NOT_PUBLIC_IPV4 = [ipaddress.ip_network(n) for n in ("100.64.0.0/10", "192.0.0.0/24", "198.18.0.0/15")]
URL_SAFE = "/%:@!$&'()*+,;=~"
LABEL = re.compile(r"[a-z0-9_-]{1,63}")  # one label of an ASCII (IDNA-encoded) host name


class WebhookRefused(ValueError):
    """The URL may not receive webhooks (malformed, scheme, host not allowed, or a private address)."""


@dataclass(frozen=True)
class WebhookTarget:
    """A webhook URL taken apart and resolved once: delivery connects to these checked addresses only."""

    scheme: str
    host: str  # ASCII: a host name (IDNA-encoded) or an IP address without brackets; sent as Host and SNI
    port: int
    path: str  # path and query, as sent on the request line
    addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    authorization: str = ""  # "Basic …" from user:password@ in the URL; empty without


def check_webhook_url(url: str) -> None:
    """Refuse URLs that are malformed or could reach inside the network (SSRF), unless the settings allow it.

    With WEBHOOK_ALLOW_PRIVATE there is no address to refuse, so the host need not resolve yet.
    """
    if settings.WEBHOOK_ALLOW_PRIVATE:
        _parse_allowed(url)
    else:
        resolve_webhook_target(url)


def resolve_webhook_target(url: str) -> WebhookTarget:
    """Parse, check the host against WEBHOOK_ALLOWED_HOSTS, resolve it once and check every address."""
    scheme, host, port, path, authorization = _parse_allowed(url)
    addresses = _resolve(host, port)
    if not settings.WEBHOOK_ALLOW_PRIVATE:
        for address in addresses:
            try:
                check_address(address)
            except WebhookRefused as error:
                raise WebhookRefused(f"host {host!r} resolves to {error}") from None
    return WebhookTarget(scheme, host, port, path, addresses, authorization)


def _parse_allowed(url: str) -> tuple[str, str, int, str, str]:
    parsed = _parse(url)
    host, allowed = parsed[1], settings.WEBHOOK_ALLOWED_HOSTS
    if allowed and not any(fnmatch(host, pattern) for pattern in allowed):
        raise WebhookRefused(f"host {host!r} is not allowed; allowed: {', '.join(allowed)}")
    return parsed


def check_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    """Only plain public unicast addresses may receive webhooks."""
    if (
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or any(ip in network for network in NOT_PUBLIC_IPV4 if ip.version == 4)
    ):
        raise WebhookRefused(f"address {ip}, a loopback, private, link-local, multicast or reserved address")
    for network, kind in EMBEDS_IPV4.items():
        if ip in network:
            raise WebhookRefused(f"address {ip}, {kind} (IPv6 that embeds an IPv4 address)")


def _parse(url: str) -> tuple[str, str, int, str, str]:
    """(scheme, ASCII host, port, request path, authorization) of a webhook URL, or WebhookRefused naming why."""
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url):
        raise WebhookRefused("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
    except ValueError as error:  # "Invalid IPv6 URL" for an unclosed or bad [ … ]
        raise WebhookRefused(
            f"malformed URL ({error}): an IPv6 address goes in brackets, e.g. http://[2001:db8::1]/"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused("must be an http or https URL with a host")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise WebhookRefused("port must be a number from 1 to 65535")
    host = _ascii_host(parts.hostname, bracketed=parts.netloc.rpartition("@")[2].startswith("["))
    # Non-ASCII in the path or query is percent-encoded (as requests did); existing %-escapes are kept.
    path = quote(parts.path or "/", safe=URL_SAFE) + (
        f"?{quote(parts.query, safe=URL_SAFE + '?')}" if parts.query else ""
    )
    authorization = ""
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = "Basic " + base64.b64encode(credentials).decode("ascii")
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80), path, authorization


def _ascii_host(hostname: str, *, bracketed: bool) -> str:
    """The host as it goes on the wire: a checked IP literal, or a host name with valid IDNA-encoded labels."""
    if bracketed:
        try:
            return str(ipaddress.IPv6Address(hostname))
        except ValueError:
            raise WebhookRefused(f"malformed IPv6 address [{hostname}]") from None
    try:
        return str(ipaddress.IPv4Address(hostname))
    except ValueError:
        pass
    labels = hostname.removesuffix(".").split(".")
    encoded = []
    for label in labels:
        try:
            ascii_label = label.encode("idna").decode("ascii") if label else ""
        except UnicodeError:
            ascii_label = ""
        if not LABEL.fullmatch(ascii_label):
            raise WebhookRefused(
                f"host {hostname!r} has an invalid label {label!r}: each label is 1 to 63 letters, digits, '-' or '_'"
            )
        encoded.append(ascii_label)
    host = ".".join(encoded)
    if len(host) > 253:
        raise WebhookRefused(f"host is {len(host)} characters long; at most 253")
    return host


def _resolve(host: str, port: int) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    """Every address the host has, in the resolver's order, without duplicates. An IP literal is itself."""
    try:
        return (ipaddress.ip_address(host),)
    except ValueError:
        pass
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as error:
        raise WebhookRefused(f"host {host!r} does not resolve: {error}") from None
    addresses = dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in answers)
    if not addresses:
        raise WebhookRefused(f"host {host!r} has no address")
    return tuple(addresses)


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
        # Resolved and checked again at send time (DNS may have changed since the job was created), and the
        # connection goes to exactly those addresses: a second DNS answer never gets a say.
        target = resolve_webhook_target(delivery.url)
        body = payload(delivery.job)
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "diffusion-service-webhook/1",
            "X-Webhook-Id": str(delivery.id),
            "X-Webhook-Timestamp": str(timestamp),
            "X-Webhook-Signature": sign(webhook_secret(), timestamp, body),
            "Connection": "close",
        }
        if target.authorization:
            headers["Authorization"] = target.authorization
        status, answer = post(target, body, headers, timeout=settings.WEBHOOK_TIMEOUT_SECONDS)
        delivery.last_status_code = status
        ok = status < 400  # redirects are not followed (one could point inside the network): a 3xx is an answer
        delivery.last_error = "" if ok else answer.decode("utf-8", "replace")[:500]
        if ok:
            delivery.status, delivery.delivered_at = WebhookStatus.DELIVERED, timezone.now()
        else:
            retry = status >= 500 or status in RETRYABLE_STATUS
    except WebhookRefused as error:
        delivery.last_error = f"refused: {error}"
    except (OSError, http.client.HTTPException) as error:  # connection, TLS, deadline, malformed answer
        delivery.last_error = f"{type(error).__name__}: {error}"[:500]
        retry = True
    if delivery.status == WebhookStatus.PENDING and not (retry and delivery.attempts < settings.WEBHOOK_MAX_ATTEMPTS):
        delivery.status = WebhookStatus.FAILED
    delivery.save()
    return retry_delay(delivery.attempts) if delivery.status == WebhookStatus.PENDING else None


def post(target: WebhookTarget, body: bytes, headers: dict[str, str], *, timeout: float) -> tuple[int, bytes]:
    """POST to the target's checked addresses within `timeout` seconds in all; (status, at most MAX_ANSWER_BYTES).

    The deadline covers connecting, TLS, sending and every read of the answer: a receiver that drips a byte at a
    time cannot hold the worker past it, and a huge answer is cut off after its first MAX_ANSWER_BYTES.
    """
    deadline = time.monotonic() + timeout
    context = tls_context() if target.scheme == "https" else None
    sock = _connect(target, deadline, context)
    if context is not None:
        connection = http.client.HTTPSConnection(target.host, target.port, context=context)
    else:
        connection = http.client.HTTPConnection(target.host, target.port)
    connection.sock = _DeadlineSocket(sock, deadline)  # already connected: http.client only writes the request
    try:
        connection.request("POST", target.path, body=body, headers=headers)  # Host: the URL's host
        response = connection.getresponse()
        return response.status, response.read(MAX_ANSWER_BYTES)
    finally:
        connection.close()
        sock.close()  # the rest of the answer is never read


def tls_context() -> ssl.SSLContext:
    """Certificate and host name verification against the system's CAs (tests trust their own CA here)."""
    return ssl.create_default_context()


def _connect(target: WebhookTarget, deadline: float, context: ssl.SSLContext | None) -> socket.socket:
    """A connection to the first checked address that answers; TLS (SNI and certificate for the host) on https."""
    error: OSError = ConnectionError(f"no address for {target.host}")
    for address in target.addresses:
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(_remaining(deadline))
            sock.connect((str(address), target.port))
            if context is not None:
                sock.settimeout(_remaining(deadline))
                sock = context.wrap_socket(sock, server_hostname=target.host)
            return sock
        except OSError as failed:
            sock.close()
            error = failed
    raise error


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("webhook delivery deadline passed (WEBHOOK_TIMEOUT_SECONDS)")
    return left


class _DeadlineSocket:
    """The socket http.client sees: every send and receive may only wait until the one deadline.

    A socket timeout alone is per call, so a receiver sending a byte every few seconds would never trip it.
    """

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock, self.deadline = sock, deadline

    def sendall(self, data) -> None:
        self.sock.settimeout(_remaining(self.deadline))
        self.sock.sendall(data)

    def recv_into(self, buffer) -> int:
        self.sock.settimeout(_remaining(self.deadline))
        return self.sock.recv_into(buffer)

    def makefile(self, mode: str = "rb") -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self), buffer_size=MAX_ANSWER_BYTES)

    def close(self) -> None:
        pass  # http.client closes its connection while the answer is still being read; post() closes the socket


class _DeadlineReader(io.RawIOBase):
    def __init__(self, owner: _DeadlineSocket):
        self.owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self.owner.recv_into(buffer)
