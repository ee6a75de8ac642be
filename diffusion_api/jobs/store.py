"""Image bytes in Django's storage: the file system on embedded defaults, an S3-compatible store when configured.

The store may be down or slow, and neither may cost an image or hang a request. Every call here either works or
raises StoreUnavailable (ObjectMissing when the store answers that it has no such object), within the timeouts and
tries of each request (STORAGE_TIMEOUT_SECONDS, STORAGE_MAX_ATTEMPTS; docs/storage.md); a write it refuses is held
in the database by the caller (services._image_rows). After an outage-like failure this process leaves the store
alone for PAUSE_AFTER_FAILURE seconds, so a dead store costs one timeout per process, not one per image
(jobs/events.py pauses Redis the same way).
"""

import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

from boto3.exceptions import Boto3Error
from botocore.exceptions import BotoCoreError, ClientError
from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage
from s3transfer.exceptions import RetriesExceededError, S3DownloadFailedError, S3UploadFailedError

logger = logging.getLogger(__name__)

PAUSE_AFTER_FAILURE = 5.0  # seconds without store requests after one failed as an outage
# What a store call raises when it does not work: the file system's OSError, botocore's connection errors and
# timeouts (BotoCoreError), the store's own refusals (ClientError: 5xx, 403, a missing bucket), and what boto3's
# managed transfers (s3transfer), which django-storages' open() and save() go through, raise instead: plain
# Exceptions, e.g. RetriesExceededError after a GET whose body stalled.
STORE_ERRORS = (
    OSError,
    BotoCoreError,
    ClientError,
    Boto3Error,
    RetriesExceededError,
    S3DownloadFailedError,
    S3UploadFailedError,
)

_paused_until = 0.0


class StoreUnavailable(Exception):
    """The store did not take or give the bytes; the message says what it answered."""


class ObjectMissing(StoreUnavailable):
    """The store answered, and has no object by that name: the bytes are lost, not late (a 404, not a 503).

    A StoreUnavailable all the same, so every caller that copes with a store that gives nothing copes with this too.
    """


def image_name(*, job_id, index: int, sha256: str) -> str:
    """Where a job's image goes: unique to the job, its index and its bytes, so writing it again is harmless."""
    return f"images/{job_id}/{index}-{sha256[:16]}.png"


def save(name: str, data: bytes) -> str:
    """Write the bytes under `name`; the name they got (the file system renames a taken name), or StoreUnavailable.

    A name that exists already holds these bytes (image_name), so it is not written again: a retried outcome or
    a re-run data migration costs no second copy.
    """
    with _guarded("write"):
        if default_storage.exists(name):
            return name
        return default_storage.save(name, ContentFile(data))


def copy_file(source: Path, name: str) -> bool:
    """Copy a local file into the store under `name`, streamed; False when the name exists already (not overwritten).

    For files an older release kept in its media folder (copy_media_to_storage): their rows name them already.
    """
    with _guarded("write"):
        if default_storage.exists(name):
            return False
        with source.open("rb") as file:
            saved = default_storage.save(name, File(file))
    if saved != name:  # the file system renames a name another writer took meanwhile: the rows would miss it
        raise StoreUnavailable(f"the store saved {name} as {saved}")
    return True


def read(name: str) -> bytes:
    """The stored bytes; ObjectMissing when there is no such object, StoreUnavailable when the store fails."""
    with _guarded("read"):
        if is_object_store():
            return default_storage.read_bytes(name)  # one GET (diffusion_api/jobs/s3.py)
        with default_storage.open(name, "rb") as file:
            return file.read()


def delete(name: str) -> None:
    """Delete a stored file; one that is already gone counts as deleted (both storages say nothing)."""
    with _guarded("delete"):
        default_storage.delete(name)


def is_object_store() -> bool:
    """True for the S3-compatible store; False for the file system."""
    return hasattr(default_storage, "bucket_name")


def signed_url(name: str) -> str:
    """A link straight to the object store, presigned for IMAGE_URL_EXPIRES_SECONDS (signing sends no request)."""
    return default_storage.url(name)


def check() -> dict:
    """For health: which store, and whether it answers now (one short try, whatever the pause says).

    Health answers anyone, so a failure shows as its class alone: the message names the store's endpoint or
    MEDIA_ROOT, which only the log gets.
    """
    backend = "s3" if is_object_store() else "filesystem"
    try:
        if backend == "s3":
            default_storage.ping()
        else:
            _check_writable(Path(default_storage.location))
    except STORE_ERRORS as error:
        logger.warning("health: the %s store failed: %s", backend, _describe(error))
        return {"ok": False, "backend": backend, "detail": type(error).__name__}
    return {"ok": True, "backend": backend}


def _check_writable(location: Path) -> None:
    location.mkdir(parents=True, exist_ok=True)
    if not os.access(location, os.W_OK):
        raise PermissionError(f"{location} is not writable")


def resume() -> None:
    """Forget an earlier failure: the next call tries the store at once (tests, after they restart it)."""
    global _paused_until
    _paused_until = 0.0


@contextmanager
def _guarded(action: str):
    global _paused_until
    wait = _paused_until - time.monotonic()
    if wait > 0:
        raise StoreUnavailable(f"the store failed moments ago; not tried again for {wait:.1f} s")
    try:
        yield
    except STORE_ERRORS as error:
        if _is_missing(error):  # a missing file is this file's problem, not the store's: no pause
            raise ObjectMissing(f"the store's {action} found no such object: {_describe(error)}") from error
        _paused_until = time.monotonic() + PAUSE_AFTER_FAILURE
        logger.warning("object store %s failed; pausing it for %ss: %s", action, PAUSE_AFTER_FAILURE, error)
        raise StoreUnavailable(f"the store's {action} failed: {_describe(error)}") from error


def _is_missing(error: Exception) -> bool:
    if isinstance(error, FileNotFoundError):
        return True
    return isinstance(error, ClientError) and error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey")


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"[:500]
