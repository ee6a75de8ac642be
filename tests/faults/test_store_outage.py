"""The object store hangs while jobs end, then comes back: jobs still succeed, no image is lost.

The store is this module's own moto S3 server, stopped with SIGSTOP: connections still open (the kernel accepts
them) but nothing answers, so every request runs into its timeout, the slowest way a store can fail. Store requests
here give up after 1 s and one try, and the sweeper tries a held image again after at most 2 s.
"""

import base64
import hashlib
import time

import pytest

from tests.faults.conftest import LOGS, make_stack, record, wait_for
from tests.support import new_bucket, s3_client, s3_environment, s3_server

STORE_SETTINGS = {"STORAGE_TIMEOUT_SECONDS": "1", "STORAGE_MAX_ATTEMPTS": "1", "STORAGE_RETRY_MAX_SECONDS": "2"}


@pytest.fixture(scope="module")
def own_s3():
    with s3_server(LOGS / "store_outage" / "moto.log") as server:
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir, fault_database, fault_redis, own_s3):
    var = tmp_path_factory.mktemp("faults-var")
    bucket = new_bucket(own_s3.endpoint)
    yield from make_stack(
        "store_outage",
        database_url=fault_database,
        redis_url=fault_redis,
        tiny_model_dir=tiny_model_dir,
        var=var,
        env={**s3_environment(own_s3.endpoint, bucket), **STORE_SETTINGS},
    )


def health(stack) -> tuple[dict, float]:
    started = time.monotonic()
    body = stack.http.get(f"{stack.base}/api/v1/health/", timeout=30).json()
    return body, time.monotonic() - started


def test_a_hung_store_holds_the_images_until_it_answers_again(stack, own_s3):
    stack.start_worker()
    bucket = stack.env["AWS_STORAGE_BUCKET_NAME"]
    before = stack.submit("a green square, store up", steps=3)
    assert stack.wait_terminal([before], timeout=120)[before]["status"] == "succeeded"
    assert {row["state"] for row in stack.query("SELECT state FROM jobs_jobimage")} == {"stored"}

    own_s3.hang()
    try:
        body, seconds = health(stack)
        assert body["storage"]["ok"] is False and body["storage"]["backend"] == "s3", body
        assert body["status"] == "degraded" and seconds < 5  # health stays fast: one short try at the store
        submitted_at = time.monotonic()
        job_id = stack.submit("a blue triangle, store hung", steps=3)
        job = stack.wait_terminal([job_id], timeout=120)[job_id]
        ended_after = time.monotonic() - submitted_at
        assert job["status"] == "succeeded", job
        held = stack.query('SELECT * FROM jobs_jobimage WHERE job_id = %s ORDER BY "index"', [job_id])
        assert [row["state"] for row in held] == ["held", "held"] and all(row["store_error"] for row in held)
        assert all(hashlib.sha256(bytes(row["png"])).hexdigest() == row["sha256"] for row in held)
        # The API serves them from the database meanwhile.
        detail = stack.http.get(f"{stack.base}/api/v1/jobs/{job_id}/", timeout=30).json()
        assert [base64.b64decode(i["png_base64"]) for i in detail["images"]] == [bytes(r["png"]) for r in held]
        assert health(stack)[0]["storage"]["held_images"] == 2
    finally:
        own_s3.resume()
    resumed_at = time.monotonic()

    def moved():
        rows = stack.query('SELECT * FROM jobs_jobimage WHERE job_id = %s ORDER BY "index"', [job_id])
        return rows if all(row["state"] == "stored" for row in rows) else None

    stored = wait_for(moved, 60, "the sweeper to move the held images to the store", every=0.5)
    moved_after = time.monotonic() - resumed_at
    client = s3_client(own_s3.endpoint)
    for row, was_held in zip(stored, held, strict=True):
        data = client.get_object(Bucket=bucket, Key=row["file"])["Body"].read()
        assert data == bytes(was_held["png"]) and row["png"] is None  # every byte, and no copy left behind
    after = wait_for(lambda: (b := health(stack)[0])["storage"]["ok"] and b, 30, "health to see the store again")
    assert after["storage"]["held_images"] == 0
    detail = stack.http.get(f"{stack.base}/api/v1/jobs/{job_id}/", timeout=30).json()
    assert "X-Amz-Signature=" in detail["images"][0]["url"]
    stack.check_invariants()
    record(
        "object store hangs (SIGSTOP) while a job ends",
        job_succeeded_after_seconds=round(ended_after, 1),
        images_held=len(held),
        health_seconds_while_hung=round(seconds, 2),
        moved_to_store_after_resume_seconds=round(moved_after, 1),
    )
