"""API tokens, stored so that reading the database (or the admin) gives no usable key."""

from django.conf import settings
from django.db import models
from django.utils import timezone


class ApiToken(models.Model):
    """One API key of a user, kept as its SHA-256 digest; the key itself is shown once, when issued.

    A plain SHA-256 is enough (no slow password hasher): the keys are 160 random bits, so there is nothing to guess
    from the digest, and looking a key up by its digest costs one index probe per request.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    digest = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=8, editable=False, help_text="the key's first characters, to tell keys apart")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"
