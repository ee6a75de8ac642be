import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from diffusion_api.accounts.services import token_issue


@pytest.fixture(autouse=True)
def fresh_throttle_counters():
    """Throttle counters live in the cache (LocMemCache under test settings): each test starts with none."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def tiny_models_setting(settings, tiny_model_dir):
    settings.MODELS = {"tiny": tiny_model_dir}
    settings.DEFAULT_MODEL = "tiny"


@pytest.fixture(autouse=True)
def media_in_tmp(settings, tmp_path):
    """Uploads and job inputs go through the default storage: each test gets its own folder."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def published(monkeypatch):
    """Job ids handed to the broker, in order (the broker itself is not touched in unit tests)."""
    sent = []
    monkeypatch.setattr("diffusion_api.jobs.services.publish_job", lambda *, job_id, model: sent.append(job_id) or True)
    return sent


def make_user(username: str, staff: bool = False):
    return get_user_model().objects.create_user(username=username, password="pw-" + username, is_staff=staff)


@pytest.fixture
def alice(db):
    return make_user("alice")


@pytest.fixture
def bob(db):
    return make_user("bob")


@pytest.fixture
def staff(db):
    return make_user("staff", staff=True)


def client_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_issue(user=user)}")
    return client


@pytest.fixture
def alice_client(alice):
    return client_for(alice)


@pytest.fixture
def bob_client(bob):
    return client_for(bob)


@pytest.fixture
def staff_client(staff):
    return client_for(staff)


def without_events(callbacks: list) -> list:
    """On-commit callbacks other than the job-event announcements (jobs/events.announce) every transition makes."""
    return [callback for callback in callbacks if not callback.__qualname__.startswith("announce.")]
