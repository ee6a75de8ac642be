"""Who is calling /sdapi/v1/: the service's token (`Token <key>` or `Bearer <key>`), or HTTP Basic with the
user's username and password, as A1111's `--api-auth` takes.

Basic sends the password with every request. Checking it costs a slow password hash, so a successful check is
remembered for BASIC_REMEMBER_SECONDS under a keyed digest of the credentials (never the password itself), and
forgotten as soon as the user's password changes. Failures are counted per username and per client address: after
ADMIN_LOGIN_FAILURE_LIMIT (AXES_FAILURE_LIMIT) of either within ADMIN_LOGIN_COOLOFF_MINUTES, Basic attempts for that
username or from that address are refused (429 with Retry-After) without hashing the password, the same limits
django-axes applies to admin logins.
"""

import hashlib
import hmac

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from rest_framework.authentication import BasicAuthentication
from rest_framework.exceptions import AuthenticationFailed, Throttled

from diffusion_api.jobs.throttling import client_ip

BASIC_REMEMBER_SECONDS = 300


class LimitedBasicAuthentication(BasicAuthentication):
    www_authenticate_realm = "sdapi"

    def authenticate_credentials(self, userid, password, request=None):
        remembered = _cached(_remember_key(userid, password))
        if remembered is not None:
            user = get_user_model().objects.filter(pk=remembered[0], is_active=True).first()
            if user is not None and _digest(user.password) == remembered[1]:
                return user, None
        counters = [f"a1111-basic-fail:user:{_digest(userid.casefold())}"]
        if request is not None:
            counters.append(f"a1111-basic-fail:ip:{_digest(client_ip(request))}")
        cooloff = int(settings.AXES_COOLOFF_TIME.total_seconds())
        if any((_cached(key) or 0) >= settings.AXES_FAILURE_LIMIT for key in counters):
            raise Throttled(wait=cooloff, detail="too many failed logins; try again later")
        try:
            user, _ = super().authenticate_credentials(userid, password, request)
        except AuthenticationFailed:
            for key in counters:
                _increment(key, cooloff)
            raise AuthenticationFailed("Incorrect username or password") from None
        try:
            cache.set(_remember_key(userid, password), (user.pk, _digest(user.password)), BASIC_REMEMBER_SECONDS)
        except Exception:  # the cache (Redis) is down: the next request hashes the password again
            pass
        return user, None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _remember_key(userid: str, password: str) -> str:
    mac = hmac.new(settings.SECRET_KEY.encode(), f"{userid}\0{password}".encode(), hashlib.sha256).hexdigest()
    return f"a1111-basic-ok:{mac}"


def _cached(key: str):
    try:
        return cache.get(key)
    except Exception:  # the cache (Redis) is down: nothing remembered, nothing counted (fail open, as throttles)
        return None


def _increment(key: str, timeout: int) -> None:
    try:
        if not cache.add(key, 1, timeout):
            cache.incr(key)
    except Exception:
        pass
