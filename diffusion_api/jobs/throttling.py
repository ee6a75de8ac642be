"""Throttles, and the one answer to "which client sent this request" that they and the admin login limit share."""

import hashlib
import ipaddress
import logging

from django.conf import settings
from rest_framework.exceptions import APIException
from rest_framework.throttling import ScopedRateThrottle, SimpleRateThrottle

logger = logging.getLogger(__name__)


def _trusted(address: str, proxies: list) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def client_ip(request) -> str:
    """The address of the client, as far as this server can know it.

    `X-Forwarded-For` is whatever the sender wrote, except for the addresses our own proxies appended to it. So walk
    the chain from the connection's peer (REMOTE_ADDR) leftwards through the header while the hop is one of
    TRUSTED_PROXIES; the first hop that is not is the client. With no trusted proxy the header is never read, so a
    client cannot make itself a new address per request (DRF keys on the whole header when NUM_PROXIES is unset).
    """
    proxies = [ipaddress.ip_network(p.strip(), strict=False) for p in settings.TRUSTED_PROXIES if p.strip()]
    address = request.META.get("REMOTE_ADDR", "")
    if not _trusted(address, proxies):
        return address
    forwarded = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    for hop in reversed(forwarded):
        address = hop
        if not _trusted(address, proxies):
            break
    return address


class FailOpenMixin:
    """Lets requests through when the throttle's cache (Redis) is down.

    Throttling protects capacity; refusing every create because the counter store is unreachable would turn a
    broker outage into an API outage, while the job itself can still be stored and published later by the sweeper.
    An APIException (a body that does not parse, for a throttle that reads it) is the client's error and still
    answers as such.
    """

    def allow_request(self, request, view) -> bool:
        try:
            return super().allow_request(request, view)
        except APIException:
            raise
        except Exception:
            logger.warning("throttle cache unavailable; letting the request through", exc_info=True)
            return True


class FailOpenScopedRateThrottle(FailOpenMixin, ScopedRateThrottle):
    """The view's `throttle_scope`, per user, or per client address (client_ip) for anonymous requests."""

    def get_ident(self, request) -> str:
        return client_ip(request)


class TokenUsernameThrottle(FailOpenMixin, SimpleRateThrottle):
    """Token attempts per username, from whatever addresses: what one guesser with many addresses runs into.

    Every attempt counts, not only failures, so that parallel guesses cannot all pass before the first failure is
    recorded. The name is trimmed and case-folded (the serializer trims it too), and hashed so any string makes a
    safe cache key.
    """

    scope = "token_username"

    def get_cache_key(self, request, view):
        data = request.data
        username = data.get("username") if hasattr(data, "get") else None
        if not isinstance(username, str) or not username.strip():
            return None  # the serializer refuses it without checking any password
        ident = hashlib.sha256(username.strip().casefold().encode()).hexdigest()
        return self.cache_format % {"scope": self.scope, "ident": ident}
