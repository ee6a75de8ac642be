import pytest

from diffusion_api.jobs import services
from diffusion_api.jobs.models import Job, JobStatus
from tests.api.conftest import without_events

pytestmark = pytest.mark.django_db
JOBS = "/api/v1/jobs/"


def run(job, png=b"\x89PNG-a"):
    claim = services.job_claim(job_id=job.id, worker="w").worker
    images = [{"index": i, "seed": job.seed + i, "width": 32, "height": 32, "png": png} for i in range(job.num_images)]
    services.job_succeed(job_id=job.id, worker=claim, images=images)


def test_identical_request_with_a_seed_is_served_from_the_cache(
    alice, alice_client, published, django_capture_on_commit_callbacks, image_store
):
    first = services.job_create(owner=alice, prompt="a red circle", seed=7, steps=3, num_images=2)
    run(first)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = alice_client.post(
            JOBS, {"prompt": "a red circle", "seed": 7, "steps": 3, "num_images": 2}, format="json"
        )
    assert without_events(callbacks) == []  # nothing to publish after commit
    body = response.json()
    assert response.status_code == 202 and body["status"] == "succeeded" and body["cached_from"] == str(first.id)
    assert body["id"] != str(first.id) and [i["seed"] for i in body["images"]] == [7, 8]
    assert published == []  # nothing was queued: the model does not run
    assert len(body["images"][0]["png_base64"]) > 0


def test_the_cache_never_reveals_another_users_job(alice, bob, bob_client, published):
    """Bob sends Alice's exact request: he must learn nothing of her job, not its id, not that it was made."""
    alices = services.job_create(owner=alice, prompt="a red circle", seed=7, steps=3)
    run(alices)
    response = bob_client.post(JOBS, {"prompt": "a red circle", "seed": 7, "steps": 3}, format="json")
    body = response.json()
    assert response.status_code == 202 and body["status"] == "queued" and body["cached_from"] is None
    assert str(alices.id) not in response.content.decode()
    assert Job.objects.get(id=body["id"]).images.count() == 0  # Bob's job runs the model
    run(Job.objects.get(id=body["id"]))
    again = bob_client.post(JOBS, {"prompt": "a red circle", "seed": 7, "steps": 3}, format="json").json()
    assert again["status"] == "succeeded" and again["cached_from"] == body["id"]  # his own job caches for him


def test_cache_misses(alice, alice_client, published):
    run(services.job_create(owner=alice, prompt="a red circle", seed=7, steps=3))
    misses = [
        {"prompt": "a red circle", "steps": 3},  # no explicit seed
        {"prompt": "a red circle", "steps": 3, "seed": 8},
        {"prompt": "a red circle", "steps": 4, "seed": 7},
        {"prompt": "a red circle", "steps": 3, "seed": 7, "cache": False},  # turned off
    ]
    for body in misses:
        response = alice_client.post(JOBS, body, format="json").json()
        assert response["status"] == "queued" and response["cached_from"] is None, body


def test_a_changed_model_is_not_served_from_the_cache(
    alice, alice_client, published, tiny_model_dir, settings, tmp_path
):
    import shutil

    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    settings.MODELS = {"tiny": copy}
    run(services.job_create(owner=alice, prompt="x", seed=1, steps=2))
    (copy / "scheduler" / "scheduler_config.json").write_text(
        (copy / "scheduler" / "scheduler_config.json").read_text() + " "
    )
    response = alice_client.post(JOBS, {"prompt": "x", "seed": 1, "steps": 2}, format="json").json()
    assert response["status"] == "queued"


def test_retry_runs_the_model_again(alice, published):
    first = services.job_create(owner=alice, prompt="x", seed=3, steps=2)
    run(first)
    retry = services.job_retry(job=first)
    assert retry.status == JobStatus.QUEUED and retry.cached_from is None


def test_cache_must_be_a_boolean(alice_client, published):
    response = alice_client.post(JOBS, {"prompt": "x", "cache": "no"}, format="json")
    assert response.status_code == 400 and response.json()["cache"] == ["must be true or false."]
