"""What a model folder offers (sizes, defaults, limits), read from its JSON files alone.

No torch here: the web service uses this to validate requests without loading a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from generator.scheduler_names import scheduler_name_for_config

# Each part of the layout: the files it must hold (any one of a tuple will do).
REQUIRED_FILES = {
    "tokenizer": [("tokenizer.json", "vocab.json")],
    "text_encoder": [("config.json",), ("model.safetensors", "pytorch_model.bin")],
    "unet": [("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")],
    "vae": [("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")],
    "scheduler": [("scheduler_config.json",)],
}
# SDXL's second tokenizer and text encoder, required where model_index.json names them.
SDXL_REQUIRED_FILES = {
    "tokenizer_2": REQUIRED_FILES["tokenizer"],
    "text_encoder_2": REQUIRED_FILES["text_encoder"],
}
# Used when the folder's `generator.json` does not set them.
FALLBACK_DEFAULTS = {"steps": 30, "guidance_scale": 7.5}
SDXL_FALLBACK_DEFAULTS = {"steps": 30, "guidance_scale": 5.0}  # StableDiffusionXLPipeline's default guidance


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
    # Two text encoders, pooled text embeddings and added time ids (StableDiffusionXLPipeline's layout).
    sdxl: bool = False


def read_model_info(path: str | Path, name: str | None = None) -> ModelInfo:
    """Defaults and sizes of a diffusers-layout folder: image side = UNet sample size × VAE factor.

    SDXL folders read the same way (SDXL base: 128 latents × 8 = 1024 px); only their fallback guidance differs.
    """
    path = Path(path)
    sdxl = bool(sdxl_parts(path))
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
        "steps": (SDXL_FALLBACK_DEFAULTS if sdxl else FALLBACK_DEFAULTS)["steps"],
        "guidance_scale": (SDXL_FALLBACK_DEFAULTS if sdxl else FALLBACK_DEFAULTS)["guidance_scale"],
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
        sdxl=sdxl,
    )


def sdxl_parts(path: Path) -> list[str]:
    """The SDXL parts (tokenizer_2, text_encoder_2) that the folder's model_index.json names; [] for SD 1.x/2.x."""
    index_path = path / "model_index.json"
    if not index_path.is_file():
        return []
    index = read_json(index_path)
    # An entry is ["transformers", "CLIPTokenizer"], or [null, null] for a part the pipeline does without.
    return [part for part in SDXL_REQUIRED_FILES if isinstance(index.get(part), list) and index[part][:1] != [None]]


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{path} is not valid JSON: {error}") from error


def check_model_folder(path: str | Path) -> Path:
    """Raise ModelLoadError naming every missing part of the layout; return the folder's path."""
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"model folder {path} does not exist or is not a folder")
    problems = []
    if not (path / "model_index.json").is_file():
        problems.append("model_index.json")
    required = {**REQUIRED_FILES, **{part: SDXL_REQUIRED_FILES[part] for part in sdxl_parts(path)}}
    for part, requirements in required.items():
        if not (path / part).is_dir():
            problems.append(f"{part}/")
            continue
        for choices in requirements:
            if not any((path / part / name).is_file() for name in choices):
                problems.append(f"{part}/{' or '.join(choices)}")
    if problems:
        raise ModelLoadError(
            f"model folder {path} is not a complete diffusers Stable Diffusion layout; missing: " + ", ".join(problems)
        )
    text_encoders = ["text_encoder"] + (["text_encoder_2"] if "text_encoder_2" in required else [])
    for config in [path / "model_index.json", path / "scheduler" / "scheduler_config.json"] + [
        path / part / "config.json" for part in (*text_encoders, "unet", "vae")
    ]:
        read_json(config)
    return path


# What the UNet's text conditioning is as wide as, for the checkpoints people share: the kind a LoRA must match.
KIND_BY_CONTEXT = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
KIND_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "custom": "custom"}


@dataclass(frozen=True)
class ModelKind:
    kind: str  # "sd1", "sd2", "sdxl", or "custom" (another width, like the built-in model's)
    inpainting: bool  # a UNet with 9 input channels: latents, mask and masked image
    context_dim: int  # the UNet's cross_attention_dim: a LoRA is made for one width


def read_model_kind(path: str | Path) -> ModelKind:
    """The family of a diffusers folder, from its UNet config: SDXL has `text_time` added conditioning and a second
    text encoder; SD 1.x and 2.x differ in the width of their text conditioning (768 and 1024)."""
    path = Path(path)
    unet = read_json(path / "unet" / "config.json")
    context = unet.get("cross_attention_dim", 0)
    context = context[0] if isinstance(context, list) else context
    if unet.get("addition_embed_type") == "text_time" or (path / "text_encoder_2").is_dir():
        kind = "sdxl"
    else:
        kind = KIND_BY_CONTEXT.get(context, "custom")
        kind = "custom" if kind == "sdxl" else kind
    return ModelKind(kind=kind, inpainting=unet.get("in_channels", 4) == 9, context_dim=int(context or 0))


def hash_weights(path: str | Path) -> str:
    """sha256 over the folder's weight files (their relative paths and bytes, in path order): what identifies a
    checkpoint, whatever its JSON files say."""
    import hashlib

    path = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin")):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def weights_signature(path: str | Path) -> str:
    """Size and mtime of every weight file: cheap to compute, and changes when a weight file does, so a scan hashes
    a folder again only then."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin"))
    return ";".join(f"{p.relative_to(path).as_posix()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
