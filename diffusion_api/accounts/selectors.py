"""Reads: which token (and user) an API key belongs to."""

from diffusion_api.accounts.models import ApiToken
from diffusion_api.accounts.services import token_digest
from diffusion_api.queries import one_or_none


def token_for_key(*, key: str) -> ApiToken | None:
    return one_or_none(ApiToken.objects.select_related("user").filter(digest=token_digest(key)))
