"""The Celery app. The web process only publishes task names; `worker.tasks` is imported by workers alone."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "diffusion_api.settings.local")

app = Celery("diffusion_api", include=["worker.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")

RUN_JOB_TASK = "worker.tasks.run_job"
DELIVER_WEBHOOK_TASK = "worker.tasks.deliver_webhook"
WEBHOOK_QUEUE = "webhooks"  # apart from "jobs", so a delivery never waits behind the GPU queue's backlog
