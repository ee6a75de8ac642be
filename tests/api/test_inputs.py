"""Input images (issue 39): uploads, init_image and mask on POST jobs/, and every bad input refused before anything
is stored or queued. All checked in the web process with Pillow (no torch)."""

import base64
import io
import struct
import zlib
from datetime import timedelta

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from PIL import Image

from diffusion_api.jobs import services
from diffusion_api.jobs.models import Job, Upload
from generator.torch_free import images

pytestmark = pytest.mark.django_db
JOBS = "/api/v1/jobs/"
UPLOADS = "/api/v1/uploads/"


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def picture(width=48, height=32, colour=(200, 30, 30)) -> Image.Image:
    """Left half `colour`, right half blue: geometry shows in the pixels."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = colour
    pixels[:, width // 2 :] = (20, 20, 220)
    return Image.fromarray(pixels)


def b64(data: bytes) -> dict:
    return {"base64": base64.b64encode(data).decode("ascii")}


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header declaring width × height, 8-bit RGB, with a few bytes of pixel data: a decompression bomb's
    shape (decoding it would allocate width × height × 3 bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def noise(width: int, height: int) -> Image.Image:
    """Random pixels: a PNG of them does not compress, so its size in bytes is predictable."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))


def upload(client, data: bytes, name="in.png"):
    return client.post(UPLOADS, {"file": SimpleUploadedFile(name, data)}, format="multipart")


def animated_png() -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0))]
    return encode(frames[0], "PNG", save_all=True, append_images=frames[1:])


def sixteen_bit_png() -> bytes:
    return encode(Image.fromarray(np.full((16, 16), 40000, np.uint16)), "PNG")


BAD_IMAGES = [
    (b"this is not an image at all", "not a PNG, JPEG or WebP image"),
    (encode(noise(64, 64))[:6000], "could not be decoded (truncated or corrupt)"),
    (png_header_only(100_000, 100_000), "(UPLOAD_MAX_PIXELS)"),  # Pillow's own guard, past twice the setting
    (png_header_only(5000, 4000), "declares 5000 × 4000 pixels; at most 16777216 (UPLOAD_MAX_PIXELS)"),
    (animated_png(), "animated images are not accepted"),
    (sixteen_bit_png(), "16-bit images are not accepted"),
    (encode(picture(), "GIF"), "not a PNG, JPEG or WebP image"),
]


# --- uploads


def test_upload_is_checked_stored_by_content_hash_and_owned(alice, alice_client, image_store):
    data = encode(picture(), "JPEG")
    response = upload(alice_client, data, "in.jpg")
    body = response.json()
    assert response.status_code == 201, body
    assert set(body) == {"id", "sha256", "width", "height", "format", "expires_at"}
    assert (body["width"], body["height"], body["format"]) == (48, 32, "JPEG")
    stored = Upload.objects.get(id=body["id"])
    assert stored.owner == alice and stored.file.name == f"uploads/{body['sha256'][:2]}/{body['sha256']}.png"
    assert default_storage.exists(stored.file.name) and image_store.holds(stored.file.name)
    again = upload(alice_client, data, "in.jpg").json()
    assert again["id"] != body["id"] and again["sha256"] == body["sha256"]  # one file for one content
    assert Upload.objects.get(id=again["id"]).file.name == stored.file.name


def test_upload_applies_exif_orientation(alice_client):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    body = upload(alice_client, encode(picture(48, 32), "JPEG", exif=exif), "phone.jpg").json()
    assert (body["width"], body["height"]) == (32, 48)


@pytest.mark.parametrize(("data", "message"), BAD_IMAGES)
def test_bad_uploads_are_400_naming_the_rule_and_store_nothing(alice_client, data, message, media_in_tmp):
    response = upload(alice_client, data)
    assert response.status_code == 400 and message in response.json()["file"][0], response.json()
    assert Upload.objects.count() == 0 and not (media_in_tmp / "uploads").exists()


def test_upload_needs_a_file_a_token_and_a_body_within_the_limit(alice_client, settings, client):
    assert alice_client.post(UPLOADS, {}, format="multipart").status_code == 400
    assert upload(client, encode(picture())).status_code == 401
    settings.JOB_MAX_IMAGE_BODY_BYTES = 1000
    assert upload(alice_client, encode(noise(64, 64))).status_code == 413


def test_expired_uploads_are_swept_with_their_files(alice, alice_client, image_store):
    body = upload(alice_client, encode(picture())).json()
    name = Upload.objects.get(id=body["id"]).file.name
    assert services.upload_sweep() == 0
    Upload.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert services.upload_sweep() == 1
    assert not Upload.objects.exists() and not default_storage.exists(name) and not image_store.holds(name)


# --- init_image and mask on POST jobs/


def test_img2img_from_base64_is_fitted_stored_and_shown(alice_client, published, image_store):
    source = picture(64, 32)
    data_uri = "data:image/png;base64," + base64.b64encode(encode(source)).decode()
    body = {"prompt": "x", "init_image": {"base64": data_uri}, "strength": 0.6, "resize_mode": "crop_and_resize"}
    response = alice_client.post(JOBS, body, format="json")
    answer = response.json()
    assert response.status_code == 202, answer
    assert answer["parameters"]["mode"] == "img2img" and answer["parameters"]["strength"] == 0.6
    job = Job.objects.get(id=answer["id"])
    expected = images.fit(source, 32, 32, "crop_and_resize")
    assert answer["inputs"] == {
        "init_image": {
            "sha256": images.image_sha256(expected),
            "url": f"http://testserver/api/v1/jobs/{job.id}/inputs/init_image.png",
        },
        "mask": None,
    }
    fetched = alice_client.get(answer["inputs"]["init_image"]["url"])
    assert fetched.status_code == 200 and fetched["Content-Type"] == "image/png"
    stored = Image.open(io.BytesIO(fetched.content))
    assert stored.size == (32, 32) and images.image_sha256(stored) == job.init_image_sha256


def test_inpaint_from_an_upload_with_an_alpha_mask(alice_client, published):
    upload_id = upload(alice_client, encode(picture(64, 64))).json()["id"]
    alpha = np.full((32, 32), 255, np.uint8)
    alpha[:, :16] = 0  # transparent = repaint: the left half
    mask = Image.fromarray(np.dstack([np.zeros((32, 32, 3), np.uint8), alpha]), "RGBA")  # half the size, same ratio
    body = {"prompt": "x", "init_image": {"upload": upload_id}, "mask": b64(encode(mask)), "mask_blur": 0}
    answer = alice_client.post(JOBS, body, format="json").json()
    assert answer["parameters"]["mode"] == "inpaint", answer
    job = Job.objects.get(id=answer["id"])
    with job.mask_image.open("rb") as file:
        stored = np.asarray(Image.open(file))
    assert stored.shape == (32, 32) and stored[:, :14].min() == 255 and stored[:, 18:].max() == 0
    assert alice_client.get(answer["inputs"]["mask"]["url"]).status_code == 200
    assert alice_client.get(f"/api/v1/jobs/{job.id}/inputs/other.png").status_code == 404


def test_a_one_channel_mask_is_white_to_repaint(alice_client, published):
    mask = Image.new("L", (48, 32), 0)
    mask.paste(255, (0, 0, 24, 32))
    body = {"prompt": "x", "init_image": b64(encode(picture())), "mask": b64(encode(mask))}
    answer = alice_client.post(JOBS, body, format="json").json()
    assert answer["parameters"]["mode"] == "inpaint"
    assert Job.objects.get(id=answer["id"]).mask_sha256 == images.image_sha256(images.fit_mask(mask, 32, 32))


@pytest.mark.parametrize(("data", "message"), BAD_IMAGES)
def test_bad_init_images_are_400_and_nothing_is_queued(alice_client, published, data, message):
    response = alice_client.post(JOBS, {"prompt": "x", "init_image": b64(data)}, format="json")
    assert response.status_code == 400 and message in response.json()["init_image"][0], response.json()
    assert Job.objects.count() == 0 and published == []


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"mask": b64(encode(picture(48, 32)))}, "mask", "one channel (white = repaint) or an alpha channel"),
        ({"mask": b64(encode(Image.new("L", (32, 32))))}, "mask", "the mask is 32 × 32 and the init image 48 × 32"),
        ({"mask": b64(b"GIF89a nope")}, "mask", "not a PNG, JPEG or WebP image"),
        ({"init_image": None}, "init_image", "may not be null"),
        ({"init_image": "abc"}, "init_image", "must be an object"),
        ({"init_image": {"base64": "%%%"}}, "init_image", "must be base64"),
        ({"init_image": {"upload": "x", "base64": "y"}}, "init_image", 'exactly one of "upload" and "base64"'),
        ({"init_image": {"url": "http://x"}}, "init_image", "unknown keys url"),
        ({"init_image": {"upload": "not-a-uuid"}}, "init_image", "valid UUID"),
        ({"strength": 0}, "strength", "must be more than 0.0 and at most 1.0"),
        ({"strength": 1.01}, "strength", "must be more than 0.0 and at most 1.0"),
        ({"subseed_strength": -0.1}, "subseed_strength", "must be from 0.0 to 1.0"),
        ({"subseed_strength": 1.5}, "subseed_strength", "must be from 0.0 to 1.0"),
        ({"subseed": -1}, "subseed", "must be from 0"),
        ({"hires_scale": 0.5}, "hires_scale", "must be from 1.0 to 4.0"),
        ({"hires_upscaler": "esrgan"}, "hires_upscaler", "not one of: latent, latent-nearest, lanczos"),
        ({"resize_mode": "stretch"}, "resize_mode", "not one of: just_resize, crop_and_resize, resize_and_fill"),
        ({"mask_blur": 65}, "mask_blur", "must be from 0 to 64"),
        ({"inpaint_full_res": "yes"}, "inpaint_full_res", "must be true or false"),
        ({"hires_strength": 0.0}, "hires_strength", "must be more than 0.0"),
    ],
)
def test_bad_image_fields_are_400_naming_the_rule(alice_client, published, fields, field, message):
    body = {"prompt": "x", "init_image": b64(encode(picture())), **fields}
    response = alice_client.post(JOBS, body, format="json")
    assert response.status_code == 400 and message in str(response.json()[field]), response.json()
    assert Job.objects.count() == 0 and published == []


def test_a_mask_needs_an_init_image(alice_client, published):
    response = alice_client.post(JOBS, {"prompt": "x", "mask": b64(encode(Image.new("L", (8, 8))))}, format="json")
    assert (
        response.status_code == 400
        and "a mask needs an init image (init_image) to repaint" in response.json()["mask"][0]
    )
    assert Job.objects.count() == 0


def test_a_hires_scale_past_the_pixel_budget_is_400(alice_client, published, settings):
    settings.JOB_MAX_PIXELS = 64 * 64
    response = alice_client.post(JOBS, {"prompt": "x", "width": 32, "height": 32, "hires_scale": 2.5}, format="json")
    assert response.status_code == 400, response.json()
    message = response.json()["hires_scale"][0]
    assert message == "width × height × hires_scale² must be at most 4096 pixels (80 × 80 asked)"
    ok = alice_client.post(JOBS, {"prompt": "x", "width": 32, "height": 32, "hires_scale": 2}, format="json")
    assert ok.status_code == 202 and ok.json()["parameters"]["hires_scale"] == 2.0
    assert Job.objects.count() == 1


def test_another_users_upload_is_404_and_an_expired_one_400(alice_client, bob_client, published):
    upload_id = upload(alice_client, encode(picture())).json()["id"]
    response = bob_client.post(JOBS, {"prompt": "x", "init_image": {"upload": upload_id}}, format="json")
    assert response.status_code == 404 and upload_id in response.json()["detail"]
    Upload.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    response = alice_client.post(JOBS, {"prompt": "x", "init_image": {"upload": upload_id}}, format="json")
    assert response.status_code == 400 and f"upload {upload_id} expired at" in response.json()["init_image"][0]
    services.upload_sweep()
    response = alice_client.post(JOBS, {"prompt": "x", "init_image": {"upload": upload_id}}, format="json")
    assert response.status_code == 404
    assert Job.objects.count() == 0 and published == []


def test_only_bodies_with_images_may_use_the_larger_body_limit(alice_client, published, settings):
    settings.JOB_MAX_BODY_BYTES = 2000
    padded = {"prompt": "x", "negative_prompt": "y" * 3000}
    response = alice_client.post(JOBS, padded, format="json")
    assert response.status_code == 413 and "without init_image or mask" in response.json()["detail"]
    big_image = noise(48, 48)  # about 7 KB of PNG, 9 KB as base64
    response = alice_client.post(JOBS, {"prompt": "x", "init_image": b64(encode(big_image))}, format="json")
    assert response.status_code == 202, response.json()
    settings.JOB_MAX_IMAGE_BODY_BYTES = 8000
    response = alice_client.post(JOBS, {"prompt": "x", "init_image": b64(encode(big_image))}, format="json")
    assert response.status_code == 413
    assert Job.objects.count() == 1


# --- the cache, the batch claim and retries see the inputs


def run(job):
    claim = services.job_claim(job_id=job.id, worker="w").worker
    done = [{"index": i, "seed": job.seed + i, "width": 32, "height": 32, "png": b"png"} for i in range(job.num_images)]
    services.job_succeed(job_id=job.id, worker=claim, images=done)


def test_the_cache_keys_on_the_input_images(alice, alice_client, published):
    red, green = encode(picture(colour=(200, 30, 30))), encode(picture(colour=(30, 200, 30)))
    first = alice_client.post(JOBS, {"prompt": "x", "seed": 3, "init_image": b64(red)}, format="json").json()
    run(Job.objects.get(id=first["id"]))
    same = alice_client.post(JOBS, {"prompt": "x", "seed": 3, "init_image": b64(red)}, format="json").json()
    assert (
        same["cached_from"] == first["id"]
        and same["inputs"]["init_image"]["sha256"] == first["inputs"]["init_image"]["sha256"]
    )
    other = alice_client.post(JOBS, {"prompt": "x", "seed": 3, "init_image": b64(green)}, format="json").json()
    assert other["status"] == "queued" and other["cached_from"] is None
    text_only = alice_client.post(JOBS, {"prompt": "x", "seed": 3}, format="json").json()
    assert text_only["cached_from"] is None and text_only["parameters"]["mode"] == "txt2img"
    weaker = {"prompt": "x", "seed": 3, "init_image": b64(red), "strength": 0.5}
    assert alice_client.post(JOBS, weaker, format="json").json()["cached_from"] is None


def test_the_batch_claim_groups_only_jobs_with_the_same_mode_strength_and_hires(alice, published):
    """As generator.pipeline.batch_key: the engine takes each row's own init image, not its own strength."""

    def inputs(colour):
        return services.ImageInput(data=encode(picture(colour=colour)))

    first = services.job_create(owner=alice, prompt="a", init_image=inputs((200, 30, 30)))
    same_image = services.job_create(owner=alice, prompt="b", init_image=inputs((200, 30, 30)))
    other_image = services.job_create(owner=alice, prompt="c", init_image=inputs((30, 200, 30)))
    other_strength = services.job_create(owner=alice, prompt="d", init_image=inputs((200, 30, 30)), strength=0.3)
    hires = services.job_create(owner=alice, prompt="e", init_image=inputs((200, 30, 30)), hires_scale=1.5)
    text = services.job_create(owner=alice, prompt="f")
    mask = services.ImageInput(data=encode(Image.new("L", (48, 32), 255)))
    inpaint = services.job_create(owner=alice, prompt="g", init_image=inputs((200, 30, 30)), mask=mask)
    claimed = services.job_claim(job_id=first.id, worker="w")
    mates = services.job_claim_batch(job=claimed, worker="w", limit=8)
    assert {mate.id for mate in mates} == {same_image.id, other_image.id}
    assert [j.mode for j in (other_strength, hires, text, inpaint)] == ["img2img", "img2img", "txt2img", "inpaint"]


def test_a_retry_keeps_the_inputs(alice, published):
    mask = Image.new("L", (48, 32), 255)
    job = services.job_create(
        owner=alice,
        prompt="x",
        init_image=services.ImageInput(data=encode(picture())),
        mask=services.ImageInput(data=encode(mask)),
        subseed=5,
        subseed_strength=0.25,
    )
    again = services.job_retry(job=job)
    assert (again.mode, again.init_image_sha256, again.mask_sha256) == (
        job.mode,
        job.init_image_sha256,
        job.mask_sha256,
    )
    assert (again.subseed, again.subseed_strength, again.retry_of) == (5, 0.25, job)


def test_the_admin_shows_the_inputs_beside_the_outputs(alice, staff, client, published):
    job = services.job_create(owner=alice, prompt="x", init_image=services.ImageInput(data=encode(picture())))
    client.force_login(staff)
    staff.is_superuser = True
    staff.save()
    page = client.get(f"/admin/jobs/job/{job.id}/change/").content.decode()
    assert 'class="job-input"' in page and job.init_image_sha256 in page
