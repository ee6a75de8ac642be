"""Behind a TLS-terminating proxy, with secrets from the environment. DEBUG stays off."""

import os

from django.core.exceptions import ImproperlyConfigured

from diffusion_api.settings.base import *  # noqa: F403
from diffusion_api.settings.base import env_bool, env_int

if not os.environ.get("SECRET_KEY"):
    raise ImproperlyConfigured("SECRET_KEY must be set in production")
DEBUG = False
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
SECURE_REDIRECT_EXEMPT = [r"^api/v1/health/$"]  # load-balancer probes speak plain HTTP inside the network
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SECURE_CONTENT_TYPE_NOSNIFF = True

# What production exposes besides the API: nothing that maps the service or its load unless configured.
METRICS_REQUIRE_TOKEN = True  # /metrics is a 404 until METRICS_TOKEN is set, then wants that bearer token
API_DOCS_PUBLIC = env_bool("API_DOCS_PUBLIC", False)  # the schema and Swagger UI: 404 unless API_DOCS_PUBLIC=true
