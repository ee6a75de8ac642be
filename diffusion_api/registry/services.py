"""Filling the registry from disk, and marking an entry that broke after its scan."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from django.utils import timezone

from diffusion_api.registry.models import ImageModel, Kind, Lora
from generator.torch_free import (
    LoraError,
    ModelLoadError,
    check_model_folder,
    hash_weights,
    read_lora_info,
    read_model_info,
    read_model_kind,
    weights_signature,
)

logger = logging.getLogger(__name__)


@dataclass
class ScanReport:
    models: list[str] = field(default_factory=list)  # names registered or refreshed, usable
    loras: list[str] = field(default_factory=list)
    unusable: dict[str, str] = field(default_factory=dict)  # name → the problem
    skipped: dict[str, str] = field(default_factory=dict)  # path → why (a name another path holds)


def registry_scan(*, directory: Path) -> ScanReport:
    """Register every diffusers-layout folder (it has `model_index.json`) under `directory` as a model, and every
    other `.safetensors` file as a LoRA. Weights are hashed once: again only when a weight file's size or mtime
    changed. A broken folder or file is recorded as unusable, with the reason; scanning again after a fix clears it.
    Entries are matched by path, so an admin's renaming, enabling and groups survive a rescan."""
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a folder")
    report = ScanReport()
    folders = sorted({index.parent for index in directory.rglob("model_index.json")})
    for folder in folders:
        _scan_model(folder, report)
    for file in sorted(directory.rglob("*.safetensors")):
        if not any(folder in file.parents for folder in folders):
            _scan_lora(file, report)
    return report


def _scan_model(folder: Path, report: ScanReport) -> None:
    record = ImageModel.objects.filter(path=str(folder)).first() or ImageModel(name=folder.name, path=str(folder))
    if record._state.adding and ImageModel.objects.filter(name=record.name).exists():
        report.skipped[str(folder)] = f"the name {record.name!r} is another folder's; rename that entry to add this"
        return
    try:
        check_model_folder(folder)
        read_model_info(folder)
        kind = read_model_kind(folder)
        record.kind, record.inpainting, record.context_dim = kind.kind, kind.inpainting, kind.context_dim
        signature = weights_signature(folder)
        if signature != record.signature or not record.sha256:
            record.sha256, record.signature = hash_weights(folder), signature
        record.usable, record.problem = True, ""
        report.models.append(record.name)
    except ModelLoadError as error:
        record.usable, record.problem = False, str(error)
        report.unusable[record.name] = str(error)
    record.scanned_at = timezone.now()
    record.save()


def _scan_lora(file: Path, report: ScanReport) -> None:
    record = Lora.objects.filter(path=str(file)).first() or Lora(name=file.stem, path=str(file))
    if record._state.adding and Lora.objects.filter(name=record.name).exists():
        report.skipped[str(file)] = f"the name {record.name!r} is another file's; rename that entry to add this"
        return
    try:
        signature = f"{file.stat().st_size}:{file.stat().st_mtime_ns}"
        if signature != record.signature or not record.sha256:
            info = read_lora_info(file)
            record.format, record.context_dim = info.format, info.context_dim or 0
            record.base_kind = info.base_kind if info.base_kind in Kind.values else Kind.CUSTOM
            record.rank, record.size_bytes = info.rank, file.stat().st_size
            record.sha256, record.signature = info.sha256, signature
        record.usable, record.problem = True, ""
        report.loras.append(record.name)
    except (LoraError, OSError) as error:
        record.usable, record.problem = False, str(error)
        report.unusable[record.name] = str(error)
    record.scanned_at = timezone.now()
    record.save()


def model_mark_unusable(*, name: str, problem: str) -> bool:
    """A worker found the model's files broken after the scan: offer it no more until a scan finds it whole."""
    marked = ImageModel.objects.filter(name=name, usable=True).update(usable=False, problem=problem[:2000])
    if marked:
        logger.warning("model %s marked unusable: %s", name, problem)
    return bool(marked)
