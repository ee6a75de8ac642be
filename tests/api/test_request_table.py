"""One table of request fields, defaults and limits (generator.limits): the serializer, the service and the
library read it; a deployment setting may lower a maximum, never raise it."""

import subprocess
import sys

import pytest
from django.core.exceptions import ValidationError

from diffusion_api.jobs import services
from diffusion_api.jobs.models import Job
from diffusion_api.jobs.serializers import JobCreateSerializer
from generator import limits

pytestmark = pytest.mark.django_db
JOBS = "/api/v1/jobs/"


def test_the_table_needs_no_torch():
    code = "import sys, generator.limits as t; assert t.FIELDS['width'].max == 4096; sys.exit('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_api_fields_are_the_tables_and_the_apis_own():
    table = [name for name, spec in limits.FIELDS.items() if spec.api]
    own = ["model", "loras", "webhook_url", "cache", "init_image", "mask"]
    assert list(JobCreateSerializer().fields) == [*table, *own]
    assert "guidance_rescale" not in table  # a library field the API does not offer


def test_one_max_side_a_setting_lowers_but_cannot_raise(alice, alice_client, settings, published):
    settings.JOB_MAX_PIXELS = 10**9
    settings.JOB_MAX_SIDE = 64
    assert limits.max_side(settings) == 64
    response = alice_client.post(JOBS, {"prompt": "x", "width": 128, "height": 32}, format="json")
    assert response.status_code == 400 and "must be from 8 to 64" in response.json()["width"][0]
    assert alice_client.get("/api/v1/models/").json()["limits"]["max_side"] == 64

    settings.JOB_MAX_SIDE = 100_000  # above the library's maximum: the library's wins
    assert limits.max_side(settings) == limits.MAX_SIDE == 4096
    response = alice_client.post(JOBS, {"prompt": "x", "width": 8192, "height": 32}, format="json")
    assert response.status_code == 400 and f"must be from 8 to {limits.MAX_SIDE}" in response.json()["width"][0]
    assert alice_client.get("/api/v1/models/").json()["limits"]["max_side"] == limits.MAX_SIDE
    with pytest.raises(ValidationError) as error:  # the service checks the same bound (admin, retries)
        services.job_create(owner=alice, prompt="x", width=8192)
    assert f"from 8 to {limits.MAX_SIDE} for model 'tiny'" in error.value.message_dict["width"][0]


def test_service_resolves_defaults_from_the_table(alice, published):
    job = services.job_create(owner=alice, prompt="x")
    assert (job.negative_prompt, job.num_images, job.width, job.steps, job.scheduler) == ("", 1, 32, 30, "ddim")
    assert 0 <= job.seed < limits.DRAWN_SEED_BELOW


def test_service_checks_scheduler_and_the_last_images_seed(alice, published):
    with pytest.raises(ValidationError) as error:
        services.job_create(owner=alice, prompt="x", scheduler="heun", seed=limits.MAX_SEED, num_images=2)
    assert "unknown scheduler 'heun'" in error.value.message_dict["scheduler"][0]
    assert f"must be from 0 to {limits.MAX_SEED - 1}" in error.value.message_dict["seed"][0]
    assert Job.objects.count() == 0
