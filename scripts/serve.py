"""`make serve`: the API on :8000 and one worker in the foreground, until Ctrl-C."""

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from services import start_api, start_worker, stop  # noqa: E402

PORT = int(os.environ.get("PORT", "8000"))


def main() -> int:
    api = start_api(PORT)
    worker = start_worker()
    print(
        f"API on http://127.0.0.1:{PORT}/api/v1/ and one worker; get a token: "
        "python manage.py issue_token USERNAME; Ctrl-C stops both"
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while api.poll() is None and worker.poll() is None:
            time.sleep(1)
        return 1
    except (KeyboardInterrupt, SystemExit):
        return 0
    finally:
        stop(api, worker)


if __name__ == "__main__":
    sys.exit(main())
