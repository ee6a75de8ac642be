"""Schemathesis against the OpenAPI schema, every operation: no 5xx, and every answer matches the schema."""

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from diffusion_api.accounts.services import token_issue

schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]  # not negative_data_rejection: unknown query parameters are ignored, as REST clients expect


@pytest.fixture
def keep_test_connection():
    """Like Django's test client: requests must not close the connection that holds the test's transaction."""
    for signal in (signals.request_started, signals.request_finished):
        signal.disconnect(close_old_connections)
    yield
    for signal in (signals.request_started, signals.request_finished):
        signal.connect(close_old_connections)


@pytest.fixture
def token(django_user_model, db, monkeypatch, tiny_model_dir, settings, keep_test_connection, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MODELS = {"tiny": tiny_model_dir}
    settings.DEFAULT_MODEL = "tiny"
    monkeypatch.setattr("diffusion_api.jobs.services.publish_job", lambda *, job_id, model: True)
    user = django_user_model.objects.create_user("fuzzer", password="fuzz-pw")
    return token_issue(user=user)


@pytest.mark.fuzz
@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_matches_its_schema(case, token):
    case.call_and_validate(headers={"Authorization": f"Token {token}"}, checks=CHECKS)


def test_finished_job_answers_match_the_schema(token, django_user_model):
    """Random ids are mostly 404s; check the answers of a real succeeded and a real queued job too."""
    from diffusion_api.jobs import services
    from tests.api.test_views import png

    owner = django_user_model.objects.get(username="fuzzer")
    done = services.job_create(owner=owner, prompt="x", num_images=2)
    claim = services.job_claim(job_id=done.id, worker="w").worker
    images = [{"index": i, "seed": done.seed + i, "width": 32, "height": 32, "png": png()} for i in range(2)]
    services.job_succeed(job_id=done.id, worker=claim, images=images)
    waiting = services.job_create(owner=owner, prompt="y")
    from tests.api.test_inputs import encode

    mask = encode(Image.new("L", (32, 32), 255))
    with_inputs = services.job_create(
        owner=owner, prompt="z", init_image=services.ImageInput(data=png()), mask=services.ImageInput(data=mask)
    )
    headers = {"Authorization": f"Token {token}"}
    calls = [
        ("/api/v1/jobs/{job_id}/", "GET", {"job_id": str(done.id)}),
        ("/api/v1/jobs/{job_id}/", "GET", {"job_id": str(waiting.id)}),
        ("/api/v1/jobs/{job_id}/images/{index}.png", "GET", {"job_id": str(done.id), "index": 1}),
        ("/api/v1/jobs/{job_id}/cancel/", "POST", {"job_id": str(waiting.id)}),
        ("/api/v1/jobs/{job_id}/cancel/", "POST", {"job_id": str(done.id)}),  # 409
        ("/api/v1/jobs/{job_id}/", "GET", {"job_id": str(with_inputs.id)}),  # inputs with hashes and URLs
        ("/api/v1/jobs/{job_id}/inputs/{name}.png", "GET", {"job_id": str(with_inputs.id), "name": "mask"}),
        ("/api/v1/jobs/{job_id}/inputs/{name}.png", "GET", {"job_id": str(done.id), "name": "init_image"}),  # 404
    ]
    for path, method, parameters in calls:
        case = schema[path][method].Case(path_parameters=parameters)
        response = case.call_and_validate(headers=headers, checks=CHECKS)
        assert response.status_code < 500
    listing = schema["/api/v1/jobs/"]["GET"].Case(query={"status": "succeeded"})
    assert listing.call_and_validate(headers=headers, checks=CHECKS).json()["count"] == 1
