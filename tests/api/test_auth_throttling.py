"""The token endpoint's limits: per client address (X-Forwarded-For trusted only from configured proxies) and per
username, both decided before any password is hashed."""

import os

import pytest
from django.contrib.auth.backends import ModelBackend
from django.core.cache import cache
from django.test import RequestFactory
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

pytestmark = pytest.mark.django_db
TOKEN = "/api/v1/auth/token/"


@pytest.fixture(autouse=True)
def fresh_throttle_counters():
    cache.clear()


@pytest.fixture
def rates(monkeypatch):
    """Small limits for the test; both scopes of the token endpoint."""

    def set_rates(client="100/min", username="100/hour"):
        monkeypatch.setitem(SimpleRateThrottle.THROTTLE_RATES, "token", client)
        monkeypatch.setitem(SimpleRateThrottle.THROTTLE_RATES, "token_username", username)

    return set_rates


@pytest.fixture
def password_checks(monkeypatch):
    """How many times a password was checked (each one is a slow hash in production)."""
    calls = []
    original = ModelBackend.authenticate

    def counting(self, request, username=None, password=None, **kwargs):
        calls.append(username)
        return original(self, request, username=username, password=password, **kwargs)

    monkeypatch.setattr(ModelBackend, "authenticate", counting)
    return calls


def attempt(username, password, **extra):
    return APIClient().post(TOKEN, {"username": username, "password": password}, format="json", **extra).status_code


def test_a_changing_x_forwarded_for_does_not_escape_the_client_throttle(alice, rates, password_checks):
    rates(client="3/min")
    codes = [attempt("alice", "guess", HTTP_X_FORWARDED_FOR=f"198.51.100.{i}") for i in range(10)]
    assert codes == [400] * 3 + [429] * 7
    assert len(password_checks) == 3  # a refused attempt costs no password hash
    assert attempt("alice", "pw-alice", HTTP_X_FORWARDED_FOR="198.51.100.99") == 429


def test_attempts_are_limited_per_username_from_any_address(alice, bob, rates, password_checks):
    rates(username="3/hour")
    codes = [attempt("alice", "guess", REMOTE_ADDR=f"203.0.113.{i}") for i in range(6)]
    assert codes == [400] * 3 + [429] * 3
    assert len(password_checks) == 3
    # The right password does not get through either until the window has passed; other users are not held up.
    assert attempt("alice", "pw-alice", REMOTE_ADDR="203.0.113.200") == 429
    assert attempt(" ALICE ", "guess", REMOTE_ADDR="203.0.113.201") == 429  # the same name, however it is spelled
    assert attempt("bob", "pw-bob", REMOTE_ADDR="203.0.113.202") == 200


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_limit(alice, bob, rates, settings):
    settings.TRUSTED_PROXIES = ["127.0.0.1", "10.0.0.0/8"]
    rates(client="2/min")
    first = {"HTTP_X_FORWARDED_FOR": "192.0.2.1, 10.1.2.3"}  # the client, then an inner proxy
    assert [attempt("alice", "guess", **first) for _ in range(3)] == [400, 400, 429]
    # Another client behind the same proxy is not held up by the first one's attempts.
    assert attempt("bob", "pw-bob", HTTP_X_FORWARDED_FOR="192.0.2.2") == 200
    # An address the first client prepends itself is not believed: the proxy appended the real one.
    assert attempt("bob", "pw-bob", HTTP_X_FORWARDED_FOR="192.0.2.77, 192.0.2.1") == 429


@pytest.mark.parametrize(
    ("trusted", "remote", "forwarded", "expected"),
    [
        ([], "198.51.100.7", None, "198.51.100.7"),
        ([], "198.51.100.7", "1.2.3.4", "198.51.100.7"),  # no trusted proxy: the header is the client's own words
        (["127.0.0.1"], "198.51.100.7", "1.2.3.4", "198.51.100.7"),  # not sent by the proxy
        (["127.0.0.1"], "127.0.0.1", "1.2.3.4", "1.2.3.4"),
        (["127.0.0.1"], "127.0.0.1", "6.6.6.6, 1.2.3.4", "1.2.3.4"),  # the rightmost untrusted address
        (["127.0.0.1", "10.0.0.0/8"], "127.0.0.1", "6.6.6.6, 1.2.3.4, 10.0.0.5", "1.2.3.4"),
        (["127.0.0.1"], "127.0.0.1", "", "127.0.0.1"),
        (["127.0.0.1"], "127.0.0.1", " 2001:db8::1 ", "2001:db8::1"),
        (["::1"], "::1", "2001:db8::2", "2001:db8::2"),
    ],
)
def test_client_ip(settings, trusted, remote, forwarded, expected):
    from diffusion_api.jobs.throttling import client_ip

    settings.TRUSTED_PROXIES = trusted
    extra = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    assert client_ip(RequestFactory().get("/", **extra)) == expected


def test_a_malformed_body_is_still_a_400_not_a_throttle_error(alice, rates):
    rates(username="1/hour")
    client = APIClient()
    assert client.post(TOKEN, "[1, 2]", content_type="application/json").status_code == 400
    assert client.post(TOKEN, {"username": ["alice"], "password": "x"}, format="json").status_code == 400
    assert client.post(TOKEN, "{nope", content_type="application/json").status_code == 400


def test_the_token_endpoint_lets_attempts_through_when_its_cache_is_down(alice, monkeypatch):
    def down(*args, **kwargs):
        raise ConnectionError("Redis is restarting")

    monkeypatch.setattr("rest_framework.throttling.SimpleRateThrottle.cache.get", down)
    assert attempt("alice", "pw-alice") == 200


@pytest.mark.servers
def test_the_limits_hold_on_the_redis_cache_the_api_processes_share(alice, rates, settings):
    """As deployed: the counters live in Redis (where the bypass was found), not in a per-process memory cache."""
    url = os.environ.get("REDIS_URL")
    assert url, "this test needs REDIS_URL: the Redis the API processes share"
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url, "KEY_PREFIX": "auth"}
    }
    cache.clear()
    try:
        rates(client="3/min", username="5/hour")
        codes = [attempt("alice", "guess", HTTP_X_FORWARDED_FOR=f"198.51.100.{i}") for i in range(4)]
        assert codes == [400, 400, 400, 429]
        codes = [attempt("alice", "guess", REMOTE_ADDR=f"203.0.113.{i}") for i in range(3)]
        # Four attempts at alice so far (the client's throttle refused the fourth; it still counts for the name).
        assert codes == [400, 429, 429]
    finally:
        cache.clear()
