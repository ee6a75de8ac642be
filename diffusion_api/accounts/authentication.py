from django.utils.translation import gettext_lazy as _
from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed

from diffusion_api.accounts import selectors


class HashedTokenAuthentication(TokenAuthentication):
    """`Authorization: Token <key>`, as before, checked against the stored digests (accounts.ApiToken)."""

    def authenticate_credentials(self, key):
        token = selectors.token_for_key(key=key)
        if token is None:
            raise AuthenticationFailed(_("Invalid token."))
        if not token.user.is_active:
            raise AuthenticationFailed(_("User inactive or deleted."))
        return token.user, token


class BearerTokenAuthentication(HashedTokenAuthentication):
    """`Authorization: Bearer <key>`: the same tokens, as OpenAI's clients send them (the /v1/ routes)."""

    keyword = "Bearer"
