"""What a model folder offers (sizes, defaults, limits), read from its JSON files alone.

No torch here: the web service uses this to validate requests without loading a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from generator.scheduler_names import scheduler_name_for_config

# Used when the folder's `generator.json` does not set them.
FALLBACK_DEFAULTS = {"steps": 30, "guidance_scale": 7.5}


class ModelLoadError(ValueError):
    """The model folder is missing, incomplete or corrupt; the message says what and where."""


@dataclass(frozen=True)
class ModelDefaults:
    width: int
    height: int
    steps: int
    guidance_scale: float
    scheduler: str


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path
    vae_scale_factor: int
    max_prompt_tokens: int  # not counting the start and end tokens
    defaults: ModelDefaults
    # scheduler/scheduler_config.json: which schedulers the model can use (generator.scheduler_names.scheduler_error)
    scheduler_config: dict = field(default_factory=dict, compare=False)


def read_model_info(path: str | Path, name: str | None = None) -> ModelInfo:
    """Defaults and sizes of a diffusers-layout folder: image side = UNet sample size × VAE factor."""
    path = Path(path)
    unet = read_json(path / "unet" / "config.json")
    vae = read_json(path / "vae" / "config.json")
    scheduler = read_json(path / "scheduler" / "scheduler_config.json")
    tokenizer_config = path / "tokenizer" / "tokenizer_config.json"
    max_length = read_json(tokenizer_config).get("model_max_length", 77) if tokenizer_config.is_file() else 77
    if not isinstance(max_length, int) or max_length > 10_000:  # some configs hold a huge sentinel
        max_length = 77

    vae_factor = 2 ** (len(vae.get("block_out_channels", [0])) - 1)
    sample_size = unet.get("sample_size", 64)
    side = (sample_size if isinstance(sample_size, int) else sample_size[0]) * vae_factor
    defaults = {
        "width": side,
        "height": side,
        "steps": FALLBACK_DEFAULTS["steps"],
        "guidance_scale": FALLBACK_DEFAULTS["guidance_scale"],
        "scheduler": scheduler_name_for_config(scheduler),
    }
    # An optional `generator.json` holds the defaults this model was tuned for.
    if (path / "generator.json").is_file():
        overrides = read_json(path / "generator.json").get("defaults", {})
        unknown = set(overrides) - set(defaults)
        if unknown:
            raise ModelLoadError(f"{path / 'generator.json'}: unknown defaults {sorted(unknown)}")
        defaults.update(overrides)
    return ModelInfo(
        name=name or path.resolve().name,
        path=path,
        vae_scale_factor=vae_factor,
        max_prompt_tokens=max_length - 2,
        defaults=ModelDefaults(**defaults),
        scheduler_config=scheduler,
    )


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{path} is not valid JSON: {error}") from error
