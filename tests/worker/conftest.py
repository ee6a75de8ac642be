import pytest


@pytest.fixture(autouse=True)
def tiny_models_setting(settings, tiny_model_dir):
    settings.MODELS = {"tiny": tiny_model_dir}
    settings.DEFAULT_MODEL = "tiny"
    settings.GENERATOR_DEVICE = "cpu"
    # fp32 eager, whatever the CPU: these tests compare pixels with the library's fp32 defaults.
    settings.GENERATOR_DTYPE = "fp32"
    settings.GENERATOR_BACKEND = "eager"


@pytest.fixture(autouse=True)
def fresh_engine():
    """The worker's engine is worked out once per process; each test's settings get their own."""
    from worker import runner

    clear = runner.engine.cache_clear  # a test may replace runner.engine itself
    clear()
    yield
    clear()


@pytest.fixture(autouse=True)
def media_in_tmp(settings, tmp_path):
    """Job images and inputs go through the default storage: each test gets its own folder."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def published(monkeypatch):
    sent = []
    monkeypatch.setattr("diffusion_api.jobs.services.publish_job", lambda *, job_id, model: sent.append(job_id) or True)
    return sent
