import base64
import io
import uuid

import pytest
from PIL import Image
from rest_framework.test import APIClient

from diffusion_api.jobs import services
from diffusion_api.jobs.models import Job

pytestmark = pytest.mark.django_db
JOBS = "/api/v1/jobs/"


def png(width=32, height=32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def finish(job: Job) -> None:
    token = services.job_claim(job_id=job.id, worker="w").worker
    images = [
        {"index": i, "seed": job.seed + i, "width": job.width, "height": job.height, "png": png()}
        for i in range(job.num_images)
    ]
    services.job_succeed(job_id=job.id, worker=token, images=images)


def test_token_endpoint(alice):
    response = APIClient().post("/api/v1/auth/token/", {"username": "alice", "password": "pw-alice"}, format="json")
    assert response.status_code == 200 and len(response.json()["token"]) == 40
    assert (
        APIClient().post("/api/v1/auth/token/", {"username": "alice", "password": "no"}, format="json").status_code
        == 400
    )


def test_create_returns_202_with_the_resolved_job(alice_client, published):
    response = alice_client.post(JOBS, {"prompt": "a red circle", "steps": 4, "num_images": 2}, format="json")
    assert response.status_code == 202, response.json()
    body = response.json()
    assert body["status"] == "queued" and body["queue_position"] == 1
    assert response["Location"] == body["url"] and body["url"].endswith(f"/api/v1/jobs/{body['id']}/")
    parameters = body["parameters"]
    assert parameters["steps"] == 4 and parameters["num_images"] == 2 and isinstance(parameters["seed"], int)
    assert parameters["width"] == 32 and parameters["scheduler"] == "ddim" and parameters["model"] == "tiny"
    assert body["progress"] == {"step": 0, "total": 4, "percent": 0.0} and body["images"] is None


@pytest.mark.parametrize(
    "body, field, text",
    [
        ({}, "prompt", "required"),
        ({"prompt": ""}, "prompt", "blank"),
        ({"prompt": "x", "colour": "red"}, "colour", "unknown field"),
        ({"prompt": "x", "width": "64"}, "width", "must be an integer"),
        ({"prompt": "x", "steps": 2.5}, "steps", "must be an integer"),
        ({"prompt": "x", "steps": True}, "steps", "must be an integer"),
        ({"prompt": "x", "guidance_scale": "7"}, "guidance_scale", "must be a number"),
        ({"prompt": "x", "width": 4}, "width", "must be from 8 to 2048"),
        ({"prompt": "x", "width": 33}, "width", "multiple of 2"),
        ({"prompt": "x", "steps": 0}, "steps", "must be from 1 to 150"),
        ({"prompt": "x", "steps": 151}, "steps", "must be from 1 to 150"),
        ({"prompt": "x", "guidance_scale": -1}, "guidance_scale", "must be from 0.0 to 30.0"),
        ({"prompt": "x", "num_images": 5}, "num_images", "must be from 1 to 4"),
        ({"prompt": "x", "seed": -3}, "seed", "must be from 0"),
        ({"prompt": "x", "scheduler": "heun"}, "scheduler", "known schedulers: ddim"),
        ({"prompt": "x", "model": "sd15"}, "model", "unknown model 'sd15'; available: tiny"),
        ({"prompt": "x" * 501}, "prompt", "at most 500 characters"),
        ({"prompt": 5}, "prompt", "must be a string"),
    ],
)
def test_bad_input_is_400_with_a_message_per_field(alice_client, published, body, field, text):
    response = alice_client.post(JOBS, body, format="json")
    assert response.status_code == 400
    assert text in " ".join(response.json()[field]), response.json()
    assert Job.objects.count() == 0 and published == []


def test_invalid_json_and_non_objects_are_400(alice_client, published):
    response = alice_client.post(JOBS, data="{not json", content_type="application/json")
    assert response.status_code == 400 and "JSON parse error" in response.json()["detail"]
    assert alice_client.post(JOBS, data="[1, 2]", content_type="application/json").status_code == 400
    assert Job.objects.count() == 0


def test_no_token_is_401(db):
    assert APIClient().get(JOBS).status_code == 401
    assert APIClient().post(JOBS, {"prompt": "x"}, format="json").status_code == 401
    assert APIClient().get("/api/v1/models/").status_code == 401


def test_list_is_own_jobs_newest_first_paginated_filtered_without_images(alice, bob, alice_client, published):
    jobs = [services.job_create(owner=alice, prompt=f"p{i}") for i in range(22)]
    services.job_create(owner=bob, prompt="bob's")
    finish(jobs[0])
    body = alice_client.get(JOBS).json()
    assert body["count"] == 22 and len(body["results"]) == 20 and body["next"]
    assert body["results"][0]["id"] == str(jobs[-1].id)
    assert "images" not in body["results"][0] and "png_base64" not in str(body)
    succeeded = alice_client.get(JOBS, {"status": "succeeded"}).json()
    assert [j["id"] for j in succeeded["results"]] == [str(jobs[0].id)]
    assert alice_client.get(JOBS, {"status": "done"}).status_code == 400


def test_detail_has_images_when_done_and_png_endpoint_serves_them(alice, alice_client, published, image_store):
    job = services.job_create(owner=alice, prompt="x", num_images=2)
    finish(job)
    body = alice_client.get(f"{JOBS}{job.id}/").json()
    assert body["status"] == "succeeded" and body["progress"]["percent"] == 100.0
    assert [i["index"] for i in body["images"]] == [0, 1]
    decoded = Image.open(io.BytesIO(base64.b64decode(body["images"][1]["png_base64"])))
    assert decoded.size == (32, 32)
    response = alice_client.get(f"{JOBS}{job.id}/images/1.png")
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert response.content == base64.b64decode(body["images"][1]["png_base64"])
    assert alice_client.get(f"{JOBS}{job.id}/images/2.png").status_code == 404


def test_other_users_get_404_and_staff_see_all(alice, alice_client, bob_client, staff_client, published):
    job = services.job_create(owner=alice, prompt="x")
    finish(job)
    for path in (f"{JOBS}{job.id}/", f"{JOBS}{job.id}/images/0.png"):
        assert bob_client.get(path).status_code == 404
        assert staff_client.get(path).status_code == 200
    assert bob_client.post(f"{JOBS}{job.id}/cancel/").status_code == 404
    assert alice_client.get(f"{JOBS}{uuid.uuid4()}/").status_code == 404


def test_cancel(alice, alice_client, published):
    queued = services.job_create(owner=alice, prompt="x")
    response = alice_client.post(f"{JOBS}{queued.id}/cancel/")
    assert response.status_code == 202 and response.json()["status"] == "canceled"
    assert alice_client.post(f"{JOBS}{queued.id}/cancel/").status_code == 409

    running = services.job_create(owner=alice, prompt="y")
    services.job_claim(job_id=running.id, worker="w")
    body = alice_client.post(f"{JOBS}{running.id}/cancel/").json()
    assert body["status"] == "running" and body["cancel_requested"] is True


def test_models_and_schedulers(alice_client):
    models = alice_client.get("/api/v1/models/").json()
    assert models["models"][0]["name"] == "tiny" and models["models"][0]["ready"]
    assert models["models"][0]["defaults"]["width"] == 32 and models["models"][0]["size_multiple_of"] == 2
    assert models["limits"]["max_steps"] == 150
    names = [s["name"] for s in alice_client.get("/api/v1/schedulers/").json()["schedulers"]]
    assert {"ddim", "euler_a", "dpmpp_2m_karras", "lcm"} <= set(names)


def test_health_needs_no_token_and_names_each_part(db):
    body = APIClient().get("/api/v1/health/").json()
    assert body["database"] == {"ok": True}
    assert set(body) == {"status", "database", "broker", "storage", "workers"}
    assert body["workers"]["ok"] is False  # no worker runs in unit tests
    assert body["storage"] == {"ok": True, "backend": "filesystem", "held_images": 0}


def test_issue_token_command(db):
    from django.core.management import call_command

    out = io.StringIO()
    call_command("issue_token", "carol", stdout=out)
    token = out.getvalue().strip()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get(JOBS).status_code == 200
    again = io.StringIO()
    call_command("issue_token", "carol", stdout=again)  # a new key each time (only digests are stored)
    assert again.getvalue().strip() != token
    assert client.get(JOBS).status_code == 200  # and the first one still works


def test_web_process_never_imports_torch():
    import subprocess
    import sys

    code = (
        "import os, sys, django; os.environ['DJANGO_SETTINGS_MODULE'] = 'diffusion_api.settings.test'; django.setup(); "
        "import diffusion_api.urls, diffusion_api.jobs.admin, diffusion_api.jobs.views; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
