import pytest

from generator import load_model


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    return load_model(tiny_model_dir, device="cpu", dtype="fp32")
