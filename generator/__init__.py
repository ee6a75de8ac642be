"""`generator`: a small latent-diffusion library (CLIP text encoder → UNet → VAE).

It never imports Django or Celery and reads no environment variables: devices, dtypes,
paths and seeds come in as arguments.
"""

from generator.loading import LoadedModel, ModelLoadError, check_model_folder, load_model
from generator.pipeline import (
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    StepState,
    batch_key,
    generate,
    generate_one,
    resolve_request,
)
from generator.pngmeta import read_manifest
from generator.schedulers import SCHEDULERS, make_scheduler
from generator.tiny import TinyModelConfig, make_tiny_model

__all__ = [
    "SCHEDULERS",
    "GeneratedImage",
    "GenerationRequest",
    "GenerationResult",
    "LoadedModel",
    "ModelLoadError",
    "StepState",
    "TinyModelConfig",
    "batch_key",
    "check_model_folder",
    "generate",
    "generate_one",
    "load_model",
    "make_scheduler",
    "make_tiny_model",
    "read_manifest",
    "resolve_request",
]
