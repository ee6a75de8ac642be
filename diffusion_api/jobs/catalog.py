"""The models the service offers, read from their folders' JSON files (the web process never loads torch)."""

import hashlib
from functools import lru_cache
from pathlib import Path

from django.conf import settings

from generator.torch_free import ModelInfo, ModelLoadError, read_model_info


class ModelUnavailable(Exception):
    pass


def model_names() -> list[str]:
    return list(settings.MODELS)


def model_info(name: str) -> ModelInfo:
    if name not in settings.MODELS:
        raise ModelUnavailable(f"unknown model {name!r}; available: {', '.join(settings.MODELS)}")
    path = Path(settings.MODELS[name])
    config = path / "unet" / "config.json"
    if not config.is_file():
        raise ModelUnavailable(f"model {name!r} is not ready: {path} has no unet/config.json")
    try:
        return _read(str(path), name, config.stat().st_mtime_ns)
    except ModelLoadError as error:
        raise ModelUnavailable(f"model {name!r} cannot be read: {error}") from error


@lru_cache(maxsize=32)
def _read(path: str, name: str, mtime_ns: int) -> ModelInfo:  # mtime in the key: a replaced model is read again
    return read_model_info(path, name)


def model_version(name: str) -> str:
    """Changes whenever a file of the model changes (size or mtime); cheap: stat calls only, no reading."""
    path = Path(settings.MODELS[name])
    digest = hashlib.sha256()
    # The workers' numerics change pixels too: a cached image must come from the same dtype, decoder and kernels.
    digest.update(
        f"{settings.GENERATOR_DTYPE}\0{settings.GENERATOR_BACKEND}\0{settings.GENERATOR_DECODER}\0"
        f"{settings.GENERATOR_CHANNELS_LAST}\0"
        f"{settings.GENERATOR_COMPILE}\n".encode()
    )
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(path).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]
