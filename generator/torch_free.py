"""The library's names that the web process reads, and the only module of `generator` it imports.

Nothing here imports torch, diffusers or transformers, even indirectly: the API validates a request, lists models
and schedulers and answers `GET models/` in a process that never loads a network. `make lint` checks this with
import-linter (the contracts in pyproject.toml).

- `limits`: the one table of request fields, their defaults and limits (`limits.FIELDS`), read by the serializer,
  the job service and `generator.pipeline.resolve_request` alike;
- `SCHEDULERS`: the scheduler names a request may ask for;
- `read_model_info`: a model folder's kind, sizes and defaults, from its JSON files only;
- `read_model_kind`, `check_model_folder`, `hash_weights`, `weights_signature`: what the registry's scan records;
- `read_lora_info`, `LORA_WEIGHT_RANGE`: a LoRA file's format, base kind, rank and hash, from its header alone;
- `check_prompt`: A1111's weighting syntax (`(word:1.3)`, `[word]` …), checked before anything is queued;
- `images`: input images for img2img/inpainting (`fit`, `fit_mask`, `RESIZE_MODES`, `image_sha256`), Pillow only.
"""

from generator import images, limits
from generator.lora_info import LORA_WEIGHT_RANGE, LoraError, LoraInfo, read_lora_info
from generator.model_info import (
    KIND_NAMES,
    ModelDefaults,
    ModelInfo,
    ModelKind,
    ModelLoadError,
    check_model_folder,
    hash_weights,
    read_model_info,
    read_model_kind,
    weights_signature,
)
from generator.prompts import MAX_CHUNKS, PromptSyntaxError, check_prompt, uses_syntax
from generator.scheduler_names import SCHEDULERS

__all__ = [
    "KIND_NAMES", "LORA_WEIGHT_RANGE", "LoraError", "LoraInfo", "MAX_CHUNKS", "ModelDefaults", "ModelInfo",
    "ModelKind", "ModelLoadError", "PromptSyntaxError", "SCHEDULERS", "check_model_folder", "check_prompt",
    "hash_weights", "images", "limits", "read_lora_info", "read_model_info", "read_model_kind", "uses_syntax",
    "weights_signature",
]
