"""The API container's HEALTHCHECK: GET the health URL given as the argument; exit 0 on a 200, 1 otherwise.

Standard library only (the slim image has no curl). The request carries a Host header that ALLOWED_HOSTS
accepts, so a deployment that allows only its public name is not reported unhealthy for a 400 DisallowedHost.
A 200 means the database and the broker answer; workers being down makes the API "degraded", not unhealthy
(the API still takes and serves jobs; `health/` reports the workers).
"""

import json
import os
import sys
import urllib.error
import urllib.request


def allowed_host() -> str:
    """The first name in ALLOWED_HOSTS, as a Host header Django accepts (".example.com" also allows example.com)."""
    for host in os.environ.get("ALLOWED_HOSTS", "localhost").split(","):
        host = host.strip()
        if host and host != "*":
            return host.lstrip(".")
    return "localhost"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: healthcheck.py URL", file=sys.stderr)
        return 2
    request = urllib.request.Request(argv[0], headers={"Host": allowed_host()})
    try:
        with urllib.request.urlopen(request, timeout=8) as response:
            body = json.load(response)
    except urllib.error.HTTPError as error:
        print(f"unhealthy: HTTP {error.code} {error.read()[:500]!r}")
        return 1
    except (urllib.error.URLError, OSError, ValueError) as error:
        print(f"unhealthy: {error}")
        return 1
    print(f"healthy: {body.get('status')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
