"""The worker hands a job's guidance_cutoff and deep_cache_interval to the library, and keeps the steps they make
cheaper out of the measured step cost that admits other jobs."""

import pytest
from django.contrib.auth import get_user_model

from diffusion_api.jobs import services
from diffusion_api.jobs.models import ModelStepCost
from worker import runner

pytestmark = pytest.mark.django_db


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("worker-speed")


def test_the_request_carries_the_speed_fields(user, published):
    job = services.job_create(owner=user, prompt="x", steps=4, seed=1, guidance_cutoff=0.25, deep_cache_interval=3)
    request = runner.request_for(job)
    assert (request.guidance_cutoff, request.deep_cache_interval) == (0.25, 3)
    plain = runner.request_for(services.job_create(owner=user, prompt="x", steps=4, seed=1))
    assert (plain.guidance_cutoff, plain.deep_cache_interval) == (1.0, 1)


class MeasuredSteps:
    """ProgressReporter's measurement, without running a loop: 3 steps in 0.3 s."""

    def step_seconds(self) -> tuple[int, float]:
        return 3, 0.3


@pytest.mark.parametrize(
    ("fields", "recorded"),
    [({}, True), ({"guidance_cutoff": 0.5}, False), ({"deep_cache_interval": 2}, False)],
)
def test_only_full_loops_measure_the_step_cost(user, published, fields, recorded):
    job = services.job_create(owner=user, prompt="x", steps=4, width=32, height=32, guidance_scale=7.5, **fields)
    runner._record_step_cost([job], MeasuredSteps())
    assert ModelStepCost.objects.filter(model="tiny").exists() is recorded
