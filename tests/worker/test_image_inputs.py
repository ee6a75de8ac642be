"""The worker runs img2img and inpainting jobs with the inputs the web process fitted and stored (issue 39)."""

import io

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from PIL import Image

from diffusion_api.jobs import selectors, services
from diffusion_api.jobs.models import Job, JobStatus
from generator import read_manifest
from generator.torch_free import images
from worker import runner, tasks

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media_in_tmp(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("worker-images")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def picture(colour) -> Image.Image:
    pixels = np.zeros((24, 48, 3), np.uint8)
    pixels[:, :24] = colour
    pixels[:, 24:] = (240, 240, 240)
    return Image.fromarray(pixels)


def inpaint_job(user, **fields) -> Job:
    mask = Image.new("L", (48, 24), 0)
    mask.paste(255, (0, 0, 24, 24))
    return services.job_create(
        owner=user,
        prompt="a red circle",
        steps=4,
        seed=3,
        width=16,
        height=16,
        init_image=services.ImageInput(data=png(picture((200, 20, 20)))),
        mask=services.ImageInput(data=png(mask)),
        **fields,
    )


def test_the_request_carries_the_stored_inputs_and_fields(user, published):
    job = inpaint_job(user, strength=0.6, mask_blur=2, subseed=11, subseed_strength=0.3, resize_mode="crop_and_resize")
    request = runner.request_for(job)
    assert request.init_image.mode == "RGB" and request.init_image.size == (16, 16)
    assert request.mask_image.mode == "L" and request.mask_image.size == (16, 16)
    assert images.image_sha256(request.init_image) == job.init_image_sha256
    assert images.image_sha256(request.mask_image) == job.mask_sha256
    expected = images.fit(picture((200, 20, 20)), 16, 16, "crop_and_resize")
    assert np.array_equal(np.asarray(request.init_image), np.asarray(expected))
    assert (request.strength, request.mask_blur, request.subseed, request.subseed_strength) == (0.6, 2, 11, 0.3)
    assert (request.hires_scale, request.inpaint_full_res) == (1.0, False)


def test_a_txt2img_job_builds_the_request_it_always_did(user, published):
    job = services.job_create(owner=user, prompt="x", steps=2, seed=1)
    request = runner.request_for(job)
    assert request.init_image is None and request.mask_image is None and request.subseed is None
    assert (request.strength, request.hires_scale) == (0.75, 1.0)


def test_img2img_jobs_on_different_pictures_run_in_one_batch(user, published):
    jobs = [
        services.job_create(
            owner=user,
            prompt="a circle",
            steps=4,
            seed=5,
            width=16,
            height=16,
            strength=0.5,
            init_image=services.ImageInput(data=png(picture(colour))),
        )
        for colour in ((220, 20, 20), (20, 20, 220))
    ]
    claimed = [services.job_claim(job_id=job.id, worker="w") for job in jobs]
    assert runner.run_jobs(claimed) == {job.id: "succeeded" for job in jobs}
    outputs = []
    for job in jobs:
        stored = selectors.image_png(image=Job.objects.get(id=job.id).images.get())
        manifest = read_manifest(stored)
        assert manifest["init_image_sha256"] == job.init_image_sha256 and manifest["mode"] == "img2img"
        outputs.append(np.asarray(Image.open(io.BytesIO(stored)).convert("RGB"), dtype=float))
    # Strength 0.5 keeps much of each picture: the red one's left half comes out redder than the blue one's.
    left = [pixels[:, :8] for pixels in outputs]
    assert left[0][..., 0].mean() - left[0][..., 2].mean() > left[1][..., 0].mean() - left[1][..., 2].mean()


def test_an_inpaint_job_runs_and_records_its_inputs(user, published, image_store):
    job = inpaint_job(user)
    assert tasks.run_job(str(job.id)) == "succeeded"
    manifest = read_manifest(selectors.image_png(image=Job.objects.get(id=job.id).images.get()))
    assert manifest["mode"] == "inpaint" and manifest["mask_sha256"] == job.mask_sha256


def test_a_job_whose_input_file_is_gone_fails_alone(user, published):
    job = inpaint_job(user)
    job.init_image.storage.delete(job.init_image.name)
    assert tasks.run_job(str(job.id)) == "failed"
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "No such file" in job.error
