"""Load a diffusers-layout Stable Diffusion folder (SD 1.x/2.x, SDXL) from local disk, never from a hub."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from generator.model_info import (  # noqa: F401  (check_model_folder and REQUIRED_FILES are this module's API too)
    REQUIRED_FILES,
    ModelDefaults,
    ModelLoadError,
    check_model_folder,
    read_json,
    read_model_info,
    sdxl_parts,
)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

WEIGHT_SUFFIXES = (".safetensors", ".bin")
DECODERS = ("vae", "tiny")  # tiny: the model's own `tiny_vae/` folder (an AutoencoderKL distilled to AutoencoderTiny)


@dataclass
class LoadedModel:
    """The five components of a Stable Diffusion model, on one device in one dtype; SDXL adds a second tokenizer
    and text encoder (`is_sdxl`)."""

    name: str
    path: Path
    content_hash: str  # sha256 over every file in the folder, in path order
    tokenizer: object  # transformers.CLIPTokenizer
    text_encoder: torch.nn.Module  # transformers.CLIPTextModel
    unet: torch.nn.Module  # diffusers.UNet2DConditionModel
    vae: torch.nn.Module  # diffusers.AutoencoderKL
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype
    defaults: ModelDefaults
    tiny_vae: torch.nn.Module | None = None  # diffusers.AutoencoderTiny, the fast path's cheap decoder (`tiny_vae/`)
    decoder: str = "vae"  # which decodes the images: "vae" (the AutoencoderKL) or "tiny" (tiny_vae)
    cache: dict = field(default_factory=dict)  # per-model derived values (e.g. preview matrix)
    tokenizer_2: object | None = None  # SDXL: transformers.CLIPTokenizer
    text_encoder_2: torch.nn.Module | None = None  # SDXL: transformers.CLIPTextModelWithProjection
    # model_index.json's pipeline settings that change the conditioning (SDXL: force_zeros_for_empty_prompt,
    # requires_aesthetics_score)
    pipeline_config: dict = field(default_factory=dict)

    @property
    def is_sdxl(self) -> bool:
        """Two text encoders, pooled text embeddings and added time ids (StableDiffusionXLPipeline)."""
        return self.text_encoder_2 is not None

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def vae_dtype(self) -> torch.dtype:
        """The VAE's dtype: the model's, but fp32 for an fp16 SDXL whose VAE config sets `force_upcast`."""
        return getattr(self.vae, "dtype", self.dtype)

    @property
    def max_prompt_tokens(self) -> int:
        """Tokens a prompt may have, not counting the start and end tokens."""
        return self.tokenizer.model_max_length - 2


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None` or "auto" → cuda when present, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA device is available")
    return device


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype {dtype} is not supported; use one of {sorted(DTYPES)}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def hash_model_folder(path: Path) -> str:
    """sha256 over every file's relative path and bytes; the same folder always gives the same hash."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        if file.name.startswith(".") or "__pycache__" in file.parts:
            continue
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def load_model(
    path: str | Path,
    *,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype = "fp32",
    name: str | None = None,
    decoder: str = "vae",
) -> LoadedModel:
    """Load tokenizer, text encoder, UNet, VAE and scheduler config from a local folder.

    `decoder="tiny"` also loads `tiny_vae/` (an `AutoencoderTiny` trained for this model) and decodes with it.
    """
    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = check_model_folder(path)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; use one of {', '.join(DECODERS)}")
    if decoder == "tiny" and not (path / "tiny_vae" / "config.json").is_file():
        raise ModelLoadError(
            f"model folder {path} has no tiny_vae/ folder, which decoder 'tiny' needs "
            "(train one with `python -m generator.train --config configs/tiny_vae.yaml`)"
        )

    def load(part: str, loader):
        try:
            return loader(path / part)
        except Exception as error:  # the libraries raise many kinds; name the part that failed
            raise ModelLoadError(f"could not load {path / part}: {type(error).__name__}: {error}") from error

    tokenizer = load("tokenizer", lambda p: CLIPTokenizer.from_pretrained(p, local_files_only=True))
    text_encoder = load("text_encoder", lambda p: CLIPTextModel.from_pretrained(p, local_files_only=True, dtype=dtype))
    unet = load("unet", lambda p: UNet2DConditionModel.from_pretrained(p, local_files_only=True, torch_dtype=dtype))
    tokenizer_2 = text_encoder_2 = None
    pipeline_config = {}
    if sdxl_parts(path):
        tokenizer_2, text_encoder_2, pipeline_config = _load_sdxl_parts(path, unet, dtype, load)
    elif unet.config.addition_embed_type == "text_time":
        raise ModelLoadError(f"{path / 'unet'} is an SDXL UNet, but model_index.json names no text_encoder_2")
    # SDXL's VAE overflows in fp16: like StableDiffusionXLPipeline (`force_upcast`), it encodes and decodes in fp32.
    # SD 1.x pipelines do not upcast, and neither does this loop for them.
    upcast = text_encoder_2 is not None and read_json(path / "vae" / "config.json").get("force_upcast", True)
    vae_dtype = torch.float32 if upcast and dtype == torch.float16 else dtype
    vae = load("vae", lambda p: AutoencoderKL.from_pretrained(p, local_files_only=True, torch_dtype=vae_dtype))
    tiny_vae = None
    if decoder == "tiny":
        tiny_vae = load("tiny_vae", lambda p: AutoencoderTiny.from_pretrained(p, local_files_only=True,
                                                                              torch_dtype=dtype))
    for module in (text_encoder, text_encoder_2, unet, vae, tiny_vae):
        if module is not None:
            module.to(device).eval().requires_grad_(False)

    scheduler_config = read_json(path / "scheduler" / "scheduler_config.json")
    info = read_model_info(path, name)
    return LoadedModel(
        name=info.name,
        path=path,
        content_hash=hash_model_folder(path),
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        vae=vae,
        scheduler_config=scheduler_config,
        device=device,
        dtype=dtype,
        defaults=info.defaults,
        tiny_vae=tiny_vae,
        decoder=decoder,
        tokenizer_2=tokenizer_2,
        text_encoder_2=text_encoder_2,
        pipeline_config=pipeline_config,
    )


def _load_sdxl_parts(path: Path, unet: torch.nn.Module, dtype: torch.dtype, load):
    """SDXL's second tokenizer and text encoder, and model_index.json's conditioning settings (with the defaults
    StableDiffusionXLPipeline takes when the file has none)."""
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    if unet.config.addition_embed_type != "text_time":
        raise ModelLoadError(
            f"model folder {path} names a text_encoder_2, but its UNet's addition_embed_type is "
            f"{unet.config.addition_embed_type!r}, not 'text_time' (SDXL's)"
        )
    tokenizer_2 = load("tokenizer_2", lambda p: CLIPTokenizer.from_pretrained(p, local_files_only=True))
    text_encoder_2 = load(
        "text_encoder_2", lambda p: CLIPTextModelWithProjection.from_pretrained(p, local_files_only=True, dtype=dtype)
    )
    index = read_json(path / "model_index.json")
    pipeline_config = {
        "force_zeros_for_empty_prompt": bool(index.get("force_zeros_for_empty_prompt", True)),
        "requires_aesthetics_score": bool(index.get("requires_aesthetics_score", False)),
    }
    # The UNet's added embedding reads the pooled embedding and each time id's embedding (generator.pipeline's
    # add_time_ids: 6 ids, or 5 with an aesthetic score): a folder whose parts disagree fails here, not mid-job.
    time_ids = 5 if pipeline_config["requires_aesthetics_score"] else 6
    given = unet.config.addition_time_embed_dim * time_ids + text_encoder_2.config.projection_dim
    expected = unet.add_embedding.linear_1.in_features
    if given != expected:
        raise ModelLoadError(
            f"model folder {path}: the UNet's added embedding takes {expected} features, but {time_ids} time ids and "
            f"text_encoder_2's projection give {given} (is requires_aesthetics_score in model_index.json right?)"
        )
    return tokenizer_2, text_encoder_2, pipeline_config
