"""The official `openai` client against the live service (gunicorn with uvicorn workers, a Celery worker, the tiny
model, PostgreSQL and Redis): every image route, links without a token, streaming, models, errors as the client's
exceptions, and a repeated request that finds its job."""

import base64
import io
import warnings

import openai
import pytest
import requests
from PIL import Image

from tests.e2e.conftest import session_for
from tests.e2e.test_service import poll

FAST = {"steps": 4}  # the project's own field, sent as the client's extra_body


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


@pytest.fixture(scope="module")
def token(service):
    return service["token"]("openai-user")


@pytest.fixture(scope="module")
def client(service, token):
    return openai.OpenAI(base_url=f"{service['base']}/v1", api_key=token, timeout=300)


def test_generate_answers_base64_pngs(client):
    result = client.images.generate(prompt="a red circle", n=2, size="32x32", extra_body={**FAST, "seed": 3})
    assert len(result.data) == 2 and result.created > 0
    assert [decoded(image.b64_json).size for image in result.data] == [(32, 32)] * 2


def test_generate_with_url_links_that_work_without_a_token(client):
    result = client.images.generate(prompt="a blue square", size="64x32", response_format="url", extra_body=FAST)
    fetched = requests.get(result.data[0].url, timeout=10)  # no Authorization header
    assert fetched.status_code == 200 and fetched.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(fetched.content)).size == (64, 32)


def test_edit_with_and_without_a_mask(client, service, token):
    image = png(Image.new("RGB", (32, 32), (230, 230, 230)))
    mask = Image.new("RGBA", (32, 32), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (16, 0, 32, 32))  # repaint the right half
    inpainted = client.images.edit(
        image=("in.png", image, "image/png"),
        mask=("mask.png", png(mask), "image/png"),
        prompt="a red circle",
        size="32x32",
        extra_body=FAST,
    )
    assert decoded(inpainted.data[0].b64_json).size == (32, 32)
    img2img = client.images.edit(image=("in.png", image, "image/png"), prompt="a red circle", extra_body=FAST)
    assert decoded(img2img.data[0].b64_json).size == (32, 32)  # size auto: the model's default
    jobs = session_for(token).get(f"{service['base']}/api/v1/jobs/", timeout=10).json()["results"]
    modes = [session_for(token).get(job["url"], timeout=10).json()["parameters"]["mode"] for job in jobs[:2]]
    assert modes == ["img2img", "inpaint"]  # newest first


def test_create_variation(client):
    image = png(Image.new("RGB", (32, 32), (20, 120, 20)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # OpenAI deprecates variations; the route stays
        result = client.images.create_variation(image=("in.png", image, "image/png"), n=1, extra_body=FAST)
    assert decoded(result.data[0].b64_json).size == (32, 32)


def test_stream_with_partial_images_ends_with_the_completed_image(client):
    stream = client.images.generate(
        prompt="a green triangle", size="32x32", stream=True, partial_images=2, extra_body={"steps": 120}
    )
    received = list(stream)
    kinds = [event.type for event in received]
    assert kinds[-1] == "image_generation.completed" and kinds.count("image_generation.completed") == 1
    # The worker makes previews while someone follows the job (every JOB_PREVIEW_INTERVAL = 0.05 s here).
    assert set(kinds[:-1]) == {"image_generation.partial_image"} and 1 <= len(kinds) - 1 <= 2, kinds
    assert decoded(received[0].b64_json).format == "PNG"
    assert decoded(received[-1].b64_json).size == (32, 32)


def test_models_list(client):
    assert [model.id for model in client.models.list()] == ["tiny"]


def test_errors_are_the_clients_exceptions(client, service):
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(prompt="x", size="33x33")
    assert refused.value.status_code == 400 and refused.value.param == "size"
    with pytest.raises(openai.BadRequestError) as unknown:
        client.images.generate(prompt="x", model="dall-e-3")
    assert unknown.value.code == "model_not_found"
    stranger = openai.OpenAI(base_url=f"{service['base']}/v1", api_key="not-a-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.models.list()


def test_a_retried_request_does_not_queue_a_second_job(client, service, token):
    session = session_for(token)
    before = session.get(f"{service['base']}/api/v1/jobs/", timeout=10).json()["count"]
    body = {"prompt": "a yellow circle", "size": "32x32", "extra_body": FAST}
    first = client.images.generate(**body)
    retried = client.images.generate(**body, extra_headers={"x-stainless-retry-count": "1"})
    assert retried.data[0].b64_json == first.data[0].b64_json
    assert session.get(f"{service['base']}/api/v1/jobs/", timeout=10).json()["count"] == before + 1


def test_a_client_that_goes_away_mid_wait_leaves_a_job_that_finishes(service, token):
    session = session_for(token)
    jobs_url = f"{service['base']}/api/v1/jobs/"
    before = session.get(jobs_url, timeout=10).json()["count"]
    body = {"prompt": "a red square", "size": "64x64", "steps": 60}
    with pytest.raises(requests.ReadTimeout):
        requests.post(
            f"{service['base']}/v1/images/generations",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=(5, 1.5),
        )
    listing = session.get(jobs_url, timeout=10).json()
    assert listing["count"] == before + 1
    job = poll(session, listing["results"][0]["url"], lambda j: j["status"] not in ("queued", "running"))
    assert job["status"] == "succeeded" and job["parameters"]["steps"] == 60


def test_a_failed_job_is_the_clients_error_and_is_not_retried(client, service, token):
    """A prompt of more windows than the worker encodes (8 of 75 tokens) is accepted by the API, which counts
    characters only, and the worker fails the job before any compute."""
    session = session_for(token)
    jobs_url = f"{service['base']}/api/v1/jobs/"
    before = session.get(jobs_url, timeout=10).json()["count"]
    too_long = "red " * 601  # the service's JOB_MAX_PROMPT_CHARS is 3000 (conftest.py)
    with pytest.raises(openai.InternalServerError) as failed:
        client.images.generate(prompt=too_long, size="32x32", extra_body=FAST)
    assert "tokens" in failed.value.message and failed.value.code == "job_failed"
    assert session.get(jobs_url, timeout=10).json()["count"] == before + 1  # x-should-retry: false was obeyed
    with pytest.raises(openai.APIError, match="tokens"):
        list(client.images.generate(prompt=too_long, size="32x32", stream=True, extra_body=FAST))
