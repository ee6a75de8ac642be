"""`make serve`: the service as it is deployed, on this machine, until Ctrl-C.

Like docker-compose.yml: migrate once, then the API under gunicorn with uvicorn (ASGI) workers, one Celery worker
(jobs and webhooks queues) and the sweeper. On embedded defaults (a SQLite file and the file broker under VAR_DIR)
unless DATABASE_URL and REDIS_URL say otherwise. Settings: DJANGO_SETTINGS_MODULE if set, else the local ones, so a
fresh clone needs no secrets (compose runs the production ones, which want SECRET_KEY); gunicorn serves the admin's
and the API docs' static files through whitenoise either way.
"""

import os
import signal
import subprocess
import sys
import time

from diffusion_api.processes import ROOT, start_api, start_sweeper, start_worker, stop

PORT = int(os.environ.get("PORT", "8000"))
SETTINGS = os.environ.get("DJANGO_SETTINGS_MODULE") or "diffusion_api.settings.local"


def main() -> int:
    env = {"DJANGO_SETTINGS_MODULE": SETTINGS}  # wsgi.py alone would default to production
    run_env = {**os.environ, **env}
    subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, env=run_env, check=True)
    api = start_api(PORT, env=env, gunicorn=True)
    worker = start_worker(env=env)
    sweeper = start_sweeper(env=env)
    print(
        f"API (gunicorn, ASGI) on http://127.0.0.1:{PORT}/api/v1/ (admin: /admin/, docs: /api/docs/), one worker and "
        f"the sweeper, settings {SETTINGS}; get a token: python manage.py issue_token USERNAME; Ctrl-C stops all three",
        flush=True,
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
