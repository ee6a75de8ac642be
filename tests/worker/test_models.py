"""A worker serving many models: loading on demand, the memory budget, a model that broke after its scan, LoRAs."""

import shutil

import pytest
from django.contrib.auth import get_user_model

from diffusion_api.jobs import selectors, services
from diffusion_api.jobs.models import JobStatus
from diffusion_api.registry.models import ImageModel
from diffusion_api.registry.services import registry_scan
from generator import read_manifest
from worker import runner, tasks

pytestmark = pytest.mark.django_db


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("models-test")


@pytest.fixture
def three_models(settings, tiny_model_dir, tmp_path):
    for name in ("a", "b", "c"):
        shutil.copytree(tiny_model_dir, tmp_path / name)
    settings.MODELS = {name: tmp_path / name for name in ("a", "b", "c")}
    settings.DEFAULT_MODEL = "a"
    runner._loaded.clear()
    yield tmp_path
    runner._loaded.clear()


def test_models_load_on_demand_and_the_least_recently_used_goes_past_the_budget(three_models, settings):
    size = runner.model_bytes(runner.get_model("a"))
    settings.WORKER_MODEL_MEMORY_MB = 2.5 * size / 2**20  # room for two
    runner.get_model("b")
    runner.get_model("a")  # a is now the most recently used
    runner.get_model("c")
    assert runner.loaded_models() == ["a", "c"]
    settings.WORKER_MODEL_MEMORY_MB = 0  # one at a time
    runner.get_model("b")
    assert runner.loaded_models() == ["b"]


def test_a_model_that_broke_after_its_scan_fails_its_jobs_and_is_marked(three_models, user, published):
    registry_scan(directory=three_models)
    job = services.job_create(owner=user, prompt="x", steps=1, model="b")
    next((three_models / "b" / "unet").glob("*.safetensors")).write_bytes(b"not weights")
    assert tasks.run_job(str(job.id)) == "failed"
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "model 'b' could not be loaded" in job.error
    record = ImageModel.objects.get(name="b")
    assert not record.usable and "unet" in record.problem
    other = services.job_create(owner=user, prompt="x", steps=1, model="c")  # the worker serves the others still
    assert tasks.run_job(str(other.id)) == "succeeded"


def test_a_worker_serving_some_models_claims_only_their_jobs(three_models, user, published, settings):
    settings.WORKER_MODELS = ["b"]
    for_a = services.job_create(owner=user, prompt="for a", steps=1, model="a")
    assert tasks.run_job(str(for_a.id)) == "skipped"
    for_b = services.job_create(owner=user, prompt="for b", steps=1, model="b")
    assert tasks.run_job(str(for_a.id)) == "succeeded"  # the message is a wake-up: b's job runs
    for_a.refresh_from_db(), for_b.refresh_from_db()
    assert for_a.status == JobStatus.QUEUED and for_b.status == JobStatus.SUCCEEDED
    assert runner.first_model() == "b"
    assert read_manifest(selectors.image_png(image=for_b.images.get()))["model"]["name"] == "b"


def test_a_job_with_a_lora_records_it_and_the_next_job_runs_without(three_models, user, published, settings):
    from tests.generator.test_lora import write_kohya_lora

    (three_models / "loras").mkdir()
    write_kohya_lora(three_models / "a", three_models / "loras" / "bold.safetensors")
    registry_scan(directory=three_models)
    settings.WORKER_BATCH_SIZE = 4
    plain = dict(prompt="a red circle", steps=2, seed=3, width=32, height=32, model="a")
    before = services.job_create(owner=user, **plain)
    tasks.run_job(str(before.id))
    styled = services.job_create(owner=user, **plain, loras=[{"name": "bold", "weight": 1.0}])
    after = services.job_create(owner=user, **plain, cache=False)  # queued together: must not share a batch
    tasks.run_job(str(styled.id))
    tasks.run_job(str(after.id))
    png = {job.id: selectors.image_png(image=job.images.get()) for job in (before, styled, after)}
    manifest = read_manifest(png[styled.id])
    assert manifest["loras"] == [{"name": "bold", "sha256": styled.loras[0]["sha256"], "weight": 1.0}]
    assert png[styled.id] != png[before.id] and png[after.id] == png[before.id]
