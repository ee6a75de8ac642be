"""The admin in a real browser: Debian's headless Chromium driven by Playwright, against a live server."""

import io
import os
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from PIL import Image

from diffusion_api.jobs import services
from diffusion_api.jobs.models import Job, ReviewStatus

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "admin"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
]


def red_png(size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (230, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def browser_page(monkeypatch):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (make test does)")
    # Playwright's sync API runs an event loop in this thread; the ORM calls in the test are still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        yield page
        browser.close()


@pytest.fixture
def finished_job(db, settings, tiny_model_dir, monkeypatch, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"  # the images go through the default storage
    settings.MODELS = {"tiny": tiny_model_dir}
    settings.DEFAULT_MODEL = "tiny"
    monkeypatch.setattr("diffusion_api.jobs.services.publish_job", lambda *, job_id, model: True)
    owner = get_user_model().objects.create_user("painter")
    job = services.job_create(owner=owner, prompt="a small red circle in the top left", num_images=2)
    token = services.job_claim(job_id=job.id, worker="w").worker
    services.job_succeed(
        job_id=job.id,
        worker=token,
        images=[{"index": i, "seed": job.seed + i, "width": 32, "height": 32, "png": red_png()} for i in range(2)],
    )
    return job


def test_staff_review_a_job_in_the_browser(browser_page, live_server, finished_job):
    get_user_model().objects.create_user("reviewer", password="review-pw", is_staff=True, is_superuser=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = browser_page

    page.goto(f"{live_server.url}/admin/login/?next=/admin/jobs/job/")
    page.fill("#id_username", "reviewer")
    page.fill("#id_password", "review-pw")
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/jobs/job/")

    thumbnails = page.locator("img.job-thumbnail")
    assert thumbnails.count() == 2
    widths = thumbnails.evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    assert widths == [32, 32]  # the PNGs decoded in the browser, not broken images
    page.screenshot(path=str(SCREENSHOTS / "1-job-list.png"), full_page=True)

    page.click("th.field-short_id a")
    page.wait_for_selector("img.job-image")
    assert page.locator("img.job-image").evaluate_all("imgs => imgs.map(i => i.naturalWidth)") == [32, 32]
    assert "a small red circle in the top left" in page.content()
    page.screenshot(path=str(SCREENSHOTS / "2-job-page.png"), full_page=True)

    page.select_option("#id_review_status", "approved")
    page.click("input[name=_save]")
    page.wait_for_url("**/admin/jobs/job/")
    page.screenshot(path=str(SCREENSHOTS / "3-after-approve.png"), full_page=True)

    job = Job.objects.get(id=finished_job.id)
    assert job.review_status == ReviewStatus.APPROVED and job.reviewed_by.username == "reviewer"
    assert os.path.getsize(SCREENSHOTS / "2-job-page.png") > 10_000


def test_admin_is_for_staff_only(client, db):
    get_user_model().objects.create_user("plain", password="plain-pw")
    client.login(username="plain", password="plain-pw")
    response = client.get("/admin/jobs/job/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_admin_actions_cancel_retry_and_flag(admin_client, finished_job, monkeypatch):
    queued = services.job_create(owner=finished_job.owner, prompt="waiting")
    changelist = "/admin/jobs/job/"
    admin_client.post(changelist, {"action": "cancel_jobs", "_selected_action": [str(queued.id)]})
    assert Job.objects.get(id=queued.id).status == "canceled"
    admin_client.post(changelist, {"action": "retry_jobs", "_selected_action": [str(finished_job.id)]})
    retry = Job.objects.get(retry_of=finished_job)
    assert retry.status == "queued" and retry.seed == finished_job.seed
    admin_client.post(changelist, {"action": "flag_jobs", "_selected_action": [str(finished_job.id)]})
    assert Job.objects.get(id=finished_job.id).review_status == ReviewStatus.FLAGGED
