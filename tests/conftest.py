import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Tiers (`make test` runs them all; `make test-unit` deselects servers, browser, slow and fuzz). A folder's tier is
# set here, once; a single slow or fuzzing test elsewhere carries `@pytest.mark.slow` or `@pytest.mark.fuzz` itself.
FOLDER_MARKS = {
    "e2e": "servers",  # a real API process and worker on PostgreSQL and Redis
    "faults": "servers",  # kills and restarts real processes and servers
    "deploy": "servers",  # compose's own commands, newman against a live service
    "admin": "browser",  # Chromium drives the admin
}


def pytest_collection_modifyitems(config, items):
    root = Path(__file__).parent
    for item in items:
        folder = Path(item.path).relative_to(root).parts[0]
        if folder in FOLDER_MARKS:
            item.add_marker(FOLDER_MARKS[folder])


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from generator import TinyModelConfig, make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", TinyModelConfig(sample_size=32))
