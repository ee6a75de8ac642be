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


@pytest.fixture(scope="session")
def s3_endpoint():
    """A local S3-protocol server (moto's) for the whole run, as its endpoint URL; each user takes a fresh bucket."""
    from tests.support import s3_server

    with s3_server(Path(__file__).parents[1] / "test-output" / "s3" / "moto.log") as server:
        yield server.endpoint


class StoreUnderTest:
    """A test's default storage (the file system, or a fresh bucket on the local S3 server), readable behind Django's
    back, and able to go down (a MEDIA_ROOT that cannot hold folders; an S3 endpoint on a closed port) and up again.
    """

    def __init__(self, kind: str, settings, tmp_path: Path, endpoint: str | None = None):
        self.kind, self.settings, self.endpoint = kind, settings, endpoint
        self.media_root = tmp_path / "media"
        self.bucket = ""
        if kind == "s3":
            from tests.support import new_bucket

            self.bucket = new_bucket(endpoint)
            self._use(endpoint)
        else:
            settings.MEDIA_ROOT = self.media_root

    def read(self, name: str) -> bytes:
        """The stored object's bytes, read from the disk or with boto3, not through the service."""
        if self.kind == "s3":
            from tests.support import s3_client

            return s3_client(self.endpoint).get_object(Bucket=self.bucket, Key=name)["Body"].read()
        return (self.media_root / name).read_bytes()

    def holds(self, name: str) -> bool:
        if self.kind == "s3":
            from tests.support import s3_client

            listed = s3_client(self.endpoint).list_objects_v2(Bucket=self.bucket, Prefix=name)
            return any(item["Key"] == name for item in listed.get("Contents", []))
        return (self.media_root / name).is_file()

    def down(self) -> None:
        if self.kind == "s3":
            from tests.support import free_port

            self._use(f"http://127.0.0.1:{free_port()}")  # nothing listens there: connection refused
        else:
            blocker = self.media_root.parent / "not-a-folder"
            blocker.write_bytes(b"")
            self.settings.MEDIA_ROOT = blocker  # every write fails: its folders cannot be made
        _resume_store()

    def up(self) -> None:
        if self.kind == "s3":
            self._use(self.endpoint)
        else:
            self.settings.MEDIA_ROOT = self.media_root
        _resume_store()

    def _use(self, endpoint: str) -> None:
        from diffusion_api.settings.base import s3_storage
        from tests.support import S3_ACCESS_KEY, S3_SECRET_KEY

        default = s3_storage(
            bucket=self.bucket,
            endpoint_url=endpoint,
            access_key=S3_ACCESS_KEY,
            secret_key=S3_SECRET_KEY,
            timeout=2,
            attempts=1,
        )
        self.settings.STORAGES = {**self.settings.STORAGES, "default": default}


def _resume_store() -> None:
    from diffusion_api.jobs import store

    store.resume()  # no pause left from a failure before: the next call tries the store at once


@pytest.fixture(params=["filesystem", pytest.param("s3", marks=pytest.mark.servers)])
def image_store(request, settings, tmp_path):
    """Runs a test twice: on the file system (MEDIA_ROOT), and on a fresh bucket of the local S3 server."""
    endpoint = request.getfixturevalue("s3_endpoint") if request.param == "s3" else None
    _resume_store()
    yield StoreUnderTest(request.param, settings, tmp_path, endpoint)
    _resume_store()
