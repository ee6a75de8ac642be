"""Load a diffusers-layout Stable Diffusion folder (SD 1.x/2.x) from local disk, never from a hub."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from generator.model_info import ModelDefaults, ModelLoadError, read_json, read_model_info

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Each part of the layout: the files it must hold (any one of a tuple will do).
REQUIRED_FILES = {
    "tokenizer": [("tokenizer.json", "vocab.json")],
    "text_encoder": [("config.json",), ("model.safetensors", "pytorch_model.bin")],
    "unet": [("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")],
    "vae": [("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")],
    "scheduler": [("scheduler_config.json",)],
}
WEIGHT_SUFFIXES = (".safetensors", ".bin")
DECODERS = ("vae", "tiny")  # tiny: the model's own `tiny_vae/` folder (an AutoencoderKL distilled to AutoencoderTiny)


@dataclass
class LoadedModel:
    """The five components of a Stable Diffusion model, on one device in one dtype."""

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

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

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


def check_model_folder(path: str | Path) -> Path:
    """Raise ModelLoadError naming every missing part of the layout; return the folder's path."""
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"model folder {path} does not exist or is not a folder")
    problems = []
    if not (path / "model_index.json").is_file():
        problems.append("model_index.json")
    for part, requirements in REQUIRED_FILES.items():
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
    for config in [path / "model_index.json", path / "scheduler" / "scheduler_config.json"] + [
        path / part / "config.json" for part in ("text_encoder", "unet", "vae")
    ]:
        read_json(config)
    return path


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
    vae = load("vae", lambda p: AutoencoderKL.from_pretrained(p, local_files_only=True, torch_dtype=dtype))
    tiny_vae = None
    if decoder == "tiny":
        tiny_vae = load("tiny_vae", lambda p: AutoencoderTiny.from_pretrained(p, local_files_only=True,
                                                                              torch_dtype=dtype))
    for module in (text_encoder, unet, vae, tiny_vae):
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
    )
