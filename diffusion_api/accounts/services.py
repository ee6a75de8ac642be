"""Writes: issuing API tokens."""

import hashlib
import secrets

from django.conf import settings
from django.db import transaction

from diffusion_api.accounts.models import ApiToken


def token_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@transaction.atomic
def token_issue(*, user) -> str:
    """A new key for the user, returned once: only its digest is stored.

    Earlier keys stay valid (each client that logs in gets its own), up to the newest TOKEN_MAX_PER_USER; older
    ones are revoked, so a script that logs in on every run cannot pile up live keys.
    """
    key = secrets.token_hex(20)  # 40 hex characters, the shape DRF's keys had
    ApiToken.objects.create(user=user, digest=token_digest(key), prefix=key[:8])
    newest = list(ApiToken.objects.filter(user=user).values_list("id", flat=True)[: settings.TOKEN_MAX_PER_USER])
    ApiToken.objects.filter(user=user).exclude(id__in=newest).delete()
    return key
