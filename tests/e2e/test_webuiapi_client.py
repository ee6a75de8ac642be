"""End to end with the real A1111 client, webuiapi, against /sdapi/v1/ of a live ASGI gunicorn API and a real worker
on PostgreSQL and Redis, running the tiny model."""

import base64
import io
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import pytest
import requests
import webuiapi
from PIL import Image

from tests.e2e.conftest import ROOT, session_for
from tests.e2e.test_service import poll


def user_with_password(service, username: str, password: str) -> str:
    """Create the user with a password (manage.py issue_token --password) and return a token of theirs."""
    result = subprocess.run(
        [sys.executable, "manage.py", "issue_token", username, "--password", password],
        cwd=ROOT,
        env=service["env"],
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout.strip()


def client(service, *, username: str | None = None, password: str | None = None, token: str | None = None):
    address = urlsplit(service["base"])
    api = webuiapi.WebUIApi(host=address.hostname, port=address.port, username=username, password=password)
    if token:
        api.session.headers["Authorization"] = f"Token {token}"
    return api


@pytest.fixture(scope="module")
def carol(service):
    """carol logs in with HTTP Basic, as A1111's --api-auth users do."""
    user_with_password(service, "carol", "carol-secret-pw")
    return client(service, username="carol", password="carol-secret-pw")


SMALL = {"width": 32, "height": 32, "steps": 4}


def test_txt2img_answers_images_info_and_parameters(carol):
    result = carol.txt2img(prompt="a red circle", negative_prompt="blue", seed=3, sampler_name="Euler a", **SMALL)
    assert len(result.images) == 1 and result.image.size == (32, 32)
    assert result.info["all_seeds"] == [3] and result.info["sampler_name"] == "Euler a"
    assert result.info["sd_model_name"] == "tiny" and result.parameters["prompt"] == "a red circle"
    assert result.info["infotexts"][0].startswith("a red circle\nNegative prompt: blue\nSteps: 4, Sampler: Euler a")

    again = carol.txt2img(prompt="a red circle", negative_prompt="blue", seed=3, sampler_name="Euler a", **SMALL)
    assert list(again.image.getdata()) == list(result.image.getdata())  # the result cache: an identical request

    read_back = carol.png_info(result.image)
    assert read_back.info == result.info["infotexts"][0]
    assert read_back.parameters["Seed"] == "3" and read_back.parameters["Sampler"] == "Euler a"
    assert (read_back.parameters["Size-1"], read_back.parameters["Size-2"]) == ("32", "32")


def test_txt2img_with_the_hires_fix(carol):
    result = carol.txt2img(
        prompt="a red circle",
        seed=4,
        batch_size=2,
        enable_hr=True,
        hr_scale=2,
        hr_upscaler=webuiapi.HiResUpscaler.Latent,
        hr_second_pass_steps=2,
        denoising_strength=0.5,
        sampler_name="DPM++ 2M",
        scheduler="Karras",
        **SMALL,
    )
    assert [image.size for image in result.images] == [(64, 64), (64, 64)]
    assert result.info["all_seeds"] == [4, 5]
    assert (
        "Hires upscale: 2.0" in result.info["infotexts"][0] and "Schedule type: Karras" in result.info["infotexts"][0]
    )


def test_img2img_with_a_mask(carol):
    picture = Image.new("RGB", (48, 48), (235, 235, 235))
    picture.paste((210, 20, 20), (8, 8, 24, 24))
    mask = Image.new("L", (48, 48), 0)
    mask.paste(255, (24, 0, 48, 48))  # repaint the right half
    result = carol.img2img(
        images=[picture],
        mask_image=mask,
        prompt="a red circle",
        seed=6,
        denoising_strength=0.6,
        inpaint_full_res=False,
        sampler_name="DDIM",
        **SMALL,
    )
    assert result.image.size == (32, 32)
    assert "Denoising strength: 0.6" in result.info["infotexts"][0]
    assert result.parameters["init_images"] is None  # as A1111 answers without include_init_images


def test_models_options_and_lists(service, carol):
    names = carol.util_get_model_names()
    assert len(names) == 1 and names[0].startswith("tiny [")
    carol.util_set_model("tiny")
    assert carol.util_get_current_model() == names[0]
    assert "Euler a" in carol.util_get_sampler_names()
    assert carol.util_get_scheduler_names() == ["automatic", "karras"]
    assert carol.get_loras() == []
    token_user = client(service, token=service["token"]("dave"))
    assert token_user.util_get_current_model() == names[0]  # dave has set nothing: the service's default


def test_unauthenticated_and_refused_requests_answer_in_a1111s_shape(service):
    anonymous = client(service)
    with pytest.raises(RuntimeError) as refused:
        anonymous.txt2img(prompt="x", **SMALL)
    assert refused.value.args[0] == 401
    user_with_password(service, "erin", "erin-secret-pw")
    erin = client(service, username="erin", password="erin-secret-pw")
    with pytest.raises(RuntimeError) as refused:
        erin.txt2img(prompt="x", restore_faces=True, **SMALL)
    assert refused.value.args[0] == 422 and '"restore_faces"' in refused.value.args[1]


def test_progress_during_a_job_then_interrupt(service):
    frank = client(service, token=service["token"]("frank"))
    outcome = {}

    def generate():
        outcome["result"] = frank.txt2img(
            prompt="a red circle", width=64, height=64, steps=900, seed=1, sampler_name="DDIM"
        )

    thread = threading.Thread(target=generate)
    thread.start()
    try:
        deadline, seen = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            progress = frank.get_progress()
            if progress["progress"] > 0:
                seen = progress
                break
            time.sleep(0.1)
        assert seen is not None, "no progress seen"
        assert 0 < seen["progress"] < 1 and seen["state"]["job_count"] == 1
        assert seen["state"]["sampling_steps"] >= 900 and seen["eta_relative"] > 0
        assert client(service, token=service["token"]("grace")).get_progress()["state"]["job_count"] == 0
        # A progress read asks the worker for previews (every JOB_PREVIEW_INTERVAL = 0.05 s here): the next reads
        # carry the current image.
        while time.monotonic() < deadline and not (current := frank.get_progress()["current_image"]):
            time.sleep(0.1)
        assert Image.open(io.BytesIO(base64.b64decode(current))).format == "PNG"
        frank.interrupt()
    finally:
        thread.join(timeout=120)
    result = outcome["result"]
    assert result.images == [] and result.info["interrupted"] is True  # the waiting call answers 200, no images
    idle = frank.get_progress()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0


def test_a_client_that_goes_away_mid_wait_leaves_a_job_that_finishes(service):
    henry = session_for(service["token"]("henry"))
    body = {"prompt": "a red circle", "width": 32, "height": 32, "steps": 300, "seed": 2, "sampler_name": "DDIM"}
    with pytest.raises(requests.exceptions.ReadTimeout):
        henry.post(f"{service['base']}/sdapi/v1/txt2img", json=body, timeout=(5, 1))  # gives up after 1 s
    (job,) = henry.get(f"{service['base']}/api/v1/jobs/", timeout=10).json()["results"]
    job = poll(henry, job["url"], lambda j: j["status"] not in ("queued", "running"))
    assert job["status"] == "succeeded" and job["parameters"]["steps"] == 300
