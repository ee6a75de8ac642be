"""What production settings serve besides the API: /metrics only with METRICS_TOKEN, the docs only when asked."""

import os
import subprocess
import sys

SCRIPT = """
import django
django.setup()
from django.test import Client
client = Client()
for path in ("/metrics", "/api/schema/", "/api/docs/"):
    print(path, client.get(path, secure=True).status_code)
print("bearer", client.get("/metrics", secure=True, HTTP_AUTHORIZATION="Bearer wrong").status_code)
"""


def statuses(**environment) -> dict[str, int]:
    """Status codes of a request to each path, in a process started with production settings."""
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"METRICS_TOKEN", "API_DOCS_PUBLIC"}},
        "DJANGO_SETTINGS_MODULE": "diffusion_api.settings.production",
        "SECRET_KEY": "x7#Lq9!vR2@mZ4$wT8^bN6&kP1*dF3(hJ5)yC0-sG9+eA2=uV7_oI4~iQ8",
        "ALLOWED_HOSTS": "testserver",
        **environment,
    }
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return {name: int(code) for name, code in (line.split() for line in result.stdout.splitlines())}


def test_production_serves_no_metrics_schema_or_docs_unless_configured():
    seen = statuses()
    assert seen == {"/metrics": 404, "/api/schema/": 404, "/api/docs/": 404, "bearer": 404}


def test_production_serves_them_when_configured():
    seen = statuses(METRICS_TOKEN="s3cret", API_DOCS_PUBLIC="true")
    assert seen["/metrics"] == 401 and seen["bearer"] == 401  # the token is still needed
    assert seen["/api/schema/"] == 200 and seen["/api/docs/"] == 200
