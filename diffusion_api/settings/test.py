"""For the test suite: fast password hashing, fixed key. The database comes from DATABASE_URL as usual."""

from diffusion_api.settings.base import *  # noqa: F403

SECRET_KEY = "test-key"
DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}  # throttle counters per test
