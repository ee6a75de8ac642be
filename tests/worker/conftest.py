import pytest


@pytest.fixture(autouse=True)
def tiny_models_setting(settings, tiny_model_dir):
    settings.MODELS = {"tiny": tiny_model_dir}
    settings.DEFAULT_MODEL = "tiny"
    settings.GENERATOR_DEVICE = "cpu"


@pytest.fixture
def published(monkeypatch):
    sent = []
    monkeypatch.setattr("diffusion_api.jobs.services.publish_job", lambda *, job_id: sent.append(job_id) or True)
    return sent
