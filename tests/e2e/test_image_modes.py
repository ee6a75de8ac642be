"""End to end on PostgreSQL and Redis: an image uploaded once, then img2img and inpainting jobs that reference it,
run by a real worker on the tiny model (issue 39)."""

import base64
import io

import numpy as np
from PIL import Image

from generator import read_manifest
from tests.e2e.conftest import session_for
from tests.e2e.test_service import poll


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_upload_then_img2img_and_inpaint_jobs_run_on_it(service):
    base = service["base"]
    alice = session_for(service["token"]("alice"))
    pixels = np.full((40, 60, 3), 235, np.uint8)
    pixels[5:25, 5:25] = (210, 20, 20)
    uploaded = alice.post(f"{base}/api/v1/uploads/", files={"file": ("in.png", png(Image.fromarray(pixels)))})
    assert uploaded.status_code == 201, uploaded.text
    upload_id = uploaded.json()["id"]

    bob = session_for(service["token"]("bob"))
    stolen = bob.post(f"{base}/api/v1/jobs/", json={"prompt": "x", "init_image": {"upload": upload_id}})
    assert stolen.status_code == 404

    mask = Image.new("L", (60, 40), 0)
    mask.paste(255, (30, 0, 60, 40))
    common = {"prompt": "a red circle", "width": 32, "height": 32, "steps": 4, "seed": 5}
    requests = {
        "img2img": {**common, "init_image": {"upload": upload_id}, "strength": 0.6, "resize_mode": "crop_and_resize"},
        "inpaint": {
            **common,
            "init_image": {"upload": upload_id},
            "mask": {"base64": "data:image/png;base64," + base64.b64encode(png(mask)).decode()},
        },
    }
    for mode, body in requests.items():
        response = alice.post(f"{base}/api/v1/jobs/", json=body, timeout=10)
        assert response.status_code == 202, response.text
        job = poll(alice, response.json()["url"], lambda j: j["status"] not in ("queued", "running"))
        assert job["status"] == "succeeded" and job["parameters"]["mode"] == mode, job
        stored = base64.b64decode(job["images"][0]["png_base64"])
        assert Image.open(io.BytesIO(stored)).size == (32, 32)
        manifest = read_manifest(stored)
        assert manifest["init_image_sha256"] == job["inputs"]["init_image"]["sha256"]
        fitted = alice.get(job["inputs"]["init_image"]["url"], timeout=10)
        assert fitted.headers["Content-Type"] == "image/png"
        assert Image.open(io.BytesIO(fitted.content)).size == (32, 32)
        if mode == "inpaint":
            assert manifest["mask_sha256"] == job["inputs"]["mask"]["sha256"]
