"""`generator`: a small latent-diffusion library (CLIP text encoder → UNet → VAE).

It never imports Django or Celery and reads no environment variables: devices, dtypes,
paths and seeds come in as arguments.

The names below are imported on first use, so that `generator.model_info` and
`generator.schedulers.SCHEDULERS` can be read by the web service without importing torch.
"""

import importlib

_EXPORTS = {
    "Bucket": "generator.fastpath",
    "optimize": "generator.fastpath",
    "parse_buckets": "generator.fastpath",
    "LoadedModel": "generator.loading",
    "check_model_folder": "generator.loading",
    "load_model": "generator.loading",
    "LoraSpec": "generator.lora",
    "ModelLoadError": "generator.model_info",
    "read_model_info": "generator.model_info",
    "GeneratedImage": "generator.pipeline",
    "GenerationRequest": "generator.pipeline",
    "GenerationResult": "generator.pipeline",
    "StepState": "generator.pipeline",
    "batch_key": "generator.pipeline",
    "generate": "generator.pipeline",
    "generate_one": "generator.pipeline",
    "resolve_request": "generator.pipeline",
    "read_manifest": "generator.pngmeta",
    "SCHEDULERS": "generator.schedulers",
    "make_scheduler": "generator.schedulers",
    "TinyModelConfig": "generator.tiny",
    "make_tiny_model": "generator.tiny",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'generator' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
