"""`make serve`: the API on :8000, one worker and the sweeper in the foreground, until Ctrl-C."""

import os
import signal
import sys
import time
from pathlib import Path

from diffusion_api.processes import start_api, start_sweeper, start_worker, stop

PORT = int(os.environ.get("PORT", "8000"))


def main() -> int:
    api = start_api(PORT)
    worker = start_worker()
    sweeper = start_sweeper()
    print(
        f"API on http://127.0.0.1:{PORT}/api/v1/ and one worker; get a token: "
        "python manage.py issue_token USERNAME; the sweeper runs beside them; Ctrl-C stops all three"
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while api.poll() is None and worker.poll() is None and sweeper.poll() is None:
            time.sleep(1)
        return 1
    except (KeyboardInterrupt, SystemExit):
        return 0
    finally:
        stop(api, worker, sweeper)


if __name__ == "__main__":
    sys.exit(main())
