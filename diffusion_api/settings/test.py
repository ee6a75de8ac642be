"""For the test suite: fast password hashing, fixed key. The database comes from DATABASE_URL as usual."""

from diffusion_api.settings.base import *  # noqa: F403

SECRET_KEY = "test-key"
DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}  # throttle counters per test
# No worker runs in unit tests: a /sdapi/v1/ txt2img whose job is never run answers 202 after this, not 10 minutes.
A1111_WAIT_SECONDS = 0.5
