"""Image bytes in Django's storage: the file system on embedded defaults, an S3-compatible store when configured.

The store may be down or slow, and neither may cost an image or hang a request. Every call here either works or
raises StoreUnavailable, within the store's timeouts (STORAGE_TIMEOUT_SECONDS × STORAGE_MAX_ATTEMPTS); a write it
refuses is held in the database by the caller (services._image_rows). After an outage-like failure this process
leaves the store alone for PAUSE_AFTER_FAILURE seconds, so a dead store costs one timeout per process, not one per
image (jobs/events.py pauses Redis the same way).
"""

import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

logger = logging.getLogger(__name__)

PAUSE_AFTER_FAILURE = 5.0  # seconds without store requests after one failed as an outage
# What a store call raises when it does not work: the file system's OSError, botocore's connection errors and
# timeouts (BotoCoreError), and the store's own refusals (ClientError: 5xx, 403, a missing bucket).
STORE_ERRORS = (OSError, BotoCoreError, ClientError)

_paused_until = 0.0


class StoreUnavailable(Exception):
    """The store did not take or give the bytes; the message says what it answered."""


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


def read(name: str) -> bytes:
    with _guarded("read"):
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
    """For health: which store, and whether it answers now (one short try, whatever the pause says)."""
    if is_object_store():
        answer = {"backend": "s3", "bucket": default_storage.bucket_name}
        try:
            default_storage.ping()
        except STORE_ERRORS as error:
            return {"ok": False, **answer, "detail": _describe(error)}
        return {"ok": True, **answer}
    location = Path(default_storage.location)
    try:
        location.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return {"ok": False, "backend": "filesystem", "detail": _describe(error)}
    if not os.access(location, os.W_OK):
        return {"ok": False, "backend": "filesystem", "detail": f"{location} is not writable"}
    return {"ok": True, "backend": "filesystem"}


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
        if not _is_missing(error):  # a missing file is this file's problem, not the store's
            _paused_until = time.monotonic() + PAUSE_AFTER_FAILURE
            logger.warning("object store %s failed; pausing it for %ss: %s", action, PAUSE_AFTER_FAILURE, error)
        raise StoreUnavailable(f"the store's {action} failed: {_describe(error)}") from error


def _is_missing(error: Exception) -> bool:
    if isinstance(error, FileNotFoundError):
        return True
    return isinstance(error, ClientError) and error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey")


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"[:500]
