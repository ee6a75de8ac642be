"""Images in Django's storage: the file system, or an S3-compatible store (a local moto server; `servers` tier).

Each test that takes `image_store` runs on both. The store goes down as a MEDIA_ROOT that cannot hold folders, or as
an S3 endpoint on a closed port; jobs still end, their images held in the database until the sweeper moves them.
"""

import base64
import hashlib
import io
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import requests
from boto3.exceptions import S3TransferFailedError
from botocore.exceptions import ReadTimeoutError
from django.contrib.auth import get_user_model
from django.core import signing
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from PIL import Image
from rest_framework.test import APIClient
from s3transfer.exceptions import RetriesExceededError

from diffusion_api.jobs import selectors, services, store
from diffusion_api.jobs.models import ImageState, Job, JobImage, JobStatus, Upload
from diffusion_api.openai_api.views import URL_SALT
from diffusion_api.settings.base import s3_storage
from tests.conftest import StoreUnderTest

pytestmark = pytest.mark.django_db
JOBS = "/api/v1/jobs/"


def png(colour=(200, 10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def finish(job: Job, colours=((200, 10, 10), (10, 200, 10))) -> list[bytes]:
    """Run `job` as a worker would: claim it, hand in one PNG per image. The PNGs it handed in."""
    token = services.job_claim(job_id=job.id, worker="w").worker
    pngs = [png(colours[i % len(colours)]) for i in range(job.num_images)]
    images = [
        {"index": i, "seed": job.seed + i, "width": 32, "height": 32, "png": data} for i, data in enumerate(pngs)
    ]
    assert services.job_succeed(job_id=job.id, worker=token, images=images)
    return pngs


def test_a_jobs_images_are_written_to_the_store_and_served_from_it(alice, alice_client, published, image_store):
    job = services.job_create(owner=alice, prompt="x", num_images=2)
    pngs = finish(job)
    rows = list(JobImage.objects.filter(job=job).order_by("index"))
    for row, data in zip(rows, pngs, strict=True):
        digest = hashlib.sha256(data).hexdigest()
        assert row.state == ImageState.STORED and row.png is None  # nothing left in the database
        assert row.file.name == f"images/{job.id}/{row.index}-{digest[:16]}.png"
        assert (row.sha256, row.size) == (digest, len(data))
        assert image_store.read(row.file.name) == data  # really in the store, read behind the service's back
    body = alice_client.get(f"{JOBS}{job.id}/").json()
    assert [base64.b64decode(image["png_base64"]) for image in body["images"]] == pngs
    assert [image["expired"] for image in body["images"]] == [False, False] and body["expires_at"] is None
    served = alice_client.get(f"{JOBS}{job.id}/images/1.png")
    assert served.status_code == 200 and served.content == pngs[1]


def test_the_file_system_keeps_the_api_route_as_the_image_url(alice, alice_client, published):
    job = services.job_create(owner=alice, prompt="x")
    finish(job)
    url = alice_client.get(f"{JOBS}{job.id}/").json()["images"][0]["url"]
    assert url == f"http://testserver/api/v1/jobs/{job.id}/images/0.png"


@pytest.mark.servers
def test_with_s3_the_image_url_is_a_presigned_link_to_the_store(
    alice, alice_client, published, settings, tmp_path, s3_endpoint
):
    """The link goes straight to the store, signed (SigV4) for IMAGE_URL_EXPIRES_SECONDS, and a plain HTTP GET
    with no token fetches the PNG. moto does not check presigned signatures or their expiry (it reads only an
    Authorization header), so the 403 for an altered or expired link is the real store's to give, not tested here."""
    image_store = StoreUnderTest("s3", settings, tmp_path, s3_endpoint)
    job = services.job_create(owner=alice, prompt="x")
    (data,) = finish(job)
    url = alice_client.get(f"{JOBS}{job.id}/").json()["images"][0]["url"]
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    assert f"{parsed.scheme}://{parsed.netloc}" == image_store.endpoint
    assert parsed.path == f"/{image_store.bucket}/{JobImage.objects.get(job=job).file.name}"
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and query["X-Amz-Signature"][0]
    assert query["X-Amz-Expires"] == [str(settings.IMAGE_URL_EXPIRES_SECONDS)]
    fetched = requests.get(url, timeout=10)
    assert fetched.status_code == 200 and fetched.content == data


def test_health_names_the_store_and_whether_it_answers(db, image_store):
    health = APIClient().get("/api/v1/health/").json()
    assert health["storage"]["ok"] is True and health["storage"]["backend"] == image_store.kind
    assert health["status"] == "degraded"  # no worker runs here; the store is not why
    image_store.down()
    health = APIClient().get("/api/v1/health/")
    assert health.status_code == 200  # jobs still end without the store: degraded, not down
    assert health.json()["storage"]["ok"] is False and health.json()["storage"]["detail"]


def test_health_names_a_store_failure_by_its_kind_alone(db, image_store):
    """Health answers anyone: the store's endpoint (S3) or MEDIA_ROOT (file system) stays in the log."""
    image_store.down()
    answer = APIClient().get("/api/v1/health/").json()["storage"]
    assert set(answer) == {"ok", "backend", "detail", "held_images"}
    assert answer["detail"] in ("EndpointConnectionError", "FileExistsError"), answer
    text = str(answer)
    assert "127.0.0.1" not in text and "http" not in text and str(image_store.media_root.parent) not in text


def test_a_store_outage_holds_the_images_in_the_database_and_the_job_still_succeeds(
    alice, alice_client, published, image_store
):
    job = services.job_create(owner=alice, prompt="x", num_images=2)
    image_store.down()
    pngs = finish(job)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    rows = list(JobImage.objects.filter(job=job).order_by("index"))
    assert [row.state for row in rows] == [ImageState.HELD, ImageState.HELD]
    assert [bytes(row.png) for row in rows] == pngs and all(row.file.name == "" for row in rows)
    assert rows[0].store_attempts == 1 and rows[0].store_error and rows[0].store_after > timezone.now()
    # Held images are served from the database while the store is down, and the url is the API's own route.
    body = alice_client.get(f"{JOBS}{job.id}/").json()
    assert [base64.b64decode(image["png_base64"]) for image in body["images"]] == pngs
    assert body["images"][0]["url"].endswith(f"/api/v1/jobs/{job.id}/images/0.png")
    assert alice_client.get(f"{JOBS}{job.id}/images/1.png").content == pngs[1]
    assert APIClient().get("/api/v1/health/").json()["storage"]["held_images"] == 2

    # Not due yet: the sweeper leaves them. Due, with the store back: it moves every byte, and clears the database.
    assert services.image_store_sweep() == 0
    image_store.up()
    JobImage.objects.filter(job=job).update(store_after=timezone.now())
    assert services.image_store_sweep() == 2
    for row, data in zip(JobImage.objects.filter(job=job).order_by("index"), pngs, strict=True):
        assert row.state == ImageState.STORED and row.png is None and image_store.read(row.file.name) == data
        assert row.sha256 == hashlib.sha256(data).hexdigest() and row.store_error == ""
    assert [base64.b64decode(i["png_base64"]) for i in alice_client.get(f"{JOBS}{job.id}/").json()["images"]] == pngs


@pytest.mark.parametrize(
    "meanwhile, kept",
    [
        # Another sweeper read the same held image, stored the same bytes under the same name and marked it first.
        (lambda name: dict(state=ImageState.STORED, file=name, png=None), True),
        # Retention expired it: what this sweeper wrote is nobody's.
        (lambda name: dict(state=ImageState.EXPIRED, file="", png=None), False),
    ],
    ids=["stored-by-another-sweeper", "expired"],
)
def test_a_sweeper_that_loses_the_race_for_a_held_image_deletes_only_what_nobody_holds(
    alice, published, image_store, monkeypatch, meanwhile, kept
):
    job = services.job_create(owner=alice, prompt="x")
    image_store.down()
    (data,) = finish(job)
    image_store.up()
    image = JobImage.objects.get(job=job)
    JobImage.objects.filter(id=image.id).update(store_after=None)
    real_save = store.save

    def save_as_the_other_party_moves(name, data):
        saved = real_save(name, data)
        JobImage.objects.filter(id=image.id).update(**meanwhile(saved))
        return saved

    monkeypatch.setattr(store, "save", save_as_the_other_party_moves)
    assert services.image_store_sweep() == 0  # its guarded update matched nothing
    image.refresh_from_db()
    name = store.image_name(job_id=job.id, index=0, sha256=hashlib.sha256(data).hexdigest())
    assert image_store.holds(name) is kept
    if kept:
        assert image.file.name == name and image_store.read(name) == data
        assert selectors.image_png(image=image) == data


def test_the_sweeper_stops_at_the_first_refusal_and_waits_longer_each_time(alice, published, image_store, settings):
    settings.STORAGE_RETRY_MAX_SECONDS = 60
    job = services.job_create(owner=alice, prompt="x", num_images=2)
    image_store.down()
    finish(job)
    first, second = JobImage.objects.filter(job=job).order_by("index")
    JobImage.objects.filter(job=job).update(store_after=timezone.now() - timedelta(seconds=1))
    waits = []
    for _ in range(4):
        store.resume()
        assert services.image_store_sweep() == 0
        first.refresh_from_db()
        waits.append(round((first.store_after - timezone.now()).total_seconds()))
        JobImage.objects.filter(id=first.id).update(store_after=timezone.now() - timedelta(days=1))  # due first
    second.refresh_from_db()
    assert first.store_attempts == 5 and second.store_attempts == 1  # one refusal per round, the rest untouched
    assert waits == [30, 60, 60, 60]  # 15 s doubling, at most STORAGE_RETRY_MAX_SECONDS
    assert bytes(first.png) and bytes(second.png)  # held all along: nothing lost


def test_after_an_outage_the_store_is_left_alone_for_a_few_seconds(db, image_store):
    """So that a dead store costs one timeout per process, not one per image or per request."""
    with pytest.raises(store.StoreUnavailable) as missing:
        store.read("never-written.png")
    assert "not tried again" not in str(missing.value)
    assert store.save("probe.png", b"x") == "probe.png"  # a missing file is not an outage: no pause
    image_store.down()
    with pytest.raises(store.StoreUnavailable) as failed:
        store.save("other.png", b"y")
    assert "not tried again" not in str(failed.value)
    with pytest.raises(store.StoreUnavailable, match="not tried again"):
        store.read("probe.png")
    image_store.up()  # (and forget the failure)
    assert store.read("probe.png") == b"x"


def test_an_attempt_that_loses_its_claim_while_writing_never_takes_the_next_attempts_images(
    alice, published, image_store, monkeypatch
):
    """The same seed makes the same PNG, under the same name: the late attempt must not delete it."""
    job = services.job_create(owner=alice, prompt="x")
    late = services.job_claim(job_id=job.id, worker="late").worker
    image = {"index": 0, "seed": 1, "width": 32, "height": 32, "png": png()}
    real_save, calls = store.save, []

    def save_while_another_attempt_finishes(name, data):
        saved = real_save(name, data)
        if not calls:  # meanwhile the sweeper took the job back, and another attempt ran it and ended it
            calls.append(name)
            Job.objects.filter(id=job.id).update(status=JobStatus.QUEUED, worker="")
            again = services.job_claim(job_id=job.id, worker="again").worker
            assert services.job_succeed(job_id=job.id, worker=again, images=[image])
        return saved

    monkeypatch.setattr(store, "save", save_while_another_attempt_finishes)
    assert services.job_succeed(job_id=job.id, worker=late, images=[image]) is False
    (row,) = JobImage.objects.filter(job=job)
    assert image_store.read(row.file.name) == image["png"] and selectors.image_png(image=row) == image["png"]


def test_uploads_are_a_503_while_the_store_is_down(alice_client, image_store):
    image_store.down()
    file = SimpleUploadedFile("in.png", png(), content_type="image/png")
    response = alice_client.post("/api/v1/uploads/", {"file": file}, format="multipart")
    assert response.status_code == 503 and "object store" in response.json()["detail"]
    assert response["Retry-After"]


def test_a_stored_image_the_store_cannot_give_is_a_503_on_its_route(alice, alice_client, published, image_store):
    job = services.job_create(owner=alice, prompt="x")
    finish(job)
    image_store.down()
    response = alice_client.get(f"{JOBS}{job.id}/images/0.png")
    assert response.status_code == 503 and response["Retry-After"]
    detail = alice_client.get(f"{JOBS}{job.id}/")  # the job itself still answers; only the bytes are missing
    assert detail.status_code == 200 and detail.json()["images"][0]["png_base64"] is None


def test_a_stored_image_missing_from_the_store_is_a_404_not_a_503(alice, alice_client, published, image_store):
    """The store answered that it has no such object: the bytes are lost, and retrying (a 503's promise) won't help."""
    job = services.job_create(owner=alice, prompt="x", num_images=2)
    finish(job)
    lost = JobImage.objects.get(job=job, index=0).file.name
    store.delete(lost)  # behind the job's back
    response = alice_client.get(f"{JOBS}{job.id}/images/0.png")
    assert response.status_code == 404 and "Retry-After" not in response
    assert response.json()["detail"] == "the image's bytes are missing from the store"
    images = alice_client.get(f"{JOBS}{job.id}/").json()["images"]
    assert images[0]["png_base64"] is None and images[1]["png_base64"]  # not an outage: the other image still reads
    assert alice_client.get(f"{JOBS}{job.id}/images/1.png").status_code == 200


def test_a_jobs_input_missing_from_the_store_is_a_404(alice_client, published, image_store):
    body = {"prompt": "x", "init_image": {"base64": base64.b64encode(png()).decode()}}
    created = alice_client.post(JOBS, body, format="json").json()
    store.delete(Job.objects.get(id=created["id"]).init_image.name)
    response = alice_client.get(created["inputs"]["init_image"]["url"])
    assert response.status_code == 404 and "missing from the store" in response.json()["detail"]


@pytest.mark.parametrize(
    "error",
    [
        RetriesExceededError(ReadTimeoutError(endpoint_url="http://store.internal:9000")),  # s3transfer's, a stall
        S3TransferFailedError("the transfer failed"),  # boto3's
    ],
    ids=type,
)
def test_what_boto3s_transfers_raise_is_the_store_not_answering(
    alice, alice_client, published, monkeypatch, unpaused, error
):
    """django-storages' open() and save() go through s3transfer, whose errors are not botocore's."""
    job = services.job_create(owner=alice, prompt="x")
    finish(job)

    def fails(*args, **kwargs):
        raise error

    monkeypatch.setattr(default_storage, "open", fails)
    detail = alice_client.get(f"{JOBS}{job.id}/")
    assert detail.status_code == 200 and detail.json()["images"][0]["png_base64"] is None
    image = alice_client.get(f"{JOBS}{job.id}/images/0.png")
    assert image.status_code == 503 and image["Retry-After"]


@pytest.fixture
def unpaused():
    """No pause left over from an earlier test's store failure, and none left behind for the next."""
    store.resume()
    yield
    store.resume()


class StalledBody(BaseHTTPRequestHandler):
    """An S3 endpoint that answers every GET's headers, then sends a few bytes of the body and nothing more."""

    def do_GET(self):
        self.server.requests.append(("GET", self.path))
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"\x89PNG\r\n")
        self.wfile.flush()
        self.server.released.wait(30)

    def do_HEAD(self):
        self.server.requests.append(("HEAD", self.path))
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def stalled_store(settings, unpaused):
    """The default storage on an S3 endpoint whose GETs stall mid-body; each request 0.5 s and one try."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), StalledBody)
    server.daemon_threads, server.requests, server.released = True, [], threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def use():
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        default = s3_storage(
            bucket="stalled", endpoint_url=endpoint, access_key="k", secret_key="s", timeout=0.5, attempts=1
        )
        settings.STORAGES = {**settings.STORAGES, "default": default}
        store.resume()
        return server

    yield use
    server.released.set()
    server.shutdown()


def test_a_read_that_stalls_mid_body_is_one_get_and_one_timeout(alice, alice_client, published, stalled_store):
    """A GET whose body stops coming: s3transfer (django-storages' open()) would try it 5 times and then raise an
    error botocore does not know; a read is one GET, given up after the read timeout, and the store unavailable."""
    job = services.job_create(owner=alice, prompt="x")
    finish(job)  # on the file system: its name is all the stalled store is asked for
    server = stalled_store()
    started = time.monotonic()
    detail = alice_client.get(f"{JOBS}{job.id}/")
    assert detail.status_code == 200 and detail.json()["images"][0]["png_base64"] is None
    assert time.monotonic() - started < 3  # one 0.5 s timeout; s3transfer's five would be 2.5 s and a 500
    assert server.requests == [("GET", f"/stalled/{JobImage.objects.get(job=job).file.name}")]
    image = alice_client.get(f"{JOBS}{job.id}/images/0.png")
    assert image.status_code == 503 and image["Retry-After"]


# --- The result cache copies its source's images: each job owns its bytes.
def test_a_cache_hit_copies_the_images_into_the_new_jobs_own_files(alice, published, image_store):
    source = services.job_create(owner=alice, prompt="x", seed=5)
    (data,) = finish(source)
    copy = services.job_create(owner=alice, prompt="x", seed=5)
    assert copy.cached_from_id == source.id and copy.status == JobStatus.SUCCEEDED
    original, copied = JobImage.objects.get(job=source), JobImage.objects.get(job=copy)
    assert copied.file.name != original.file.name and image_store.read(copied.file.name) == data


def spy_on_the_store(monkeypatch) -> list[tuple]:
    """Every store.save and store.read from now on: (what, the name, whether a transaction was open)."""
    calls = []
    for what in ("save", "read"):
        real = getattr(store, what)

        def spy(name, *args, _real=real, _what=what):
            calls.append((_what, name, connection.in_atomic_block))
            return _real(name, *args)

        monkeypatch.setattr(store, what, spy)
    return calls


@pytest.mark.django_db(transaction=True)  # no test transaction around it: an open one is the submission's own
def test_a_submission_reads_and_writes_the_store_before_it_locks_its_user(alice, published, monkeypatch):
    """A slow store must not hold the user's row lock (every submission of theirs waits on it) and a connection."""
    source = services.job_create(owner=alice, prompt="x", seed=5)
    finish(source)
    calls = spy_on_the_store(monkeypatch)
    hit = services.job_submit(owner=alice, prompt="x", seed=5).job  # reads the source's images, writes copies
    upload = services.upload_create(owner=alice, data=png((9, 9, 9)))
    inputs = [services.ImageInput(data=png()), services.ImageInput(upload=upload.id)]
    for init_image in inputs:  # writes the fitted input; reads the upload first
        services.job_submit(owner=alice, prompt="y", init_image=init_image)
    assert hit.cached_from_id == source.id and Job.objects.count() == 4
    assert {what for what, _, _ in calls} == {"save", "read"}
    assert [call for call in calls if call[2]] == []


def test_a_cache_hit_refused_under_the_lock_leaves_no_copies_behind(
    alice, published, monkeypatch, image_store, settings
):
    source = services.job_create(owner=alice, prompt="x", seed=5)
    finish(source)
    calls = spy_on_the_store(monkeypatch)
    settings.JOB_MAX_ACTIVE_PER_USER = 0
    with pytest.raises(services.CapacityExceeded):
        services.job_submit(owner=alice, prompt="x", seed=5)
    copies = [name for what, name, _ in calls if what == "save"]
    assert copies and not any(image_store.holds(name) for name in copies)  # named by a job id never written
    assert all(image_store.holds(image.file.name) for image in source.images.all())


def test_the_cache_runs_the_model_when_the_store_cannot_give_the_source(alice, published, image_store):
    source = services.job_create(owner=alice, prompt="x", seed=5)
    finish(source)
    image_store.down()
    again = services.job_create(owner=alice, prompt="x", seed=5)
    assert again.status == JobStatus.QUEUED and again.cached_from is None


# --- Retention.
def test_without_retention_jobs_keep_their_images(alice, published, image_store, settings):
    settings.JOB_RESULT_RETENTION_SECONDS = 0
    job = services.job_create(owner=alice, prompt="x")
    finish(job)
    job.refresh_from_db()
    assert job.expires_at is None
    Job.objects.filter(id=job.id).update(finished_at=timezone.now() - timedelta(days=3650))
    assert services.image_expiry_sweep() == 0


def test_retention_deletes_the_bytes_keeps_the_record_and_answers_410(
    alice, alice_client, published, image_store, settings
):
    settings.JOB_RESULT_RETENTION_SECONDS = 3600
    job = services.job_create(owner=alice, prompt="x", num_images=2)
    finish(job)
    job.refresh_from_db()
    assert job.expires_at == job.finished_at + timedelta(seconds=3600)
    listed = alice_client.get(JOBS).json()["results"][0]
    assert listed["expires_at"] == alice_client.get(f"{JOBS}{job.id}/").json()["expires_at"] is not None
    names = [row.file.name for row in JobImage.objects.filter(job=job)]
    assert services.image_expiry_sweep() == 0  # not yet

    Job.objects.filter(id=job.id).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert services.image_expiry_sweep() == 2
    assert not any(image_store.holds(name) for name in names)  # the bytes are gone from the store
    rows = list(JobImage.objects.filter(job=job).order_by("index"))  # the records stay
    assert [(row.index, row.state, row.png, row.file.name) for row in rows] == [
        (0, ImageState.EXPIRED, None, ""),
        (1, ImageState.EXPIRED, None, ""),
    ]
    body = alice_client.get(f"{JOBS}{job.id}/").json()
    assert body["status"] == "succeeded"
    assert [(i["index"], i["png_base64"], i["expired"]) for i in body["images"]] == [(0, None, True), (1, None, True)]
    gone = alice_client.get(f"{JOBS}{job.id}/images/0.png")
    assert gone.status_code == 410 and "expired" in gone.json()["detail"]
    # An expired job is never a cache source: the same request runs the model again.
    assert services.job_create(owner=alice, prompt="x", seed=job.seed, num_images=2).status == JobStatus.QUEUED


def test_retention_never_deletes_the_images_of_a_job_that_has_not_ended(alice, published, image_store, settings):
    settings.JOB_RESULT_RETENTION_SECONDS = 1
    ended = services.job_create(owner=alice, prompt="x")
    finish(ended)
    # Jobs that have not ended, with images and an expiry in the past (a state no service writes, made by hand).
    past = timezone.now() - timedelta(days=1)
    waiting = [services.job_create(owner=alice, prompt=f"y{n}") for n in range(2)]
    services.job_claim(job_id=waiting[1].id, worker="w")
    for job in waiting:
        rows = services._image_rows(job.id, [{"index": 0, "seed": 1, "width": 32, "height": 32, "png": png()}])
        JobImage.objects.bulk_create(rows)
    Job.objects.update(expires_at=past)

    assert services.image_expiry_sweep() == 1
    states = {job.status: job.images.get().state for job in Job.objects.all()}
    assert states == {"succeeded": ImageState.EXPIRED, "queued": ImageState.STORED, "running": ImageState.STORED}
    for job in waiting:
        assert image_store.read(job.images.get().file.name) == png()


def test_expired_images_that_were_held_are_cleared_from_the_database(alice, published, image_store, settings):
    settings.JOB_RESULT_RETENTION_SECONDS = 1
    job = services.job_create(owner=alice, prompt="x")
    image_store.down()
    finish(job)
    Job.objects.filter(id=job.id).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert services.image_expiry_sweep() == 1
    image = JobImage.objects.get(job=job)
    assert image.state == ImageState.EXPIRED and image.png is None
    with pytest.raises(selectors.ImageExpired):
        selectors.image_png(image=image)


# --- The data migration (0012) that moves PostgreSQL-stored images to the store.
BEFORE = [("jobs", "0010_job_protocol_labels")]  # images in the database only


def legacy_images(count: int = 3) -> dict[tuple, bytes]:
    """Jobs with images as they were before 0011 (bytes in JobImage.png): {(job id, index): bytes}."""
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps
    owner = old.get_model("auth", "User").objects.create(username="legacy")
    job = old.get_model("jobs", "Job").objects.create(
        owner=owner, model="tiny", prompt="x", width=32, height=32, steps=2, guidance_scale=1.0, scheduler="ddim",
        seed=1, num_images=count, status="succeeded",
    )
    # Every byte value, in a real PNG and in bytes that are not one: what the migration copies is opaque.
    pngs = [png((n * 80, 10, 10)) + bytes(range(256)) * n for n in range(count)]
    old_image = old.get_model("jobs", "JobImage")
    for index, data in enumerate(pngs):
        old_image.objects.create(job=job, index=index, seed=index, width=32, height=32, png=data)
    return {(job.id, index): data for index, data in enumerate(pngs)}


def migrate_to_latest() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_the_data_migration_moves_every_image_to_the_store_and_back(image_store):
    originals = legacy_images()
    migrate_to_latest()
    for (job_id, index), data in originals.items():
        image = JobImage.objects.get(job_id=job_id, index=index)
        assert image.state == ImageState.STORED and image.png is None
        assert image_store.read(image.file.name) == data  # every byte, in the store
        assert (image.sha256, image.size) == (hashlib.sha256(data).hexdigest(), len(data))
        assert selectors.image_png(image=image) == data

    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)  # backwards: the bytes come back into the database
    old_images = executor.loader.project_state(BEFORE).apps.get_model("jobs", "JobImage").objects.all()
    assert {(i.job_id, i.index): bytes(i.png) for i in old_images} == originals
    migrate_to_latest()
    assert all(i.state == ImageState.STORED for i in JobImage.objects.all())


@pytest.mark.django_db(transaction=True)
def test_with_the_store_down_the_data_migration_loses_nothing_and_the_sweeper_finishes(image_store):
    originals = legacy_images()
    image_store.down()
    migrate_to_latest()  # does not fail: what the store would not take stays held in the database
    held = {(i.job_id, i.index): bytes(i.png) for i in JobImage.objects.filter(state=ImageState.HELD)}
    assert held == originals
    image_store.up()
    assert services.image_store_sweep() == len(originals)
    for (job_id, index), data in originals.items():
        image = JobImage.objects.get(job_id=job_id, index=index)
        assert image.state == ImageState.STORED and image_store.read(image.file.name) == data
        assert (image.sha256, image.size) == (hashlib.sha256(data).hexdigest(), len(data))


# --- Uploads and job inputs of a release that kept them in a media folder: copy_media_to_storage.
def copy_media(folder) -> str:
    out = io.StringIO()
    call_command("copy_media_to_storage", str(folder), stdout=out)
    return out.getvalue().strip()


def test_copy_media_to_storage_brings_an_old_media_folder_in_once(
    alice, alice_client, published, image_store, tmp_path
):
    old = tmp_path / "old-media"
    picture = png((1, 2, 3))
    digest = hashlib.sha256(picture).hexdigest()
    files = {f"uploads/{digest[:2]}/{digest}.png": picture, "inputs/ab/ab12.png": b"input bytes", "other/x": b"x"}
    for name, data in files.items():
        (old / name).parent.mkdir(parents=True, exist_ok=True)
        (old / name).write_bytes(data)
    store.save("other/x", b"already here")  # a name the store has is never overwritten
    upload = Upload.objects.create(
        owner=alice, file=f"uploads/{digest[:2]}/{digest}.png", sha256=digest, width=32, height=32, format="PNG",
        expires_at=timezone.now() + timedelta(days=1),
    )
    job = {"prompt": "x", "init_image": {"upload": str(upload.id)}}
    assert alice_client.post(JOBS, job, format="json").status_code != 202  # its file is still in the old folder

    assert copy_media(old) == "copied 2, skipped 1 already in the store"
    assert [image_store.read(name) for name in files] == [picture, b"input bytes", b"already here"]
    assert copy_media(old) == "copied 0, skipped 3 already in the store"  # again: nothing to do
    assert alice_client.post(JOBS, job, format="json").status_code == 202
    with pytest.raises(CommandError, match="is not a folder"):
        copy_media(tmp_path / "nowhere")


def test_copy_media_to_storage_stops_when_the_store_fails_and_goes_on_when_run_again(db, image_store, tmp_path):
    old = tmp_path / "old-media"
    (old / "uploads").mkdir(parents=True)
    (old / "uploads" / "a.png").write_bytes(b"a")
    image_store.down()
    with pytest.raises(CommandError, match="stopped at uploads/a.png after copying 0"):
        copy_media(old)
    image_store.up()
    assert copy_media(old) == "copied 1, skipped 0 already in the store" and image_store.read("uploads/a.png") == b"a"


def test_a_job_with_an_init_image_is_a_503_while_the_store_is_down_and_nothing_is_queued(
    alice_client, published, image_store
):
    image_store.down()
    body = {"prompt": "x", "init_image": {"base64": base64.b64encode(png()).decode()}}
    response = alice_client.post(JOBS, body, format="json")
    assert response.status_code == 503 and response["Retry-After"] and "object store" in response.json()["detail"]
    assert not Job.objects.exists() and published == []


def test_openais_image_link_is_a_503_while_the_store_is_down_and_a_410_once_expired(alice, published, image_store):
    job = services.job_create(owner=alice, prompt="x")
    (data,) = finish(job)
    link = reverse("openai:image-file", kwargs={"token": signing.dumps([str(job.id), 0], salt=URL_SALT)})
    assert APIClient().get(link).content == data
    image_store.down()
    down = APIClient().get(link)
    assert down.status_code == 503 and down.json()["error"]["code"] == "storage_unavailable"
    image_store.up()
    Job.objects.filter(id=job.id).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert services.image_expiry_sweep() == 1
    gone = APIClient().get(link)
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "image_expired"


def test_the_admin_shows_each_images_state_and_says_why_one_is_missing(alice, published, image_store):
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("admin", password="pw-admin"))
    job = services.job_create(owner=alice, prompt="x", num_images=2)
    image_store.down()
    finish(job)
    page = client.get(f"/admin/jobs/job/{job.id}/change/").content.decode()
    assert page.count('class="job-image" src="data:image/png;base64,') == 2  # held: read from the database
    image_store.up()
    JobImage.objects.filter(job=job).update(store_after=timezone.now())
    services.image_store_sweep()
    page = client.get(f"/admin/jobs/job/{job.id}/change/").content.decode()
    expected = 'class="job-image" src="http' if image_store.kind == "s3" else 'class="job-image" src="data:image/png'
    assert page.count(expected) == 2  # stored: a presigned link to the store, or the bytes from the disk
    Job.objects.filter(id=job.id).update(expires_at=timezone.now() - timedelta(seconds=1))
    services.image_expiry_sweep()
    page = client.get(f"/admin/jobs/job/{job.id}/change/").content.decode()
    assert 'class="job-image"' not in page and page.count("expired") >= 2
    assert client.get("/admin/jobs/job/").status_code == 200


def test_expired_uploads_wait_for_the_store_to_delete_their_files(alice_client, image_store):
    file = SimpleUploadedFile("in.png", png(), content_type="image/png")
    uploaded = alice_client.post("/api/v1/uploads/", {"file": file}, format="multipart").json()
    name = Upload.objects.get(id=uploaded["id"]).file.name
    Upload.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    image_store.down()
    assert services.upload_sweep() == 0 and Upload.objects.count() == 1  # kept: its file could not be deleted
    image_store.up()
    assert image_store.holds(name) and services.upload_sweep() == 1
    assert not Upload.objects.exists() and not image_store.holds(name)


def test_a_jobs_input_image_is_a_503_on_its_route_while_the_store_is_down(alice_client, published, image_store):
    body = {"prompt": "x", "init_image": {"base64": base64.b64encode(png()).decode()}}
    url = alice_client.post(JOBS, body, format="json").json()["inputs"]["init_image"]["url"]
    assert alice_client.get(url).status_code == 200
    image_store.down()
    response = alice_client.get(url)
    assert response.status_code == 503 and response["Retry-After"]
