"""The API as deployed: gunicorn runs this under uvicorn workers (processes.start_api, compose, the Dockerfile).

Under ASGI a client that waits (`Prefer: wait`, the OpenAI and A1111 routes) or streams a job's events holds no
thread or process, only a coroutine; the plain JSON routes run in Django's thread as before.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "diffusion_api.settings.production")
os.environ.setdefault("DB_POOL", "true")  # PostgreSQL connections from a pool: see DATABASES in settings/base.py
application = get_asgi_application()
