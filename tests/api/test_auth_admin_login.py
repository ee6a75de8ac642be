"""The admin login is rate-limited (django-axes): by username from any address, and by address for any username."""

import pytest
from django.contrib.auth.backends import ModelBackend

from tests.api.conftest import make_user

pytestmark = pytest.mark.django_db
LOGIN = "/admin/login/?next=/admin/"


@pytest.fixture
def root(db):
    return make_user("root", staff=True)


@pytest.fixture
def password_checks(monkeypatch):
    calls = []
    original = ModelBackend.authenticate

    def counting(self, request, username=None, password=None, **kwargs):
        calls.append(username)
        return original(self, request, username=username, password=password, **kwargs)

    monkeypatch.setattr(ModelBackend, "authenticate", counting)
    return calls


def log_in(client, username, password, address):
    return client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=address)


def logged_in(client) -> bool:
    return client.get("/admin/").status_code == 200


def test_wrong_passwords_from_many_addresses_lock_the_username(client, root, settings, password_checks):
    answers = [
        log_in(client, "root", "guess", f"203.0.113.{i}").status_code for i in range(settings.AXES_FAILURE_LIMIT + 5)
    ]
    assert answers[: settings.AXES_FAILURE_LIMIT - 1] == [200] * (settings.AXES_FAILURE_LIMIT - 1)  # the form again
    assert answers[settings.AXES_FAILURE_LIMIT :] == [429] * 5
    assert len(password_checks) == settings.AXES_FAILURE_LIMIT  # a locked-out attempt hashes no password
    # The right password, from a fresh address, is refused too while the lock lasts.
    assert log_in(client, "root", "pw-root", "198.51.100.1").status_code == 429
    assert not logged_in(client)


def test_wrong_passwords_from_one_address_lock_that_address(client, root, settings):
    make_user("other", staff=True)
    for i in range(settings.AXES_FAILURE_LIMIT):
        log_in(client, f"nobody{i}", "guess", "203.0.113.9")
    assert log_in(client, "other", "pw-other", "203.0.113.9").status_code == 429
    assert not logged_in(client)
    assert log_in(client, "root", "pw-root", "198.51.100.2").status_code == 302 and logged_in(client)


def test_x_forwarded_for_does_not_unlock_an_address(client, root, settings):
    for i in range(settings.AXES_FAILURE_LIMIT):
        client.post(
            LOGIN,
            {"username": f"nobody{i}", "password": "x"},
            REMOTE_ADDR="203.0.113.10",
            HTTP_X_FORWARDED_FOR=f"1.1.1.{i}",
        )
    response = client.post(
        LOGIN, {"username": "root", "password": "pw-root"}, REMOTE_ADDR="203.0.113.10", HTTP_X_FORWARDED_FOR="9.9.9.9"
    )
    assert response.status_code == 429 and not logged_in(client)


def test_a_success_before_the_limit_resets_the_count(client, root, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        log_in(client, "root", "guess", "203.0.113.11")
    assert log_in(client, "root", "pw-root", "203.0.113.11").status_code == 302
    client.logout()
    assert log_in(client, "root", "guess", "203.0.113.11").status_code == 200  # counting starts again
    assert log_in(client, "root", "pw-root", "203.0.113.11").status_code == 302


def test_logging_in_without_a_request_still_works(client, root):
    """Client.login and scripts authenticate with no HTTP request: nothing to rate-limit, and nothing breaks."""
    assert client.login(username="root", password="pw-root") and logged_in(client)
