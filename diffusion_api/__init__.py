"""The Django project: settings, URLs, the Celery app and the `jobs` app."""

from diffusion_api.celery import app as celery_app

__all__ = ["celery_app"]
