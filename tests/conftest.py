import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from generator import TinyModelConfig, make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", TinyModelConfig(sample_size=32))
