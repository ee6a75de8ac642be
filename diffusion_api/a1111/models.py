"""What A1111's `POST options` stores: one row of options per user."""

from django.conf import settings
from django.db import models


class UserOptions(models.Model):
    """A user's A1111 options. `sd_model_checkpoint` (a model name) is the model of their /sdapi/v1/ jobs that name
    none; the other keys are kept as sent and read back by `GET options`, and change nothing else."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="a1111_options")
    options = models.JSONField(default=dict)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "A1111 options"
        verbose_name_plural = "A1111 options"

    def __str__(self) -> str:
        return f"A1111 options of {self.user}"
