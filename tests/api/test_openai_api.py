"""OpenAI's Images API at /v1/ without servers: field mapping, refusals in OpenAI's envelope, auth, retries, signed
links, streaming. A job "runs" when the waiting view awaits events.wait_for_end: the fake below claims it and records
its outcome through the same services a worker calls, then the view reads what was stored."""

import base64
import io
import json

import pytest
import schemathesis
from asgiref.sync import async_to_sync, sync_to_async
from django.core.cache import cache
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from PIL import Image
from rest_framework.test import APIClient
from schemathesis import GenerationMode

from diffusion_api.accounts.services import token_issue
from diffusion_api.jobs import events, selectors, services
from diffusion_api.jobs.models import Job, JobMode, JobProtocol, JobStatus
from diffusion_api.jobs.throttling import FailOpenScopedRateThrottle
from tests.api.test_fuzz import CHECKS, keep_test_connection  # noqa: F401 (a fixture)


def png(width=32, height=32, mode="RGB", colour=(200, 10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def bearer(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_issue(user=user)}")
    return client


@pytest.fixture
def client(alice):
    return bearer(alice)


def run_job(job_id, outcome="succeeded"):
    """What a worker does: claim the job, then record its outcome (one PNG per image on success)."""
    job = Job.objects.get(id=job_id)
    if job.status != JobStatus.QUEUED:
        return
    claim = services.job_claim(job_id=job_id, worker="w").worker
    images = [
        {"index": i, "seed": job.seed + i, "width": job.width, "height": job.height, "png": png(job.width, job.height)}
        for i in range(job.num_images)
    ]
    error = "CUDA out of memory" if outcome == "failed" else ""
    if outcome == "canceled":
        Job.objects.filter(id=job_id).update(cancel_requested=True)
    services.job_record_outcome(job_id=job_id, worker=claim, outcome=outcome, images=images, error=error)


@pytest.fixture
def worker(monkeypatch, published):
    """Jobs end while the view waits; `worker.outcome` says how. Records the ids waited on."""

    class Worker:
        outcome = "succeeded"
        waited = []

    async def wait_for_end(job_id, timeout):
        Worker.waited.append(job_id)
        await sync_to_async(run_job)(job_id, Worker.outcome)
        return True

    monkeypatch.setattr(events, "wait_for_end", wait_for_end)
    return Worker


def generate(client, headers=None, **body):
    return client.post("/v1/images/generations", body, format="json", **(headers or {}))


def assert_refused(response, param, status=400):
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param, error
    return error


def test_a_generation_maps_every_field_and_answers_base64_pngs(client, worker, image_store):
    body = dict(
        prompt="a red circle",
        n=2,
        size="32x48",
        negative_prompt="blue",
        seed=7,
        steps=3,
        guidance_scale=2.0,
        scheduler="euler",
        user="someone",
        quality="hd",
        style="vivid",
        background="opaque",
        output_format="png",
        moderation="low",
        output_compression=100,
    )
    response = generate(client, **body)
    assert response.status_code == 200, response.content
    job = Job.objects.get()
    assert job.protocol == JobProtocol.OPENAI and job.mode == JobMode.TXT2IMG
    assert (job.prompt, job.negative_prompt, job.num_images, job.width, job.height) == (
        "a red circle",
        "blue",
        2,
        32,
        48,
    )
    assert (job.seed, job.steps, job.guidance_scale, job.scheduler, job.model) == (7, 3, 2.0, "euler", "tiny")
    answer = response.json()
    assert answer["created"] == int(job.created_at.timestamp()) and answer["size"] == "32x48"
    assert [Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))).size for d in answer["data"]] == [(32, 48)] * 2


def test_size_auto_and_the_defaults_are_the_models(client, worker, tiny_model_dir):
    assert generate(client, prompt="x", size="auto").status_code == 200
    job = Job.objects.get()
    assert (job.width, job.height, job.num_images) == (32, 32, 1)  # the tiny model's sample size
    assert generate(client, prompt="y", model="tiny", n=None).status_code == 200  # null = OpenAI's default


@pytest.mark.parametrize(
    "body, param",
    [
        ({"size": "big"}, "size"),
        ({"size": "33x32"}, "size"),  # not a multiple of the VAE factor
        ({"size": "2048x2048"}, "size"),  # over JOB_MAX_PIXELS
        ({"response_format": "jpeg_url"}, "response_format"),
        ({"n": 5}, "n"),  # over JOB_MAX_IMAGES
        ({"n": 0}, "n"),
        ({"n": "2"}, "n"),  # JSON types are strict, as in the native API
        ({"model": "dall-e-3"}, "model"),
        ({"background": "transparent"}, "background"),
        ({"output_format": "webp"}, "output_format"),
        ({"quality": "ultra"}, "quality"),
        ({"colour": "red"}, "colour"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"steps": 0}, "steps"),
        ({"scheduler": "nope"}, "scheduler"),
        ({"partial_images": 4, "stream": True}, "partial_images"),
        ({"stream": "yes"}, "stream"),
    ],
)
def test_bad_input_is_a_400_naming_the_param_and_queues_nothing(client, published, body, param):
    error = assert_refused(generate(client, **{"prompt": "x", **body}), param)
    assert error["type"] == "invalid_request_error"
    assert Job.objects.count() == 0 and published == []


def test_an_unknown_model_says_model_not_found(client):
    assert assert_refused(generate(client, prompt="x", model="dall-e-2"), "model")["code"] == "model_not_found"


def test_a_body_that_is_not_json_is_a_400_envelope(client):
    response = client.post("/v1/images/generations", "{nope", content_type="application/json")
    assert_refused(response, None)


def test_a_job_over_the_time_budget_is_refused_before_it_is_queued(client, settings):
    settings.JOB_STEP_SECONDS_PER_MEGAPIXEL = 1e9
    error = assert_refused(generate(client, prompt="x"), None)
    assert "fit" in error["message"] or "time" in error["message"]


def test_auth_is_bearer_and_failures_are_401_envelopes(alice, worker):
    anonymous = APIClient()
    error = assert_refused(generate(anonymous, prompt="x"), None, status=401)
    assert error["code"] == "invalid_api_key"
    wrong = APIClient()
    wrong.credentials(HTTP_AUTHORIZATION="Bearer not-a-token")
    assert_refused(wrong.get("/v1/models"), None, status=401)
    native = APIClient()
    native.credentials(HTTP_AUTHORIZATION=f"Token {token_issue(user=alice)}")
    assert_refused(native.get("/v1/models"), None, status=401)  # OpenAI's protocol: Bearer
    assert native.get("/api/v1/models/").status_code == 200  # the native API is unchanged
    assert bearer(alice).get("/v1/models").status_code == 200


def test_unknown_paths_and_methods_answer_in_the_envelope(client):
    assert_refused(client.get("/v1/images/nothing"), None, status=404)
    assert_refused(client.get("/v1/images/generations"), None, status=405)


def test_models_list_and_retrieve_in_openais_shape(client, settings, tiny_model_dir):
    settings.MODELS = {"tiny": tiny_model_dir, "missing": tiny_model_dir / "nowhere"}
    listing = client.get("/v1/models").json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["tiny", "missing"]
    assert set(listing["data"][0]) == {"id", "object", "created", "owned_by"} and listing["data"][0]["created"] > 0
    assert client.get("/v1/models/tiny").json()["id"] == "tiny"
    assert assert_refused(client.get("/v1/models/dall-e-3"), "model", status=404)["code"] == "model_not_found"


def test_a_retried_request_gets_the_same_job(client, worker, settings):
    first = generate(client, prompt="x", size="32x32")
    again = generate(client, prompt="x", size="32x32")
    assert Job.objects.count() == 1 and first.json()["data"] == again.json()["data"]
    settings.OPENAI_RETRY_WINDOW = 0  # past the window: the same body is a new request ...
    generate(client, prompt="x", size="32x32")
    assert Job.objects.count() == 2
    generate(client, {"HTTP_X_STAINLESS_RETRY_COUNT": "1"}, prompt="x", size="32x32")
    assert Job.objects.count() == 2  # ... unless the client says it retries: within OPENAI_WAIT_SECONDS a try
    generate(client, prompt="x", size="64x32")
    assert Job.objects.count() == 3  # another body is another job


def test_a_retry_does_not_reuse_a_failed_job(client, worker):
    worker.outcome = "failed"
    generate(client, prompt="x")
    generate(client, {"HTTP_X_STAINLESS_RETRY_COUNT": "1"}, prompt="x")
    assert Job.objects.filter(status=JobStatus.FAILED).count() == 2


def test_an_idempotency_key_replays_its_job_and_refuses_another_body(client, worker, settings):
    settings.OPENAI_RETRY_WINDOW = 0
    key = {"HTTP_IDEMPOTENCY_KEY": "k-1"}
    generate(client, key, prompt="x")
    generate(client, key, prompt="x")
    assert Job.objects.count() == 1
    assert assert_refused(generate(client, key, prompt="y"), "Idempotency-Key", status=422)


def test_url_links_serve_the_png_without_a_token_until_they_expire(client, worker, settings, image_store):
    answer = generate(client, prompt="x", n=2, response_format="url").json()
    urls = [d["url"] for d in answer["data"]]
    assert all(url.startswith("http://testserver/v1/images/files/") for url in urls)
    anonymous = APIClient()
    fetched = anonymous.get(urls[1])
    assert fetched.status_code == 200 and fetched["Content-Type"] == "image/png"
    assert selectors.image_png(image=Job.objects.get().images.get(index=1)) == fetched.content
    # An altered or expired signed link is a 403, as the object store answers for its own presigned links.
    forged = urls[0].replace("/files/", "/files/x")
    assert assert_refused(anonymous.get(forged), None, status=403)["code"] == "invalid_signature"
    settings.OPENAI_URL_TTL = -1
    assert assert_refused(anonymous.get(urls[0]), None, status=403)["code"] == "link_expired"


def test_a_failed_job_is_a_500_with_its_error_that_the_client_must_not_retry(client, worker):
    worker.outcome = "failed"
    response = generate(client, prompt="x")
    error = assert_refused(response, None, status=500)
    assert "CUDA out of memory" in error["message"] and error["type"] == "server_error"
    assert response["x-should-retry"] == "false"
    worker.outcome = "canceled"
    assert assert_refused(generate(client, prompt="y"), None, status=500)["code"] == "job_canceled"


def test_a_job_that_does_not_end_in_time_is_a_504_naming_it(client, published, settings):
    settings.OPENAI_WAIT_SECONDS = 0  # the real events.wait_for_end, on a job nothing runs
    error = assert_refused(generate(client, prompt="x"), None, status=504)
    job = Job.objects.get()
    assert str(job.id) in error["message"] and job.status == JobStatus.QUEUED  # it goes on


def test_the_client_read_timeout_shortens_the_wait(client, published, settings):
    settings.OPENAI_WAIT_SECONDS = 600
    response = generate(client, {"HTTP_X_STAINLESS_READ_TIMEOUT": "2"}, prompt="x")
    assert response.status_code == 504  # after 0 s (2 s less the margin), not 600 s


def test_capacity_and_throttle_refusals_are_429_or_503_with_retry_after(client, published, settings, monkeypatch):
    settings.JOB_MAX_ACTIVE_PER_USER = 0
    response = generate(client, prompt="x")
    assert assert_refused(response, None, status=429)["code"] == "rate_limit_exceeded"
    assert response["Retry-After"] == str(settings.JOB_RETRY_AFTER)
    settings.JOB_MAX_ACTIVE_PER_USER = 10
    settings.JOB_MAX_QUEUE_DEPTH = 0
    response = generate(client, prompt="x")
    assert_refused(response, None, status=503)
    assert response["Retry-After"]
    settings.JOB_MAX_QUEUE_DEPTH = 1000
    settings.OPENAI_WAIT_SECONDS = 0  # nothing runs the job: a 504 at once
    monkeypatch.setitem(FailOpenScopedRateThrottle.THROTTLE_RATES, "job_create", "1/min")
    cache.clear()  # the counts of the requests above
    assert generate(client, prompt="x").status_code == 504
    response = generate(client, prompt="x")
    assert assert_refused(response, None, status=429)["type"] == "requests" and int(response["Retry-After"]) > 0


def edit(client, files: dict, headers=None, **fields):
    return client.post("/v1/images/edits", {**files, **fields}, format="multipart", **(headers or {}))


def upload(data: bytes, name="image.png"):
    file = io.BytesIO(data)
    file.name = name
    return file


def test_an_edit_with_a_mask_inpaints_where_the_mask_is_transparent(client, worker):
    mask = Image.new("RGBA", (48, 32), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (24, 0, 48, 32))  # the right half is fully transparent: repaint it
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    files = {"image": upload(png(48, 32)), "mask": upload(buffer.getvalue(), "mask.png")}
    response = edit(client, files, prompt="a blue square", n="2", size="48x32", steps="3", strength="0.9")
    assert response.status_code == 200, response.content
    job = Job.objects.get()
    assert job.mode == JobMode.INPAINT and job.protocol == JobProtocol.OPENAI
    assert (job.num_images, job.steps, job.strength, job.width) == (2, 3, 0.9, 48)
    with job.mask_image.open("rb") as file:
        stored = Image.open(file).convert("L")
        assert stored.getpixel((40, 10)) == 255 and stored.getpixel((5, 10)) == 0  # white = repaint
    assert len(response.json()["data"]) == 2


def test_an_edit_without_a_mask_is_img2img_and_takes_image_brackets(client, worker):
    response = edit(client, {"image[]": upload(png())}, prompt="x")
    assert response.status_code == 200, response.content
    assert Job.objects.get().mode == JobMode.IMG2IMG


@pytest.mark.parametrize(
    "files, param",
    [
        (lambda: {"image": upload(b"GIF89a not really")}, "image"),
        (lambda: {"image": upload(b"just text", "a.txt")}, "image"),
        (lambda: {}, "image"),
        (lambda: {"image": upload(png()), "image[]": upload(png())}, "image"),  # one image only
        (lambda: {"image": upload(png(32, 32)), "mask": upload(png(64, 32, "RGBA"))}, "mask"),  # another size
        (lambda: {"image": upload(png(32, 32)), "mask": upload(png(32, 32, "L", 0))}, "mask"),  # no alpha
    ],
)
def test_bad_edit_images_are_400s_naming_the_param(client, published, files, param):
    error = assert_refused(edit(client, files(), prompt="x"), param)
    assert error["type"] == "invalid_request_error" and Job.objects.count() == 0


def test_an_oversized_image_is_a_400_naming_image(client, published, settings):
    settings.JOB_MAX_IMAGE_BODY_BYTES = 200
    assert assert_refused(edit(client, {"image": upload(png(64, 64))}, prompt="x"), "image")["code"]
    assert Job.objects.count() == 0


def test_an_image_declaring_too_many_pixels_is_a_400_naming_image(client, published, settings):
    settings.UPLOAD_MAX_PIXELS = 100
    assert "UPLOAD_MAX_PIXELS" in assert_refused(edit(client, {"image": upload(png())}, prompt="x"), "image")["message"]


def test_an_unexpected_error_is_a_500_envelope(client, monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(services, "job_submit", broken)
    error = assert_refused(generate(client, prompt="x"), None, status=500)
    assert error["type"] == "server_error" and "a bug" not in error["message"]  # no internals leak


def test_edit_form_fields_are_checked_like_json_ones(client, published):
    assert_refused(edit(client, {"image": upload(png())}, prompt="x", n="many"), "n")
    assert_refused(edit(client, {"image": upload(png())}, prompt="x", size="32"), "size")
    assert_refused(edit(client, {"image": upload(png())}), "prompt")


def test_a_variation_is_img2img_of_the_image_at_the_documented_strength(client, worker, settings):
    response = client.post(
        "/v1/images/variations", {"image": upload(png()), "n": "2", "response_format": "url"}, format="multipart"
    )
    assert response.status_code == 200, response.content
    job = Job.objects.get()
    assert job.mode == JobMode.IMG2IMG and job.strength == settings.OPENAI_VARIATION_STRENGTH
    assert (job.prompt, job.guidance_scale, job.num_images) == (settings.OPENAI_VARIATION_PROMPT, 1.0, 2)
    assert all("url" in d for d in response.json()["data"])
    refused = client.post("/v1/images/variations", {"image": upload(png()), "prompt": "x"}, format="multipart")
    assert_refused(refused, "prompt")  # OpenAI's variations take no prompt ...
    masked = {"image": upload(png()), "mask": upload(png(mode="RGBA"))}
    assert_refused(client.post("/v1/images/variations", masked, format="multipart"), "mask")  # ... nor mask


def sse(response) -> list[tuple[str, dict]]:
    async def read():  # under ASGI the server reads the stream; the test client hands over the async iterator
        return b"".join([chunk async for chunk in response.streaming_content])

    text = async_to_sync(read)().decode()
    events_ = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events_.append((lines["event"], json.loads(lines["data"])))
    return events_


@pytest.fixture
def follow(monkeypatch, published):
    """events.follow as the Redis version will be: previews (step, total, png_base64) while the job runs, then end."""

    def fake(previews_made: int, outcome="succeeded"):
        async def follow(job_id, *, previews=False, last_event_id=None):
            for step in range(1, previews_made + 1):
                if previews:
                    preview = base64.b64encode(png(8, 8)).decode()
                    data = {"step": step, "total": previews_made, "png_base64": preview}
                    yield events.Event("preview", str(step), data)
            await sync_to_async(run_job)(job_id, outcome)
            yield events.Event("end", "end", {"status": outcome})

        monkeypatch.setattr(events, "follow", follow)

    return fake


def test_a_stream_sends_partial_images_spread_over_the_steps_then_the_images(client, follow):
    follow(previews_made=6)
    response = generate(client, prompt="x", n=2, stream=True, partial_images=2)
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    sent = sse(response)
    assert [kind for kind, _ in sent] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"] * 2
    assert [data["partial_image_index"] for _, data in sent[:2]] == [0, 1]
    assert base64.b64decode(sent[0][1]["b64_json"]) == png(8, 8)
    assert Image.open(io.BytesIO(base64.b64decode(sent[2][1]["b64_json"]))).size == (32, 32)
    assert sent[2][1]["size"] == "32x32" and sent[2][1]["output_format"] == "png"
    assert all(data["type"] == kind for kind, data in sent)  # the client reads the type from the data


def test_a_stream_without_previews_still_sends_the_images(client, follow):
    follow(previews_made=0)
    sent = sse(generate(client, prompt="x", stream=True, partial_images=3))
    assert [kind for kind, _ in sent] == ["image_generation.completed"]


def test_a_stream_of_an_edit_uses_the_edit_event_names(client, follow):
    follow(previews_made=2)
    response = edit(client, {"image": upload(png())}, prompt="x", stream="true", partial_images="1")
    assert [kind for kind, _ in sse(response)] == ["image_edit.partial_image", "image_edit.completed"]


def test_a_stream_of_a_failed_job_ends_with_an_error_event(client, follow):
    follow(previews_made=0, outcome="failed")
    sent = sse(generate(client, prompt="x", stream=True))
    assert sent == [("error", sent[0][1])] and "CUDA out of memory" in sent[0][1]["error"]["message"]


def test_a_stream_that_outlasts_the_wait_ends_with_a_timeout_error(client, published, settings):
    settings.OPENAI_WAIT_SECONDS = 0.3  # the real events.follow, on a job nothing runs
    sent = sse(generate(client, prompt="x", stream=True))
    assert sent[-1][0] == "error" and sent[-1][1]["error"]["code"] == "timeout"


# Schemathesis on the /v1/ operations of the served schema: no 5xx, every answer as documented. The jobs of valid
# requests run (the fakes above), so they answer 200 with images or events.
schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application()).include(path_regex="^/v1/")
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


@pytest.fixture
def fuzz_token(django_user_model, db, keep_test_connection, worker, follow):  # noqa: F811
    follow(previews_made=2)
    return token_issue(user=django_user_model.objects.create_user("fuzzer", password="fuzz-pw"))


@pytest.mark.fuzz
@schema.parametrize()
@hypothesis_settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_v1_routes_match_their_schema_under_fuzzing(case, fuzz_token):
    case.call_and_validate(headers={"Authorization": f"Bearer {fuzz_token}"}, checks=CHECKS)
