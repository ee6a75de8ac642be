"""The library's names that the web process reads, and the only module of `generator` it imports.

Nothing here imports torch, diffusers or transformers, even indirectly: the API validates a request, lists models
and schedulers and answers `GET models/` in a process that never loads a network. `make lint` checks this with
import-linter (the contracts in pyproject.toml).

- `limits`: the one table of request fields, their defaults and limits (`limits.FIELDS`), read by the serializer,
  the job service and `generator.pipeline.resolve_request` alike;
- `SCHEDULERS`: the scheduler names a request may ask for;
- `read_model_info`: a model folder's kind, sizes and defaults, from its JSON files only;
- `images`: input images for img2img/inpainting (`fit`, `fit_mask`, `RESIZE_MODES`, `image_sha256`), Pillow only.
"""

from generator import images, limits
from generator.model_info import ModelDefaults, ModelInfo, ModelLoadError, read_model_info
from generator.scheduler_names import SCHEDULERS

__all__ = ["SCHEDULERS", "ModelDefaults", "ModelInfo", "ModelLoadError", "images", "limits", "read_model_info"]
