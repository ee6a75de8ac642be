"""The two fields that cut UNet evaluations (generator.limits.FIELDS): `guidance_cutoff`, the share of the steps that
run classifier-free guidance, and `deep_cache_interval`, DeepCache's k. Stored with the job, shown back, checked
against the table's ranges, and batched only with jobs that run the same loop."""

import pytest

from diffusion_api.jobs import services
from diffusion_api.jobs.models import Job
from diffusion_api.openai_api import mapping as openai_mapping
from diffusion_api.openai_api.errors import OpenAIError

pytestmark = pytest.mark.django_db
JOBS = "/api/v1/jobs/"


def test_a_job_stores_and_shows_the_speed_fields(alice_client, published):
    body = {"prompt": "x", "guidance_cutoff": 0.4, "deep_cache_interval": 3}
    response = alice_client.post(JOBS, body, format="json")
    assert response.status_code == 202, response.json()
    parameters = response.json()["parameters"]
    assert (parameters["guidance_cutoff"], parameters["deep_cache_interval"]) == (0.4, 3)
    job = Job.objects.get()
    assert (job.guidance_cutoff, job.deep_cache_interval) == (0.4, 3)
    shown = alice_client.get(f"{JOBS}{job.id}/").json()["parameters"]
    assert (shown["guidance_cutoff"], shown["deep_cache_interval"]) == (0.4, 3)


def test_left_out_they_run_every_evaluation(alice_client, published):
    parameters = alice_client.post(JOBS, {"prompt": "x"}, format="json").json()["parameters"]
    assert (parameters["guidance_cutoff"], parameters["deep_cache_interval"]) == (1.0, 1)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("guidance_cutoff", 0, "must be more than 0.0 and at most 1.0."),
        ("guidance_cutoff", 1.5, "must be more than 0.0 and at most 1.0."),
        ("guidance_cutoff", -1, "must be more than 0.0 and at most 1.0."),
        ("guidance_cutoff", "0.5", "must be a number more than 0.0 and at most 1.0, not str."),
        ("deep_cache_interval", 0, "must be from 1 to 10."),
        ("deep_cache_interval", 11, "must be from 1 to 10."),
        ("deep_cache_interval", 2.5, "must be an integer from 1 to 10 (a JSON number without a fraction), not float."),
        ("deep_cache_interval", "x", "must be an integer from 1 to 10 (a JSON number without a fraction), not str."),
        ("deep_cache_interval", True, "must be an integer from 1 to 10"),
    ],
)
def test_out_of_range_is_400_naming_the_range_and_nothing_is_queued(alice_client, published, field, value, message):
    response = alice_client.post(JOBS, {"prompt": "x", field: value}, format="json")
    assert response.status_code == 400 and message in response.json()[field][0], response.json()
    assert Job.objects.count() == 0 and published == []


def test_jobs_batch_only_with_equal_speed_fields(alice, published):
    """As generator.pipeline.batch_key: the loop stops guidance at one step and caches on one schedule per batch."""
    first = services.job_create(owner=alice, prompt="a", guidance_cutoff=0.5, deep_cache_interval=2)
    same = services.job_create(owner=alice, prompt="b", guidance_cutoff=0.5, deep_cache_interval=2)
    other_cutoff = services.job_create(owner=alice, prompt="c", guidance_cutoff=0.6, deep_cache_interval=2)
    other_interval = services.job_create(owner=alice, prompt="d", guidance_cutoff=0.5, deep_cache_interval=3)
    defaults = services.job_create(owner=alice, prompt="e")
    mates = services.job_claim_batch(job=services.job_claim(job_id=first.id, worker="w"), worker="w", limit=8)
    assert [mate.id for mate in mates] == [same.id]
    mates = services.job_claim_batch(job=services.job_claim(job_id=other_cutoff.id, worker="w"), worker="w", limit=8)
    assert mates == []
    assert {job.status for job in Job.objects.filter(id__in=[other_interval.id, defaults.id])} == {"queued"}


def test_a_retry_keeps_them_and_the_cache_tells_them_apart(alice, published):
    job = services.job_create(owner=alice, prompt="x", seed=3, guidance_cutoff=0.3, deep_cache_interval=4)
    again = services.job_retry(job=job)
    assert (again.guidance_cutoff, again.deep_cache_interval, again.retry_of) == (0.3, 4, job)
    claim = services.job_claim(job_id=job.id, worker="w").worker
    services.job_succeed(
        job_id=job.id, worker=claim, images=[{"index": 0, "seed": 3, "width": 32, "height": 32, "png": b"\x89PNG-a"}]
    )
    assert services.job_create(owner=alice, prompt="x", seed=3, guidance_cutoff=0.3, deep_cache_interval=4).cached_from
    assert services.job_create(owner=alice, prompt="x", seed=3, guidance_cutoff=0.3).cached_from is None
    assert services.job_create(owner=alice, prompt="x", seed=3, deep_cache_interval=4).cached_from is None


def test_openai_requests_take_the_defaults_and_do_not_offer_the_fields(alice):
    fields = openai_mapping.parse(openai_mapping.GENERATIONS, {"prompt": "x"}).fields
    assert (fields["guidance_cutoff"], fields["deep_cache_interval"]) == (1.0, 1)
    with pytest.raises(OpenAIError, match="Unknown parameter: 'guidance_cutoff'"):
        openai_mapping.parse(openai_mapping.GENERATIONS, {"prompt": "x", "guidance_cutoff": 0.5})
