import pytest

from generator import TinyModelConfig, load_model, make_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", TinyModelConfig(sample_size=32))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    return load_model(tiny_model_dir, device="cpu", dtype="fp32")
