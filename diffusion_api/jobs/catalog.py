"""The models and LoRAs the service offers: the registry's entries (diffusion_api.registry) and the bootstrap `MODELS`
setting, read from their folders' JSON files (the web process never loads torch).

A name in the registry wins over the same name in `MODELS`. A registry entry is offered when it is enabled, its files
were found whole (`usable`) and the user may use it (no groups chosen, or one of the user's groups).
"""

import hashlib
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from django.conf import settings

from diffusion_api.registry.models import ImageModel, Lora
from generator.torch_free import KIND_NAMES, ModelInfo, ModelLoadError, read_model_info, read_model_kind


class ModelUnavailable(Exception):
    pass


def model_names(user=None) -> list[str]:
    """Names a user may ask for (every name when `user` is None, as a worker sees them), the default first. A broken
    entry is left out: the admin shows it, with its problem."""
    records = {m.name: m for m in ImageModel.objects.filter(enabled=True).prefetch_related("groups")}
    records = {name: m for name, m in records.items() if m.usable}
    shadowed = set(ImageModel.objects.values_list("name", flat=True)) - set(records)  # disabled or broken entries
    names = [name for name in settings.MODELS if name not in shadowed and name not in records]
    return names + [name for name, m in records.items() if _allowed(m, user)]


def model_record(name: str) -> ImageModel | None:
    return ImageModel.objects.filter(name=name).first()


def model_path(name: str, user=None) -> Path:
    """The folder of a model `user` may use; ModelUnavailable names why not (unknown, disabled, forbidden, broken)."""
    record = model_record(name)
    if record is None:
        if name not in settings.MODELS:
            raise ModelUnavailable(f"unknown model {name!r}; available: {', '.join(model_names(user))}")
        return Path(settings.MODELS[name])
    if not record.enabled:
        raise ModelUnavailable(f"model {name!r} is disabled")
    if not _allowed(record, user):
        raise ModelUnavailable(f"model {name!r} is not available to you (it is limited to some groups)")
    if not record.usable:
        raise ModelUnavailable(f"model {name!r} is unusable: {record.problem}")
    return Path(record.path)


def model_info(name: str, user=None) -> ModelInfo:
    """Sizes and defaults (the folder's, then the registry entry's overrides)."""
    path = model_path(name, user)
    config = path / "unet" / "config.json"
    if not config.is_file():
        raise ModelUnavailable(f"model {name!r} is not ready: {path} has no unet/config.json")
    try:
        info = _read(str(path), name, config.stat().st_mtime_ns)
    except ModelLoadError as error:
        raise ModelUnavailable(f"model {name!r} cannot be read: {error}") from error
    record = model_record(name)
    if record is not None and record.defaults:
        info = replace(info, defaults=replace(info.defaults, **record.defaults))
    return info


def model_limits(name: str) -> dict:
    """The entry's own limits (`max_pixels`, `max_steps`), lower than the service's; {} for a bootstrap model."""
    record = model_record(name)
    return dict(record.limits) if record is not None else {}


@lru_cache(maxsize=32)
def _read(path: str, name: str, mtime_ns: int) -> ModelInfo:  # mtime in the key: a replaced model is read again
    return read_model_info(path, name)


def _allowed(record, user) -> bool:
    if user is None or getattr(user, "is_superuser", False):
        return True
    wanted = {group.id for group in record.groups.all()}
    return not wanted or bool(wanted & set(user.groups.values_list("id", flat=True)))


def lora_names(user=None) -> list[str]:
    loras = Lora.objects.filter(enabled=True, usable=True).prefetch_related("groups")
    return [lora.name for lora in loras if _allowed(lora, user)]


def lora_record(name: str, user=None) -> Lora:
    """A LoRA `user` may apply; ModelUnavailable names why not."""
    record = Lora.objects.filter(name=name).first()
    if record is None:
        raise ModelUnavailable(f"unknown LoRA {name!r}; available: {', '.join(lora_names(user)) or 'none'}")
    if not record.enabled:
        raise ModelUnavailable(f"LoRA {name!r} is disabled")
    if not _allowed(record, user):
        raise ModelUnavailable(f"LoRA {name!r} is not available to you (it is limited to some groups)")
    if not record.usable:
        raise ModelUnavailable(f"LoRA {name!r} is unusable: {record.problem}")
    return record


def lora_mismatch(lora: Lora, model: str) -> str | None:
    """Why `lora` cannot apply to `model` (made for another text-conditioning width), or None."""
    try:
        kind = read_model_kind(model_path(model))
    except ModelLoadError as error:
        return f"model {model!r} cannot be read: {error}"
    if lora.context_dim and kind.context_dim and lora.context_dim != kind.context_dim:
        return (
            f"LoRA {lora.name!r} was made for {KIND_NAMES.get(lora.base_kind, lora.base_kind)} (text width "
            f"{lora.context_dim}) and model {model!r} is {KIND_NAMES[kind.kind]} (text width {kind.context_dim})"
        )
    return None


def model_version(name: str) -> str:
    """Changes whenever a file of the model changes (size or mtime); cheap: stat calls only, no reading."""
    path = model_path(name)
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
