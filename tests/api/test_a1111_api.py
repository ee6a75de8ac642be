"""A1111's /sdapi/v1/ routes on the Django test client (SQLite, no servers).

The txt2img/img2img views wait with events.wait_for_end; here a stand-in makes the job end honestly first (the
worker's own calls: claim, then succeed, fail or cancel), so the view answers from the job row as it would live.
"""

import base64
import io
import json

import pytest
import webuiapi
from asgiref.sync import sync_to_async
from PIL import Image
from rest_framework.test import APIClient

from diffusion_api.accounts.services import token_issue
from diffusion_api.jobs import events, services
from diffusion_api.jobs.models import Job, JobProtocol, JobStatus

pytestmark = pytest.mark.django_db


def png_b64(size=(32, 32), mode="RGB", colour=0, data_uri=True) -> str:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    text = base64.b64encode(buffer.getvalue()).decode()
    return "data:image/png;base64," + text if data_uri else text


def tiny_png() -> bytes:
    return base64.b64decode(png_b64(data_uri=False))


def sent_by_webuiapi(method: str, **kwargs) -> dict:
    """The JSON body the real client (webuiapi) sends for `method(**kwargs)`: every field, with its defaults."""
    api = webuiapi.WebUIApi.__new__(webuiapi.WebUIApi)
    api.baseurl, api.default_sampler, api.default_scheduler, api.default_steps = (
        "http://x/sdapi/v1",
        "Euler a",
        "automatic",
        20,
    )
    sent = {}
    api.post_and_get_api_result = lambda url, json, use_async: sent.update(json)
    getattr(api, method)(**kwargs)
    return json.loads(json.dumps(sent))


SMALL = {"width": 32, "height": 32, "steps": 2}
REAL_WAIT = events.wait_for_end


@pytest.fixture
def finish_jobs(monkeypatch, published):
    """events.wait_for_end stand-in: the job ends as `outcome["value"]` says, through the worker's own calls."""
    outcome = {"value": "succeeded", "waited": []}

    def finish(job_id):
        job = Job.objects.get(id=job_id)
        if job.status != JobStatus.QUEUED:
            return
        claim = services.job_claim(job_id=job_id, worker="test-worker").worker
        if outcome["value"] == "succeeded":
            images = [
                {"index": i, "seed": job.seed + i, "width": job.width, "height": job.height, "png": tiny_png()}
                for i in range(job.num_images)
            ]
            services.job_succeed(job_id=job_id, worker=claim, images=images)
        elif outcome["value"] == "failed":
            services.job_fail(job_id=job_id, worker=claim, error="the worker ran out of memory")
        else:  # interrupted while running
            services.job_cancel(job=job)
            services.job_mark_canceled(job_id=job_id, worker=claim)

    async def wait_for_end(job_id, timeout):
        outcome["waited"].append(timeout)
        await sync_to_async(finish)(job_id)
        return True

    monkeypatch.setattr("diffusion_api.jobs.events.wait_for_end", wait_for_end)
    return outcome


def txt2img(client, **fields):
    return client.post("/sdapi/v1/txt2img", {"prompt": "a red circle", **SMALL, **fields}, format="json")


def img2img(client, **fields):
    body = {"prompt": "a red circle", "init_images": [png_b64()], **SMALL, **fields}
    return client.post("/sdapi/v1/img2img", body, format="json")


def only_job() -> Job:
    (job,) = Job.objects.all()
    return job


def fields_named(response) -> set[str]:
    assert response.status_code == 422, response.content
    return {".".join(item["loc"][1:]) for item in response.json()["detail"]}


# --- txt2img: the request as webuiapi sends it, and the answer as it parses it


def test_webuiapi_txt2img_defaults_are_accepted_and_answered_as_a1111(alice_client, finish_jobs, image_store):
    body = sent_by_webuiapi("txt2img", prompt="a red circle", negative_prompt="blue", seed=42, **SMALL)
    response = alice_client.post("/sdapi/v1/txt2img", body, format="json")
    assert response.status_code == 200, response.content
    answer = response.json()
    job = only_job()
    assert job.protocol == JobProtocol.A1111 and job.status == JobStatus.SUCCEEDED
    assert (job.scheduler, job.seed, job.steps, job.guidance_scale, job.num_images) == ("euler_a", 42, 2, 7.0, 1)
    assert job.hires_scale == 1.0  # enable_hr false: the hr fields webuiapi sends are not used
    assert answer["parameters"] == body
    info = json.loads(answer["info"])
    assert info["seed"] == 42 and info["all_seeds"] == [42] and info["sampler_name"] == "Euler a"
    assert info["prompt"] == "a red circle" and info["negative_prompt"] == "blue"
    assert (info["width"], info["height"], info["steps"], info["cfg_scale"]) == (32, 32, 2, 7.0)
    assert info["sd_model_name"] == "tiny" and len(info["job_timestamp"]) == 14
    assert info["infotexts"][0].startswith("a red circle\nNegative prompt: blue\nSteps: 2, Sampler: Euler a")
    image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
    assert image.size == (32, 32) and image.text["parameters"] == info["infotexts"][0]
    assert finish_jobs["waited"] == [0.5]  # A1111_WAIT_SECONDS of the test settings


@pytest.mark.parametrize(
    "sampler, schedule, expected",
    [
        ("Euler a", "automatic", "euler_a"),
        ("Euler", "Automatic", "euler"),
        ("DPM++ 2M", "Karras", "dpmpp_2m_karras"),
        ("DPM++ 2M", "karras", "dpmpp_2m_karras"),
        ("DPM++ 2M", "Automatic", "dpmpp_2m"),
        ("DPM++ 2M Karras", None, "dpmpp_2m_karras"),  # the name before A1111 1.9
        ("DDIM", None, "ddim"),
        ("PLMS", None, "pndm"),
        ("UniPC", "automatic", "unipc"),
        ("LCM", None, "lcm"),
        ("k_euler_a", None, "euler_a"),  # an alias
    ],
)
def test_samplers_and_schedule_types_map_to_the_schedulers(alice_client, finish_jobs, sampler, schedule, expected):
    response = txt2img(alice_client, sampler_name=sampler, scheduler=schedule)
    assert response.status_code == 200, response.content
    assert only_job().scheduler == expected
    sampler_back = json.loads(response.json()["info"])["sampler_name"]
    assert sampler_back == {"DPM++ 2M Karras": "DPM++ 2M", "k_euler_a": "Euler a"}.get(sampler, sampler)


def test_sampler_index_is_used_when_sampler_name_is_empty(alice_client, finish_jobs):
    assert txt2img(alice_client, sampler_index="UniPC").status_code == 200
    assert only_job().scheduler == "unipc"


def test_no_sampler_takes_the_models_default(alice_client, finish_jobs):
    assert txt2img(alice_client).status_code == 200
    assert only_job().scheduler == "ddim"  # the tiny model's own


def test_batch_size_times_n_iter_is_the_number_of_images_and_seed_minus_one_is_drawn(alice_client, finish_jobs):
    response = txt2img(alice_client, batch_size=2, n_iter=2, seed=-1)
    job = only_job()
    assert job.num_images == 4 and 0 <= job.seed < 2**32
    info = json.loads(response.json()["info"])
    assert info["all_seeds"] == [job.seed + i for i in range(4)] and len(response.json()["images"]) == 4
    assert [f"Seed: {job.seed + i}," in text for i, text in enumerate(info["infotexts"])] == [True] * 4


def test_native_speed_fields_have_no_a1111_name_and_keep_their_defaults(alice_client, finish_jobs):
    response = txt2img(alice_client, cfg_scale=7.0)
    assert response.status_code == 200, response.content
    assert (only_job().guidance_cutoff, only_job().deep_cache_interval) == (1.0, 1)
    assert "Steps: 2, Sampler:" in json.loads(response.json()["info"])["infotexts"][0]
    assert fields_named(txt2img(alice_client, guidance_cutoff=0.5, deep_cache_interval=2)) == {
        "guidance_cutoff",
        "deep_cache_interval",
    }


def test_variation_seed_and_strength(alice_client, finish_jobs):
    txt2img(alice_client, seed=5, subseed=9, subseed_strength=0.25)
    job = only_job()
    assert (job.subseed, job.subseed_strength) == (9, 0.25)


def test_hires_fields_map_to_the_two_pass_fields(alice_client, finish_jobs):
    response = txt2img(
        alice_client,
        enable_hr=True,
        hr_scale=2,
        hr_upscaler="Latent (nearest)",
        hr_second_pass_steps=3,
        denoising_strength=0.6,
    )
    assert response.status_code == 200, response.content
    job = only_job()
    assert (job.hires_scale, job.hires_upscaler, job.hires_steps, job.hires_strength) == (2.0, "latent-nearest", 3, 0.6)
    infotext = json.loads(response.json()["info"])["infotexts"][0]
    assert "Hires upscale: 2.0, Hires steps: 3, Hires upscaler: Latent (nearest)" in infotext


def test_hires_resize_x_and_y_give_the_scale(alice_client, finish_jobs):
    response = txt2img(alice_client, enable_hr=True, hr_resize_x=48, hr_resize_y=48, hr_upscaler="Lanczos")
    assert response.status_code == 200, response.content
    assert (only_job().hires_scale, only_job().hires_upscaler) == (1.5, "lanczos")


def test_hires_resize_with_two_scales_is_refused(alice_client, finish_jobs):
    assert fields_named(txt2img(alice_client, enable_hr=True, hr_resize_x=64, hr_resize_y=48)) == {"hr_resize_x"}


def test_hires_with_the_same_second_pass_sampler_and_prompt_is_accepted(alice_client, finish_jobs):
    response = txt2img(
        alice_client, enable_hr=True, sampler_name="Euler", hr_sampler_name="Euler", hr_prompt="a red circle"
    )
    assert response.status_code == 200, response.content


def test_override_settings_chooses_the_model(alice_client, finish_jobs, settings, tiny_model_dir):
    settings.MODELS = {"tiny": tiny_model_dir, "Other": tiny_model_dir}
    response = txt2img(alice_client, override_settings={"sd_model_checkpoint": "other"})
    assert response.status_code == 200, response.content
    assert only_job().model == "Other"


# --- img2img and inpainting


def test_webuiapi_img2img_with_a_mask_maps_the_image_fields(alice_client, finish_jobs, image_store):
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))  # white = repaint: the left half
    body = sent_by_webuiapi(
        "img2img",
        images=[Image.new("RGB", (32, 32), (200, 10, 10))],
        mask_image=mask,
        prompt="a red circle",
        denoising_strength=0.5,
        resize_mode=1,
        mask_blur=8,
        inpaint_full_res=True,
        inpaint_full_res_padding=12,
        sampler_name="DDIM",
        **SMALL,
    )
    response = alice_client.post("/sdapi/v1/img2img", body, format="json")
    assert response.status_code == 200, response.content
    job = only_job()
    assert job.mode == "inpaint" and job.protocol == JobProtocol.A1111
    assert (job.strength, job.resize_mode, job.mask_blur) == (0.5, "crop_and_resize", 8)
    assert (job.inpaint_full_res, job.inpaint_full_res_padding, job.scheduler) == (True, 12, "ddim")
    with job.mask_image.open("rb") as file:
        stored = Image.open(file).convert("L")
        assert stored.getpixel((4, 16)) == 255 and stored.getpixel((28, 16)) == 0
    assert response.json()["parameters"]["init_images"] is None and response.json()["parameters"]["mask"] is None
    infotext = json.loads(response.json()["info"])["infotexts"][0]
    assert "Denoising strength: 0.5" in infotext and "Mask blur: 8" in infotext


def test_inpainting_mask_invert_swaps_the_mask(alice_client, finish_jobs):
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    body = {"mask": base64.b64encode(buffer.getvalue()).decode(), "inpainting_mask_invert": 1}
    assert img2img(alice_client, **body).status_code == 200
    with only_job().mask_image.open("rb") as file:
        stored = Image.open(file).convert("L")
        assert stored.getpixel((4, 16)) == 0 and stored.getpixel((28, 16)) == 255


def test_an_rgba_mask_repaints_where_it_is_opaque_as_in_a1111(alice_client, finish_jobs):
    mask = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    mask.paste((255, 255, 255, 255), (0, 0, 16, 32))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    assert img2img(alice_client, mask=base64.b64encode(buffer.getvalue()).decode()).status_code == 200
    with only_job().mask_image.open("rb") as file:
        stored = Image.open(file).convert("L")
        assert stored.getpixel((4, 16)) == 255 and stored.getpixel((28, 16)) == 0


def test_img2img_without_a_mask_is_img2img(alice_client, finish_jobs):
    response = img2img(alice_client, denoising_strength=0.3, resize_mode=2)
    assert response.status_code == 200, response.content
    job = only_job()
    assert (job.mode, job.strength, job.resize_mode) == ("img2img", 0.3, "resize_and_fill")


# --- features this project lacks: defaults accepted, anything else refused, naming the field


@pytest.mark.parametrize(
    "field, value",
    [
        ("restore_faces", True),
        ("tiling", True),
        ("alwayson_scripts", {"ControlNet": {"args": []}}),
        ("script_name", "x/y/z plot"),
        ("styles", ["cinematic"]),
        ("eta", 0.5),
        ("s_churn", 1.0),
        ("refiner_checkpoint", "sdxl_refiner"),
        ("firstphase_width", 64),
        ("colour", "red"),  # no such field
        ("mask", png_b64()),  # an img2img field
    ],
)
def test_non_default_values_of_missing_features_are_refused(alice_client, published, field, value):
    response = txt2img(alice_client, **{field: value})
    assert fields_named(response) == {field}
    assert Job.objects.count() == 0 and published == []


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"enable_hr": True, "hr_upscaler": "R-ESRGAN 4x+"}, {"hr_upscaler"}),
        ({"enable_hr": True, "hr_upscaler": "Latent (bicubic)"}, {"hr_upscaler"}),
        ({"enable_hr": True, "hr_prompt": "another prompt"}, {"hr_prompt"}),
        ({"enable_hr": True, "hr_sampler_name": "DDIM", "sampler_name": "Euler"}, {"hr_sampler_name"}),
        ({"override_settings": {"CLIP_stop_at_last_layers": 2}}, {"override_settings.CLIP_stop_at_last_layers"}),
        ({"override_settings": {"sd_model_checkpoint": "sdxl"}}, {"override_settings.sd_model_checkpoint"}),
        ({"sampler_name": "Euler", "scheduler": "Karras"}, {"scheduler"}),
    ],
)
def test_unsupported_choices_are_refused(alice_client, published, fields, named):
    assert fields_named(txt2img(alice_client, **fields)) == named
    assert Job.objects.count() == 0


@pytest.mark.parametrize(
    "field, value",
    [("inpainting_fill", 2), ("include_init_images", True), ("resize_mode", 3), ("mask_round", False)],
)
def test_img2img_features_this_project_lacks_are_refused(alice_client, published, field, value):
    assert fields_named(img2img(alice_client, **{field: value})) == {field}


def test_webuiapi_img2img_defaults_are_accepted(alice_client, finish_jobs):
    body = sent_by_webuiapi("img2img", images=[Image.new("RGB", (32, 32))], prompt="x", **SMALL)
    assert alice_client.post("/sdapi/v1/img2img", body, format="json").status_code == 200


# --- bad input: A1111's 422, naming the fields


def test_bad_sampler(alice_client, published):
    response = txt2img(alice_client, sampler_name="Heun")
    assert fields_named(response) == {"sampler_name"}
    assert "Euler a" in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize("width", [33, 100_000, 0])
def test_bad_size(alice_client, published, width):
    assert fields_named(txt2img(alice_client, width=width)) == {"width"}


def test_bad_types_name_the_field(alice_client, published):
    assert fields_named(txt2img(alice_client, steps="20", cfg_scale="high")) == {"steps", "cfg_scale"}


def test_too_many_images(alice_client, published):
    response = txt2img(alice_client, batch_size=3, n_iter=2)  # JOB_MAX_IMAGES is 4
    assert fields_named(response) == {"batch_size"}
    assert "batch_size × n_iter" in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize("entry", ["not base64 at all!", base64.b64encode(b"GIF89a nope").decode()])
def test_a_non_image_init_images_entry(alice_client, published, entry):
    assert fields_named(img2img(alice_client, init_images=[entry])) == {"init_images"}


def test_an_init_images_entry_that_is_not_a_string(alice_client, published):
    response = img2img(alice_client, init_images=[5])
    assert fields_named(response) == {"init_images"} and response.json()["detail"][0]["msg"] == "must be a string."


def test_two_init_images_or_none(alice_client, published):
    assert fields_named(img2img(alice_client, init_images=[png_b64(), png_b64()])) == {"init_images"}
    assert fields_named(img2img(alice_client, init_images=[])) == {"init_images"}


def test_a_mask_of_another_size(alice_client, published):
    # Another aspect ratio than the init image (the same ratio at another size is fitted, as A1111 resizes it).
    response = img2img(alice_client, mask=png_b64(size=(32, 16), mode="L"))
    assert fields_named(response) == {"mask"}
    assert "32 × 16" in response.json()["detail"][0]["msg"]


def test_a_non_image_mask(alice_client, published):
    assert fields_named(img2img(alice_client, mask="bm90IGFuIGltYWdl")) == {"mask"}


def test_denoising_strength_zero_is_refused_for_img2img(alice_client, published):
    assert fields_named(img2img(alice_client, denoising_strength=0)) == {"denoising_strength"}


def test_body_not_an_object_and_not_json(alice_client, published):
    assert fields_named(alice_client.post("/sdapi/v1/txt2img", [1, 2], format="json")) == {""}
    response = alice_client.post("/sdapi/v1/txt2img", "{oops", content_type="application/json")
    assert fields_named(response) == {""}


def test_body_too_large(alice_client, published, settings):
    settings.JOB_MAX_BODY_BYTES = 100
    response = txt2img(alice_client, prompt="x" * 200)
    assert response.status_code == 413 and set(response.json()) == {"error", "detail", "body", "errors"}


# --- how a job that did not succeed is answered


def test_an_interrupted_job_answers_200_with_no_images(alice_client, finish_jobs):
    finish_jobs["value"] = "canceled"
    response = txt2img(alice_client)
    assert response.status_code == 200 and response.json()["images"] == []
    assert json.loads(response.json()["info"])["interrupted"] is True
    assert only_job().status == JobStatus.CANCELED


def test_a_failed_job_answers_500_in_a1111s_shape(alice_client, finish_jobs):
    finish_jobs["value"] = "failed"
    response = txt2img(alice_client)
    assert response.status_code == 500
    assert response.json()["error"] == "JobFailed" and "out of memory" in response.json()["detail"]


def test_a_job_that_does_not_end_in_time_answers_202_and_goes_on(alice_client, published, monkeypatch, settings):
    settings.A1111_WAIT_SECONDS = 7
    waited = []

    async def wait_for_end(job_id, timeout):
        waited.append(timeout)
        return False

    monkeypatch.setattr("diffusion_api.jobs.events.wait_for_end", wait_for_end)
    response = txt2img(alice_client)
    assert response.status_code == 202 and response.json()["error"] == "TimeoutError"
    job = only_job()
    assert str(job.id) in response.json()["detail"] and job.status == JobStatus.QUEUED and waited == [7]


def test_the_real_wait_answers_a_cached_job_at_once_and_gives_up_on_a_queued_one(
    alice_client, finish_jobs, monkeypatch, settings
):
    first = txt2img(alice_client, seed=21)
    monkeypatch.setattr("diffusion_api.jobs.events.wait_for_end", REAL_WAIT)
    second = txt2img(alice_client, seed=21)  # the result cache: the job is born succeeded
    assert second.status_code == 200 and second.json()["images"] == first.json()["images"]
    assert finish_jobs["waited"] == [0.5]  # only the first went through the stand-in
    late = txt2img(alice_client, seed=22)  # no worker here: it stays queued
    job = Job.objects.get(seed=22)
    assert late.status_code == 202 and late["Location"].endswith(f"/api/v1/jobs/{job.id}/")


def test_send_images_false_answers_without_images(alice_client, finish_jobs):
    response = txt2img(alice_client, send_images=False)
    assert response.status_code == 200 and response.json()["images"] == []


def test_capacity_is_429_with_retry_after(alice_client, alice, published, settings):
    settings.JOB_MAX_ACTIVE_PER_USER = 1
    services.job_create(owner=alice, prompt="waiting")
    response = txt2img(alice_client)
    assert response.status_code == 429 and response["Retry-After"] == str(settings.JOB_RETRY_AFTER)
    assert response.json()["error"] == "HTTPException"


def test_the_native_create_throttle_applies(alice_client, finish_jobs, monkeypatch):
    from rest_framework.throttling import SimpleRateThrottle

    monkeypatch.setitem(SimpleRateThrottle.THROTTLE_RATES, "job_create", "2/min")
    codes = [txt2img(alice_client).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_the_result_cache_serves_an_identical_request_with_a_seed(alice_client, finish_jobs):
    first = txt2img(alice_client, seed=7).json()
    second = txt2img(alice_client, seed=7).json()
    jobs = list(Job.objects.order_by("created_at"))
    assert len(jobs) == 2 and jobs[1].cached_from_id == jobs[0].id
    assert first["images"] == second["images"]


# --- auth


def test_token_bearer_and_basic_auth(alice, finish_jobs):
    key = token_issue(user=alice)
    for header in (f"Token {key}", f"Bearer {key}"):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=header)
        assert client.get("/sdapi/v1/sd-models").status_code == 200
    basic = APIClient()
    basic.credentials(HTTP_AUTHORIZATION="Basic " + base64.b64encode(b"alice:pw-alice").decode())
    assert txt2img(basic).status_code == 200
    assert only_job().owner == alice


@pytest.mark.parametrize("header", [None, "Token nope", "Basic " + base64.b64encode(b"alice:wrong").decode()])
def test_no_or_wrong_credentials_are_401_in_a1111s_shape(alice, published, header):
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)
    response = client.post("/sdapi/v1/txt2img", {"prompt": "x"}, format="json")
    assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Basic")
    assert set(response.json()) == {"error", "detail", "body", "errors"}
    assert Job.objects.count() == 0


def test_repeated_wrong_basic_passwords_lock_the_username_out(alice, settings):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Basic " + base64.b64encode(b"alice:wrong").decode())
    codes = [client.get("/sdapi/v1/options").status_code for _ in range(settings.AXES_FAILURE_LIMIT + 1)]
    assert codes == [401] * settings.AXES_FAILURE_LIMIT + [429]
    right = APIClient(REMOTE_ADDR="10.0.0.9")  # another address: the username itself is locked
    right.credentials(HTTP_AUTHORIZATION="Basic " + base64.b64encode(b"alice:pw-alice").decode())
    response = right.get("/sdapi/v1/options")
    assert response.status_code == 429 and int(response["Retry-After"]) > 0


def test_a_remembered_basic_login_ends_with_a_password_change(alice):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Basic " + base64.b64encode(b"alice:pw-alice").decode())
    assert client.get("/sdapi/v1/options").status_code == 200
    alice.set_password("new")
    alice.save()
    assert client.get("/sdapi/v1/options").status_code == 401


# --- progress, interrupt, skip


def a1111_job(owner, **fields) -> Job:
    return services.job_create(owner=owner, prompt="x", protocol=JobProtocol.A1111, **fields)


def test_progress_with_no_job(alice_client):
    answer = alice_client.get("/sdapi/v1/progress").json()
    assert answer["progress"] == 0 and answer["state"]["job_count"] == 0 and answer["current_image"] is None


def test_progress_of_the_callers_running_job(alice_client, alice, bob, published, monkeypatch):
    a1111_job(bob, steps=10)
    mine = a1111_job(alice, steps=10)
    claim = services.job_claim(job_id=mine.id, worker="w").worker
    services.job_report_progress(job_id=mine.id, worker=claim, step=4, total=10)
    preview = tiny_png()
    monkeypatch.setattr(
        "diffusion_api.jobs.events.latest_preview", lambda job_id: preview if job_id == mine.id else None
    )
    answer = alice_client.get("/sdapi/v1/progress").json()
    assert answer["progress"] == 0.4 and answer["eta_relative"] >= 0
    assert answer["state"]["sampling_step"] == 4 and answer["state"]["sampling_steps"] == 10
    assert answer["state"]["job_count"] == 1 and base64.b64decode(answer["current_image"]) == preview
    skipped = alice_client.get("/sdapi/v1/progress?skip_current_image=true").json()
    assert skipped["current_image"] is None


def test_interrupt_cancels_only_the_callers_a1111_jobs(alice_client, alice, bob, published):
    running = a1111_job(alice)
    claim = services.job_claim(job_id=running.id, worker="w").worker
    queued = a1111_job(alice)
    native = services.job_create(owner=alice, prompt="native")
    bobs = a1111_job(bob)
    assert alice_client.post("/sdapi/v1/interrupt").json() == {}
    for job in (running, queued, native, bobs):
        job.refresh_from_db()
    assert running.cancel_requested and running.status == JobStatus.RUNNING  # stops at its next step
    assert services.job_report_progress(job_id=running.id, worker=claim, step=1, total=2)  # the worker is told
    assert queued.status == JobStatus.CANCELED
    assert native.status == JobStatus.QUEUED and not native.cancel_requested
    assert bobs.status == JobStatus.QUEUED and not bobs.cancel_requested


def test_skip_cancels_too(alice_client, alice, published):
    job = a1111_job(alice)
    assert alice_client.post("/sdapi/v1/skip").status_code == 200
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELED


# --- options, per user


def test_options_are_per_user_and_set_the_default_model(
    alice_client, bob_client, finish_jobs, settings, tiny_model_dir
):
    settings.MODELS = {"tiny": tiny_model_dir, "other": tiny_model_dir}
    assert alice_client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny [")
    title = next(m["title"] for m in alice_client.get("/sdapi/v1/sd-models").json() if m["model_name"] == "other")
    response = alice_client.post("/sdapi/v1/options", {"sd_model_checkpoint": title, "jpeg_quality": 80}, format="json")
    assert response.status_code == 200 and response.json() is True
    options = alice_client.get("/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"] == title and options["jpeg_quality"] == 80
    assert bob_client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny [")
    txt2img(alice_client)
    txt2img(bob_client)
    assert {job.owner.username: job.model for job in Job.objects.all()} == {"alice": "other", "bob": "tiny"}
    txt2img(alice_client, override_settings={"sd_model_checkpoint": "tiny"})  # a request's own choice wins
    assert Job.objects.filter(owner__username="alice").order_by("-created_at").first().model == "tiny"


def test_options_refuse_an_unknown_model(alice_client):
    response = alice_client.post("/sdapi/v1/options", {"sd_model_checkpoint": "sdxl"}, format="json")
    assert fields_named(response) == {"sd_model_checkpoint"}


@pytest.mark.parametrize("body", ['{"note": "a\\u0000b"}', '{"a\\u0000": 1}', '{"nested": [{"x": "\\ud800"}]}'])
def test_options_refuse_what_the_database_cannot_store(alice_client, body):
    # PostgreSQL's jsonb refuses NUL; UTF-8 refuses a lone surrogate (the fuzzer found the first as a 500).
    response = alice_client.post("/sdapi/v1/options", body, content_type="application/json")
    assert response.status_code == 422
    assert alice_client.get("/sdapi/v1/options").json().keys() == {"sd_model_checkpoint", "sd_checkpoint_hash"}


# --- lists and png-info


def test_lists(alice_client):
    models = alice_client.get("/sdapi/v1/sd-models").json()
    assert [m["model_name"] for m in models] == ["tiny"] and models[0]["title"] == f"tiny [{models[0]['hash']}]"
    samplers = {s["name"] for s in alice_client.get("/sdapi/v1/samplers").json()}
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM", "UniPC", "LCM"} <= samplers
    assert [s["label"] for s in alice_client.get("/sdapi/v1/schedulers").json()] == ["Automatic", "Karras"]
    assert [u["name"] for u in alice_client.get("/sdapi/v1/upscalers").json()] == ["Lanczos"]
    assert [m["name"] for m in alice_client.get("/sdapi/v1/latent-upscale-modes").json()] == [
        "Latent",
        "Latent (nearest)",
    ]
    assert alice_client.get("/sdapi/v1/loras").json() == []
    assert alice_client.get("/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": []}


def test_png_info_reads_back_the_infotext_of_an_answer(alice_client, finish_jobs):
    answer = txt2img(alice_client, seed=11, negative_prompt="blue, green", sampler_name="DPM++ 2M", scheduler="Karras")
    image = answer.json()["images"][0]
    info = alice_client.post("/sdapi/v1/png-info", {"image": "data:image/png;base64," + image}, format="json").json()
    assert info["info"] == json.loads(answer.json()["info"])["infotexts"][0]
    parameters = info["parameters"]
    assert parameters["Prompt"] == "a red circle" and parameters["Negative prompt"] == "blue, green"
    assert (parameters["Seed"], parameters["Steps"], parameters["Sampler"]) == ("11", "2", "DPM++ 2M")
    assert parameters["Schedule type"] == "Karras" and (parameters["Size-1"], parameters["Size-2"]) == ("32", "32")


def test_png_info_of_a_png_without_text_and_of_nothing(alice_client):
    assert alice_client.post("/sdapi/v1/png-info", {"image": png_b64()}, format="json").json() == {
        "info": "",
        "items": {},
        "parameters": {},
    }
    assert alice_client.post("/sdapi/v1/png-info", {"image": ""}, format="json").json()["info"] == ""
    assert fields_named(alice_client.post("/sdapi/v1/png-info", {"image": "%%%"}, format="json")) == {"image"}
    assert fields_named(alice_client.post("/sdapi/v1/png-info", {}, format="json")) == {"image"}


def test_routes_need_credentials(db):
    client = APIClient()
    for path in ("progress", "options", "sd-models", "samplers", "loras"):
        assert client.get(f"/sdapi/v1/{path}").status_code == 401
    for path in ("interrupt", "skip", "png-info", "img2img"):
        assert client.post(f"/sdapi/v1/{path}", {}, format="json").status_code == 401


def test_other_users_are_not_touched_by_png_info_or_progress(bob_client, alice, published):
    a1111_job(alice)
    assert bob_client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0


def test_every_route_is_in_the_openapi_schema(db):
    schema = APIClient().get("/api/schema/?format=json").json()
    paths = {path for path in schema["paths"] if path.startswith("/sdapi/v1/")}
    expected = {
        "txt2img",
        "img2img",
        "progress",
        "interrupt",
        "skip",
        "options",
        "sd-models",
        "samplers",
        "schedulers",
        "upscalers",
        "latent-upscale-modes",
        "loras",
        "scripts",
        "png-info",
    }
    assert paths == {f"/sdapi/v1/{name}" for name in expected}
    assert "422" in schema["paths"]["/sdapi/v1/txt2img"]["post"]["responses"]
