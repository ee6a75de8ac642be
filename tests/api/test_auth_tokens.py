"""API tokens are stored as SHA-256 digests, shown once when issued, and old clear-text keys are migrated."""

import hashlib
import io

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from rest_framework.test import APIClient

from diffusion_api.accounts.models import ApiToken
from tests.api.conftest import make_user

pytestmark = pytest.mark.django_db
JOBS = "/api/v1/jobs/"


@pytest.fixture(autouse=True)
def fresh_throttle_counters():
    cache.clear()


def works(key: str) -> bool:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client.get(JOBS).status_code == 200


def stored_text() -> str:
    """Every value of every token row, as a reader of the database would see it."""
    from rest_framework.authtoken.models import Token

    rows = list(ApiToken.objects.values_list()) + list(Token.objects.values_list())
    return repr(rows)


def test_the_token_endpoint_returns_a_key_stored_only_as_its_digest(alice):
    response = APIClient().post("/api/v1/auth/token/", {"username": "alice", "password": "pw-alice"}, format="json")
    assert response.status_code == 200
    key = response.json()["token"]
    assert len(key) == 40 and works(key)
    token = ApiToken.objects.get(user=alice)
    assert token.digest == hashlib.sha256(key.encode()).hexdigest() and token.prefix == key[:8]
    assert key not in stored_text()


def test_issue_token_prints_a_new_working_key_each_time(db):
    first, second = io.StringIO(), io.StringIO()
    call_command("issue_token", "carol", stdout=first)
    call_command("issue_token", "carol", stdout=second)
    keys = [first.getvalue().strip(), second.getvalue().strip()]
    assert keys[0] != keys[1] and all(works(key) for key in keys)
    assert not any(key in stored_text() for key in keys)


def test_a_wrong_or_revoked_key_is_401(alice):
    from diffusion_api.accounts import services

    key = services.token_issue(user=alice)
    assert not works(key[:-1] + ("0" if key[-1] != "0" else "1"))
    ApiToken.objects.filter(user=alice).delete()
    assert not works(key)


def test_an_inactive_users_key_is_401(alice):
    from diffusion_api.accounts import services

    key = services.token_issue(user=alice)
    alice.is_active = False
    alice.save()
    assert not works(key)


def test_a_user_keeps_only_the_newest_tokens(alice, settings):
    from diffusion_api.accounts import services

    settings.TOKEN_MAX_PER_USER = 2
    keys = [services.token_issue(user=alice) for _ in range(3)]
    assert [works(key) for key in keys] == [False, True, True]


def test_the_token_admin_shows_no_usable_key(client, alice):
    from diffusion_api.accounts import services

    key = services.token_issue(user=alice)
    admin = make_user("root", staff=True)
    admin.is_superuser = True
    admin.save()
    client.force_login(admin)
    page = client.get("/admin/accounts/apitoken/")
    assert page.status_code == 200
    html = page.content.decode()
    assert key[:8] in html and key not in html and hashlib.sha256(key.encode()).hexdigest() not in html
    # DRF's own token admin, which lists keys in clear, is gone.
    assert client.get("/admin/authtoken/tokenproxy/").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_the_migration_hashes_existing_clear_text_tokens():
    executor = MigrationExecutor(connection)
    before = [("accounts", "0001_initial")]
    executor.migrate(before)
    old_apps = executor.loader.project_state([*before, ("authtoken", "0004_alter_tokenproxy_options")]).apps
    user = old_apps.get_model("auth", "User").objects.create(username="legacy")
    key = "0123456789abcdef0123456789abcdef01234567"
    old_apps.get_model("authtoken", "Token").objects.create(key=key, user=user)

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    assert works(key)  # a client holding an old key goes on working
    assert key not in stored_text()  # and no clear-text copy is left
    assert ApiToken.objects.get(user_id=user.id).prefix == key[:8]
