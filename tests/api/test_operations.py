import json
import logging

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from diffusion_api.jobs import services
from diffusion_api.logs import JobContextFilter, JsonFormatter, job_context

pytestmark = pytest.mark.django_db


def metric_values(text: str) -> dict:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_in_prometheus_format(alice, published):
    done = services.job_create(owner=alice, prompt="x", steps=4)
    claim = services.job_claim(job_id=done.id, worker="w").worker
    services.job_succeed(job_id=done.id, worker=claim, images=[])
    services.job_create(owner=alice, prompt="y")
    response = Client().get("/metrics")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain; version=0.0.4")
    values = metric_values(response.content.decode())
    assert values[("diffusion_jobs", (("status", "queued"),))] == 1
    assert values[("diffusion_jobs", (("status", "succeeded"),))] == 1
    assert values[("diffusion_queue_depth", ())] == 1
    assert values[("diffusion_job_seconds_count", ())] == 1
    assert values[("diffusion_step_seconds_count", ())] == 4
    assert values[("diffusion_workers_alive", ())] == 0


def test_metrics_token(settings):
    settings.METRICS_TOKEN = "scrape-me"
    assert Client().get("/metrics").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me").status_code == 200


def test_logs_are_json_lines_with_the_job_id():
    record = logging.LogRecord("worker.tasks", logging.INFO, __file__, 1, "claimed %s", ("x",), None)
    with job_context("1234-abcd"):
        JobContextFilter().filter(record)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["job_id"] == "1234-abcd" and entry["message"] == "claimed x" and entry["level"] == "INFO"


def test_requests_about_a_job_log_its_id(alice, alice_client, published, caplog):
    job = services.job_create(owner=alice, prompt="x")
    caplog.handler.addFilter(JobContextFilter())
    with caplog.at_level(logging.WARNING, logger="django.request"):
        alice_client.post(f"/api/v1/jobs/{job.id}/cancel/")
        alice_client.post(f"/api/v1/jobs/{job.id}/cancel/")  # 409 → django.request logs a warning
    conflict = [r for r in caplog.records if r.name == "django.request"]
    assert conflict and conflict[-1].job_id == str(job.id)
