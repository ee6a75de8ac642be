"""Schemathesis against the OpenAPI schema of /sdapi/v1/ (as tests/api/test_fuzz.py does for /api/v1/): no 5xx, and
every answer matches the schema. The jobs it creates end at once (the worker's own calls), so the txt2img/img2img
answers of succeeded jobs are checked too."""

import base64
import io

import pytest
import schemathesis
from asgiref.sync import sync_to_async
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, settings
from PIL import Image
from schemathesis import GenerationMode

from diffusion_api.accounts.services import token_issue
from diffusion_api.jobs import services
from diffusion_api.jobs.models import Job, JobStatus
from tests.api.test_fuzz import CHECKS, keep_test_connection  # noqa: F401  (a fixture)

schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application()).include(path_regex="^/sdapi/v1/")
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def succeed(job_id) -> None:
    job = Job.objects.get(id=job_id)
    if job.status == JobStatus.QUEUED:
        claim = services.job_claim(job_id=job_id, worker="fuzz").worker
        images = [
            {"index": i, "seed": job.seed + i, "width": 32, "height": 32, "png": png()} for i in range(job.num_images)
        ]
        services.job_succeed(job_id=job_id, worker=claim, images=images)


@pytest.fixture
def token(django_user_model, db, monkeypatch, tiny_model_dir, settings, keep_test_connection, tmp_path):  # noqa: F811
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MODELS = {"tiny": tiny_model_dir}
    settings.DEFAULT_MODEL = "tiny"
    monkeypatch.setattr("diffusion_api.jobs.services.publish_job", lambda *, job_id, model: True)

    async def wait_for_end(job_id, timeout):
        await sync_to_async(succeed)(job_id)
        return True

    monkeypatch.setattr("diffusion_api.jobs.events.wait_for_end", wait_for_end)
    user = django_user_model.objects.create_user("a1111-fuzzer", password="fuzz-pw")
    return token_issue(user=user)


@pytest.mark.fuzz
@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_sdapi_matches_its_schema(case, token):
    case.call_and_validate(headers={"Authorization": f"Token {token}"}, checks=CHECKS)


def test_generation_answers_match_the_schema(token):
    """Fuzzed bodies are mostly refused; check the answers of real requests too."""
    headers = {"Authorization": f"Token {token}"}
    image = "data:image/png;base64," + base64.b64encode(png()).decode()
    calls = [
        ("/sdapi/v1/txt2img", {"prompt": "x", "width": 32, "height": 32, "steps": 2, "sampler_name": "Euler a"}),
        ("/sdapi/v1/txt2img", {"prompt": "x", "steps": 2, "enable_hr": True, "hr_scale": 1.5}),
        ("/sdapi/v1/img2img", {"prompt": "x", "steps": 2, "init_images": [image], "mask": image}),
        ("/sdapi/v1/png-info", {"image": image}),
    ]
    for path, body in calls:
        case = schema[path]["POST"].Case(body=body, media_type="application/json")
        response = case.call_and_validate(headers=headers, checks=CHECKS)
        assert response.status_code == 200, response.text
