"""Status reads answered from Django's last answer (jobs.status_reads), through the deployed ASGI application, on
PostgreSQL: the answer must be Django's, byte for byte, and never outlive a change of the job, its images, the
token or the user."""

import asyncio

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model

from diffusion_api.accounts.models import ApiToken
from diffusion_api.accounts.services import token_issue
from diffusion_api.jobs import services, status_reads
from diffusion_api.jobs.models import Job, JobStatus
from tests.api.conftest import make_user
from tests.support import required_env

pytestmark = [pytest.mark.servers, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def on_postgres(settings):
    required_env("DATABASE_URL")  # fails, never skips, without it
    settings.ALLOWED_HOSTS = ["testserver"]


@pytest.fixture
def apps(monkeypatch):
    """The deployed application with kept answers, and one without (every read through Django)."""
    from diffusion_api.asgi import APIHandler

    monkeypatch.setattr(status_reads, "QUEUE_ORDER_SECONDS", 0.0)  # the queue order is read at every read
    kept, direct = APIHandler(), APIHandler()
    direct.status_reads = None
    assert kept.status_reads is not None
    yield kept, direct
    async_to_sync(kept.status_reads.close)()  # or the test database cannot be dropped


def get(
    app, path: str, token: str, *, keyword: str = "Token", query: bytes = b"", extra: list = ()
) -> tuple[int, list, bytes]:
    sent = []
    received = []

    async def receive():
        if received:  # the client stays connected until the answer is sent
            await asyncio.Event().wait()
        received.append(True)
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": [(b"host", b"testserver"), (b"authorization", f"{keyword} {token}".encode()), *extra],
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }
    async_to_sync(app)(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], sorted((bytes(k), bytes(v)) for k, v in start["headers"]), body


def path_of(job: Job) -> str:
    return f"/api/v1/jobs/{job.id}/"


def a_job(owner, **fields) -> Job:
    return services.job_create(owner=owner, prompt="a red circle", steps=4, **fields)


def claim(job: Job) -> str:
    """The claim's worker token, which the worker's later writes must give."""
    return services.job_claim(job_id=job.id, worker="w1").worker


def a_succeeded_job(owner) -> Job:
    job = a_job(owner)
    image = {"index": 0, "seed": 1, "width": 8, "height": 8, "png": b"\x89PNG not really"}
    services.job_record_outcome(job_id=job.id, worker=claim(job), outcome="succeeded", images=[image])
    return job


def test_a_second_read_is_the_kept_answer_and_equals_djangos_in_every_state(apps, published):
    kept, direct = apps
    alice = make_user("alice")
    token = token_issue(user=alice)
    first, second = a_job(alice), a_job(alice)  # second waits behind first: queue position 2
    running = a_job(alice)
    w_running = claim(running)
    services.job_report_progress(job_id=running.id, worker=w_running, step=2, total=4)
    succeeded = a_job(alice)
    w_succeeded = claim(succeeded)
    services.job_record_outcome(
        job_id=succeeded.id,
        worker=w_succeeded,
        outcome="succeeded",
        images=[{"index": 0, "seed": 1, "width": 8, "height": 8, "png": b"\x89PNG not really"}],
    )
    failed = a_job(alice)
    w_failed = claim(failed)
    services.job_record_outcome(job_id=failed.id, worker=w_failed, outcome="failed", error="out of memory")

    for job in (first, second, running, succeeded, failed):
        answers = [get(kept, path_of(job), token) for _ in range(2)]
        truth = get(direct, path_of(job), token)
        assert answers[0] == answers[1] == truth, job.status
        assert truth[0] == 200
    assert (kept.status_reads.misses, kept.status_reads.hits) == (5, 5)
    assert b'"queue_position":2' in get(kept, path_of(second), token)[2]
    assert b'"png_base64":"' in get(kept, path_of(succeeded), token)[2]


def test_a_change_of_the_job_or_the_queue_is_seen_at_the_next_read(apps, published):
    kept, _ = apps
    alice = make_user("alice")
    token = token_issue(user=alice)
    ahead, job = a_job(alice), a_job(alice)
    assert b'"queue_position":2' in get(kept, path_of(job), token)[2]
    services.job_cancel(job=ahead)
    assert b'"queue_position":1' in get(kept, path_of(job), token)[2]
    w_job = claim(job)
    services.job_report_progress(job_id=job.id, worker=w_job, step=1, total=4)
    assert b'"step":1' in get(kept, path_of(job), token)[2]
    services.job_report_progress(job_id=job.id, worker=w_job, step=3, total=4)
    status, _, body = get(kept, path_of(job), token)
    assert status == 200 and b'"step":3' in body
    assert kept.status_reads.hits == 0  # every read above followed a change


def test_a_revoked_token_an_inactive_user_and_other_users_are_refused_at_once(apps, published):
    kept, _ = apps
    alice, bob, staff = make_user("alice"), make_user("bob"), make_user("root", staff=True)
    token, bob_token, staff_token = token_issue(user=alice), token_issue(user=bob), token_issue(user=staff)
    job = a_job(alice)
    for _ in range(2):
        assert get(kept, path_of(job), token)[0] == 200
    assert get(kept, path_of(job), bob_token)[0] == 404
    assert get(kept, path_of(job), staff_token)[0] == 200
    assert get(kept, path_of(job), token, keyword="Bearer")[0] == 401  # the native API takes Token only
    get_user_model().objects.filter(id=alice.id).update(is_active=False)
    assert get(kept, path_of(job), token)[0] == 401
    get_user_model().objects.filter(id=alice.id).update(is_active=True)
    assert get(kept, path_of(job), token)[0] == 200
    ApiToken.objects.filter(user=alice).delete()
    assert get(kept, path_of(job), token)[0] == 401


def test_a_changed_image_row_is_seen_at_the_next_read(apps, published):
    kept, direct = apps
    alice = make_user("alice")
    token = token_issue(user=alice)
    job = a_succeeded_job(alice)
    before = get(kept, path_of(job), token)
    Job.objects.get(id=job.id).images.update(seed=2)
    after = get(kept, path_of(job), token)
    assert after != before and after == get(direct, path_of(job), token)


def test_other_requests_go_through_django(apps, published):
    kept, _ = apps
    alice = make_user("alice")
    token = token_issue(user=alice)
    job = a_job(alice)
    for _ in range(2):
        get(kept, path_of(job), token, query=b"format=json")
        get(kept, f"/api/v1/jobs/{job.id}/events", "x")
        get(kept, "/api/v1/jobs/", token)
    assert kept.status_reads.hits == 0
    assert Job.objects.get(id=job.id).status == JobStatus.QUEUED


def test_answers_are_not_kept_without_postgresql_or_when_turned_off(settings, monkeypatch):
    settings.STATUS_READ_CACHE_MB = 0
    assert status_reads.status_reads() is None
    settings.STATUS_READ_CACHE_MB = 1
    monkeypatch.setattr(status_reads.connection, "vendor", "sqlite")
    assert status_reads.status_reads() is None


def test_an_answer_without_an_images_bytes_is_not_kept(apps, published):
    # png_base64 is null when the store did not answer (or the image expired): the next read must ask again.
    from diffusion_api.jobs.models import ImageState

    kept, _ = apps
    alice = make_user("alice")
    token = token_issue(user=alice)
    job = a_succeeded_job(alice)
    Job.objects.get(id=job.id).images.update(state=ImageState.EXPIRED)
    for _ in range(2):
        status, _, body = get(kept, path_of(job), token)
        assert status == 200 and b'"png_base64":null' in body
    assert kept.status_reads.hits == 0


def test_answers_with_presigned_links_live_at_most_half_the_links_life(settings):
    settings.IMAGE_URL_EXPIRES_SECONDS = 30
    assert status_reads.status_reads().entry_seconds == 15
    settings.IMAGE_URL_EXPIRES_SECONDS = 3600
    assert status_reads.status_reads().entry_seconds == status_reads.ENTRY_SECONDS


def test_a_failing_status_query_leaves_the_read_to_django(apps, published, monkeypatch):
    import psycopg

    kept, _ = apps
    alice = make_user("alice")
    token = token_issue(user=alice)
    job = a_job(alice)
    assert get(kept, path_of(job), token)[0] == 200  # opens the connection

    async def refused(job_id, token):
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(kept.status_reads, "_check", refused)
    status, _, body = get(kept, path_of(job), token)
    assert status == 200 and str(job.id).encode() in body
    assert kept.status_reads._connection is None  # dropped: opened again at the next read
    assert kept.status_reads.hits == 0


def test_a_repeated_authorization_header_is_djangos_to_refuse(apps, published):
    kept, _ = apps
    alice, bob = make_user("alice"), make_user("bob")
    token, bob_token = token_issue(user=alice), token_issue(user=bob)
    job = a_job(alice)
    assert get(kept, path_of(job), token)[0] == 200  # kept
    # Django joins the two headers into one that is not a valid token header: a 401, never the kept answer.
    assert get(kept, path_of(job), bob_token, extra=[(b"authorization", f"Token {token}".encode())])[0] == 401
    assert kept.status_reads.hits == 0
