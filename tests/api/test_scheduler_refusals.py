"""The API refuses with a 400 what the worker would refuse: schedulers a model cannot run, seeds past the range.

tests/generator/test_schedulers.py holds `scheduler_error` (the torch-free verdict used here) to what the library does.
"""

import json
from pathlib import Path

import pytest
from django.core.cache import cache

from diffusion_api.jobs.models import Job
from generator.scheduler_names import SCHEDULERS, scheduler_error
from generator.torch_free import limits

pytestmark = pytest.mark.django_db
JOBS = "/api/v1/jobs/"
BUILTIN = Path(__file__).resolve().parents[2] / "models" / "shapes64"


@pytest.fixture(autouse=True)
def both_models(settings, tiny_model_dir):
    settings.MODELS = {"tiny": tiny_model_dir, "shapes64": BUILTIN}
    cache.clear()  # the create throttle's counters: these tests post more than JOB_CREATE_RATE a minute between them


def scheduler_config(path) -> dict:
    return json.loads((Path(path) / "scheduler" / "scheduler_config.json").read_text())


@pytest.mark.parametrize(
    "model, scheduler, steps",
    [
        ("shapes64", "dpmpp_2m_karras", 20),  # the case: ran 20 steps, then IndexError in the worker
        ("shapes64", "dpmpp_2m_karras", 7),
        ("shapes64", "pndm", 20),
        ("shapes64", "lcm", 51),
        ("tiny", "lcm", 51),
    ],
)
def test_a_scheduler_the_model_cannot_run_is_400_with_the_reason(alice_client, published, model, scheduler, steps):
    body = {"prompt": "a red circle", "model": model, "scheduler": scheduler, "steps": steps}
    response = alice_client.post(JOBS, body, format="json")
    assert response.status_code == 400, response.json()
    message = " ".join(response.json()["scheduler"])
    assert scheduler in message and ("zero-terminal-SNR" in message or "at most 50 steps" in message), message
    assert Job.objects.count() == 0 and published == []


@pytest.mark.parametrize("steps", (1, 2, 3, 7, 20))
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("model", ("shapes64", "tiny"))
def test_the_api_refuses_exactly_what_the_library_refuses(settings, alice_client, published, model, scheduler, steps):
    refusal = scheduler_error(scheduler, steps, scheduler_config(settings.MODELS[model]))
    body = {"prompt": "a red circle", "model": model, "scheduler": scheduler, "steps": steps, "seed": 1}
    response = alice_client.post(JOBS, body, format="json")
    if refusal is None:
        assert response.status_code == 202, response.json()
    else:
        assert response.status_code == 400 and response.json() == {"scheduler": [refusal]}


def test_dpmpp_2m_karras_is_accepted_where_the_model_allows_it(alice_client, published):
    response = alice_client.post(JOBS, {"prompt": "x", "model": "tiny", "scheduler": "dpmpp_2m_karras"}, format="json")
    assert response.status_code == 202, response.json()


def test_a_seed_whose_last_image_passes_the_range_is_400_naming_it(alice_client, published):
    # Image i gets seed + i: 2**63 - 1 with two images would give the worker a seed past int64.
    response = alice_client.post(JOBS, {"prompt": "x", "seed": limits.MAX_SEED, "num_images": 2}, format="json")
    assert response.status_code == 400
    assert response.json()["seed"] == [f"must be from 0 to {limits.MAX_SEED - 1} for 2 images"]
    assert Job.objects.count() == 0 and published == []
    highest = alice_client.post(JOBS, {"prompt": "x", "seed": limits.MAX_SEED - 1, "num_images": 2}, format="json")
    assert highest.status_code == 202 and highest.json()["parameters"]["seed"] == limits.MAX_SEED - 1
