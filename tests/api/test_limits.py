"""Limits, idempotency and access: every refusal is clear, and nothing is queued."""

import os
import subprocess
import sys

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient
from rest_framework.throttling import ScopedRateThrottle

from diffusion_api.jobs import services
from diffusion_api.jobs.models import Job

pytestmark = pytest.mark.django_db
JOBS = "/api/v1/jobs/"


@pytest.fixture(autouse=True)
def fresh_throttle_counters():
    cache.clear()


def test_pixel_budget(alice_client, settings, published):
    settings.JOB_MAX_PIXELS = 64 * 64
    response = alice_client.post(JOBS, {"prompt": "x", "width": 128, "height": 64}, format="json")
    assert response.status_code == 400 and "at most 4096 pixels" in response.json()["width"][0]
    assert alice_client.post(JOBS, {"prompt": "x", "width": 64, "height": 64}, format="json").status_code == 202


def test_a_job_that_cannot_finish_in_time_is_refused_with_what_fits(alice_client, settings, published):
    """768², 150 steps, 4 images, guidance 30 is within every limit, yet can only run out of time: refuse it."""
    settings.CELERY_TASK_SOFT_TIME_LIMIT = 100
    settings.JOB_COST_HEADROOM = 0.8  # 80 s
    settings.JOB_STEP_SECONDS_PER_MEGAPIXEL = 5.0  # nothing measured yet: the prior
    # 256² px × 4 images × 2 (guidance) × 150 steps = 78.6 megapixel-row steps: 393 s.
    big = {"prompt": "x", "width": 256, "height": 256, "steps": 150, "num_images": 4, "guidance_scale": 30.0}
    response = alice_client.post(JOBS, big, format="json")
    assert response.status_code == 400
    message = response.json()["non_field_errors"][0]
    assert "about 393s" in message and "more than the 80s a job may take" in message
    # 2.62 s a step at this size: 30 steps fit; at 150 steps, not even one image, but a 114² square (factor 2).
    assert "at most 30 steps at this size" in message and "at most 114×114 pixels" in message
    assert "image(s) at this size" not in message and "guidance_scale ≤ 1" not in message  # 196 s: still too long
    assert Job.objects.count() == 0 and published == []
    assert alice_client.post(JOBS, {**big, "steps": 30}, format="json").status_code == 202


def test_a_hires_job_is_admitted_by_the_cost_of_both_passes(alice_client, settings, published):
    """The hires fix's second pass runs at hires_scale² the pixels: a job whose first pass fits but whose two passes
    do not would only run out of time, so it is refused on hires_scale; without the hires pass it runs."""
    settings.CELERY_TASK_SOFT_TIME_LIMIT = 100
    settings.JOB_COST_HEADROOM = 0.8  # 80 s
    settings.JOB_STEP_SECONDS_PER_MEGAPIXEL = 5.0
    # First pass: 128² px × 1 image × 2 (guidance) × 20 steps = 0.66 megapixel-row steps: 3.3 s.
    body = {"prompt": "x", "width": 128, "height": 128, "steps": 20, "guidance_scale": 7.0}
    # Second pass at ×4: 512² × 2 rows × 20 steps × strength 1 = 10.5 megapixel-row steps: 52 s; together 56 s: fits.
    fits = {**body, "hires_scale": 4.0, "hires_strength": 1.0}
    # With 40 second-pass steps: 105 s more, 108 s in all: over the 80 s.
    too_long = {**fits, "hires_steps": 40}
    response = alice_client.post(JOBS, too_long, format="json")
    assert response.status_code == 400, response.content
    message = response.json()["hires_scale"][0]
    assert "with its hires pass (512×512, 40 steps)" in message and "about 108s" in message
    assert "more than the 80s a job may take" in message
    assert Job.objects.count() == 0 and published == []
    assert alice_client.post(JOBS, fits, format="json").status_code == 202
    assert alice_client.post(JOBS, {**too_long, "hires_scale": 1.0}, format="json").status_code == 202


def test_admission_follows_the_rate_the_workers_measured(alice_client, settings, published):
    from django.utils import timezone

    from diffusion_api.jobs.models import ModelStepCost

    settings.CELERY_TASK_SOFT_TIME_LIMIT = 100
    settings.JOB_COST_HEADROOM = 0.8
    body = {"prompt": "x", "width": 256, "height": 256, "steps": 30, "num_images": 4, "guidance_scale": 30.0}
    assert alice_client.post(JOBS, body, format="json").status_code == 202  # 78.6 s at the 5 s prior
    # A worker measured this model at 10 s per megapixel-row step over plenty of steps (99 + the prior's 1).
    ModelStepCost.objects.create(
        model="tiny", host="slow", seconds=995.0, megapixel_rows=99.0, measured_at=timezone.now()
    )
    response = alice_client.post(JOBS, body, format="json")
    assert response.status_code == 400 and "at most 15 steps" in response.json()["non_field_errors"][0]


def test_request_body_size(alice_client, settings, published):
    settings.JOB_MAX_BODY_BYTES = 1000
    response = alice_client.post(JOBS, {"prompt": "x", "negative_prompt": "y" * 2000}, format="json")
    assert response.status_code == 413 and "at most 1000 allowed" in response.json()["detail"]
    assert Job.objects.count() == 0


def test_active_jobs_per_user_is_429_with_retry_after(alice, alice_client, bob_client, settings, published):
    settings.JOB_MAX_ACTIVE_PER_USER = 2
    for _ in range(2):
        assert alice_client.post(JOBS, {"prompt": "x"}, format="json").status_code == 202
    response = alice_client.post(JOBS, {"prompt": "x"}, format="json")
    assert response.status_code == 429 and response["Retry-After"] == str(settings.JOB_RETRY_AFTER)
    assert "at most 2 may be queued or running" in response.json()["detail"]
    assert bob_client.post(JOBS, {"prompt": "x"}, format="json").status_code == 202  # others are not held up
    services.job_cancel(job=Job.objects.filter(owner=alice).first())
    assert alice_client.post(JOBS, {"prompt": "x"}, format="json").status_code == 202  # a slot came free


def test_global_queue_depth_is_503_with_retry_after(alice_client, bob_client, settings, published):
    settings.JOB_MAX_QUEUE_DEPTH = 1
    assert alice_client.post(JOBS, {"prompt": "x"}, format="json").status_code == 202
    response = bob_client.post(JOBS, {"prompt": "x"}, format="json")
    assert response.status_code == 503 and int(response["Retry-After"]) > 0
    assert "the queue is full" in response.json()["detail"]
    assert Job.objects.count() == 1


def test_create_is_throttled_per_user(alice_client, bob_client, monkeypatch, published):
    monkeypatch.setitem(ScopedRateThrottle.THROTTLE_RATES, "job_create", "3/min")
    codes = [alice_client.post(JOBS, {"prompt": "x"}, format="json").status_code for _ in range(4)]
    assert codes == [202, 202, 202, 429]
    assert bob_client.post(JOBS, {"prompt": "x"}, format="json").status_code == 202
    assert alice_client.get(JOBS).status_code == 200  # reading is not throttled


def test_token_endpoint_is_throttled(alice, monkeypatch):
    monkeypatch.setitem(ScopedRateThrottle.THROTTLE_RATES, "token", "2/min")
    client = APIClient()
    codes = [
        client.post("/api/v1/auth/token/", {"username": "alice", "password": "guess"}, format="json").status_code
        for _ in range(3)
    ]
    assert codes == [400, 400, 429]


def test_idempotency_key_returns_the_same_job(alice_client, published, django_capture_on_commit_callbacks):
    body = {"prompt": "a red circle", "steps": 3}
    with django_capture_on_commit_callbacks(execute=True):
        first = alice_client.post(JOBS, body, format="json", HTTP_IDEMPOTENCY_KEY="order-17")
    with django_capture_on_commit_callbacks(execute=True):
        again = alice_client.post(
            JOBS, {"steps": 3, "prompt": "a red circle"}, format="json", HTTP_IDEMPOTENCY_KEY="order-17"
        )
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"] and again["Idempotent-Replayed"] == "true"
    assert first.json()["parameters"]["seed"] == again.json()["parameters"]["seed"]
    assert Job.objects.count() == 1 and len(published) == 1


def test_idempotency_key_with_a_different_body_is_422(alice_client, bob_client, published):
    alice_client.post(JOBS, {"prompt": "a"}, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    response = alice_client.post(JOBS, {"prompt": "b"}, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    assert response.status_code == 422 and "different request body" in response.json()["detail"]
    # Keys belong to their user: bob's k1 is a new job.
    assert bob_client.post(JOBS, {"prompt": "b"}, format="json", HTTP_IDEMPOTENCY_KEY="k1").status_code == 202
    assert Job.objects.count() == 2


def test_every_endpoint_needs_a_token_except_token_and_health(alice, published):
    job = services.job_create(owner=alice, prompt="x")
    anonymous = APIClient()
    for method, path in [
        ("get", JOBS),
        ("post", JOBS),
        ("get", f"{JOBS}{job.id}/"),
        ("post", f"{JOBS}{job.id}/cancel/"),
        ("get", f"{JOBS}{job.id}/images/0.png"),
        ("get", "/api/v1/models/"),
        ("get", "/api/v1/schedulers/"),
    ]:
        assert getattr(anonymous, method)(path).status_code == 401, path
    assert anonymous.get("/api/v1/health/").status_code in (200, 503)
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    assert bad.get(JOBS).status_code == 401


def test_check_deploy_passes_with_production_settings():
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "diffusion_api.settings.production",
        "SECRET_KEY": "x7#Lq9!vR2@mZ4$wT8^bN6&kP1*dF3(hJ5)yC0-sG9+eA2=uV7_oI4~iQ8",
        "ALLOWED_HOSTS": "api.example.com",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_settings_refuse_to_start_without_a_secret_key():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "diffusion_api.settings.production", "SECRET_KEY": ""}
    result = subprocess.run([sys.executable, "manage.py", "check"], capture_output=True, text=True, env=env)
    assert result.returncode != 0 and "SECRET_KEY must be set in production" in result.stderr
