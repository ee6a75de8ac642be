from axes.backends import AxesStandaloneBackend
from django.urls import reverse


class AdminLoginLimit(AxesStandaloneBackend):
    """django-axes' lockout check, first in AUTHENTICATION_BACKENDS so a locked-out login hashes no password.

    Axes insists on an HTTP request; an authentication without one (Client.login, a shell, a script) has no client
    to rate-limit, so it goes straight on to the next backend.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


def only_admin_logins(request, credentials) -> bool:
    """AXES_WHITELIST_CALLABLE: axes records and limits admin logins only.

    The API's token endpoint has its own throttles (per client and per username, a 429 with Retry-After), and its
    failures should neither write axes rows nor lock a user out of the admin.
    """
    return not (getattr(request, "path", "") or "").startswith(reverse("admin:index"))
