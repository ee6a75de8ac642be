"""What a LoRA file is, read from its safetensors header alone: format, base model, rank, hash.

No torch here (nor safetensors): the registry's scan reads LoRA files with this in the web process, and the worker
checks a file again before it loads it (generator.lora).

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON ({tensor name: {"dtype", "shape",
"data_offsets"}} and an optional "__metadata__"), then the tensors' bytes.

Which base model a LoRA was made for is read from the width of the text context its layers see, which is the
UNet's `cross_attention_dim` and the text encoder's hidden size: 768 for SD 1.x (CLIP ViT-L), 1024 for SD 2.x
(OpenCLIP ViT-H), 2048 for SDXL (its two text encoders' 768 + 1280, and any key of the second one says SDXL too).
The UNet's cross-attention key and value projections (`attn2.to_k`, `attn2.to_v`) take the context as input, and
so do the text encoder's projections; a LoRA that touches neither (only convolutions, say) is of kind "unknown".
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from generator.model_info import KIND_BY_CONTEXT, KIND_NAMES, read_model_kind

LORA_WEIGHT_RANGE = (-4.0, 4.0)  # beyond ±4 a LoRA's delta swamps the base weights: noise, not a style
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
SDXL_CONTEXT_DIM = 2048

_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
_DIFFUSERS_PREFIXES = ("unet.", "text_encoder.", "text_encoder_2.")
# The matrix that takes a layer's input: its second dimension is the input width and its first the rank.
_DOWN = re.compile(r"(lora_down|lora\.down|lora_linear_layer\.down|lora_A)(\.[\w-]+)?\.weight$")
_CONTEXT_INPUT = re.compile(r"attn2[._](processor[._])?to[._][kv]")
_TEXT_ENCODER = re.compile(r"^(lora_te1?_|text_encoder\.)")
_TEXT_ENCODER_2 = re.compile(r"^(lora_te2_|text_encoder_2\.)")
_HIDDEN_INPUT = re.compile(r"self_attn|fc1")  # the text encoder's layers whose input is its hidden state


class LoraError(ValueError):
    """A LoRA file is unreadable, or does not fit the model or request; the message names the file and why."""


@dataclass(frozen=True)
class LoraInfo:
    path: Path
    # "kohya" (lora_unet_… / lora_te_…), "diffusers" (unet.… / text_encoder.…, lora_A/B or lora.down/up) or "peft"
    # (a UNet adapter under bare module names, as peft's get_peft_model_state_dict writes them)
    format: str
    base_kind: str  # "sd1", "sd2", "sdxl", "custom" (another width: context_dim), "unknown" (nothing says)
    context_dim: int | None  # the text context width its layers take, None where none of them takes it
    rank: int  # the largest rank of its layers
    text_encoder: bool  # whether it changes the text encoder too (then prompt embeddings depend on it)
    sha256: str
    tensors: int

    @property
    def name(self) -> str:
        return self.path.stem


def read_lora_info(path: str | Path) -> LoraInfo:
    """Read a LoRA's header and hash its bytes; raise LoraError for anything but a complete LoRA safetensors file."""
    path = Path(path)
    header = _read_header(path)
    names = [name for name in header if name != "__metadata__"]
    if not names:
        raise LoraError(f"LoRA file {path} holds no tensors")
    lora_format = _format(path, names)
    downs = {name: header[name]["shape"] for name in names if _DOWN.search(name)}
    if not downs or any(len(shape) < 2 for shape in downs.values()):
        raise LoraError(f"LoRA file {path} has no LoRA down (A) matrices of two or more dimensions")
    context_dim = _context_dim(names, downs)
    if any(_TEXT_ENCODER_2.match(name) for name in names):
        base_kind, context_dim = "sdxl", SDXL_CONTEXT_DIM
    elif context_dim is None:
        base_kind = "unknown"
    else:
        base_kind = KIND_BY_CONTEXT.get(context_dim, "custom")
    return LoraInfo(
        path=path,
        format=lora_format,
        base_kind=base_kind,
        context_dim=context_dim,
        rank=max(shape[0] for shape in downs.values()),
        text_encoder=any(_TEXT_ENCODER.match(name) or _TEXT_ENCODER_2.match(name) for name in names),
        sha256=file_sha256(path),
        tensors=len(names),
    )


def check_compatible(info: LoraInfo, model_path: str | Path, *, name: str | None = None) -> None:
    """Raise LoraError if the LoRA was made for another kind of model: its context width must be the UNet's
    cross_attention_dim (generator.model_info.read_model_kind), and an SDXL LoRA needs an SDXL model. The built-in
    and tiny models are of kind "custom" and have widths of their own, so LoRAs trained on them pass. A LoRA of
    unknown kind passes too: nothing in it says, and a layer that does not fit fails when it is loaded."""
    model = read_model_kind(model_path)
    if info.base_kind == "unknown":
        return
    if info.context_dim == model.context_dim and (info.base_kind == "sdxl") == (model.kind == "sdxl"):
        return
    raise LoraError(
        f"LoRA {name or info.name!r} was made for {_describe(info.base_kind, info.context_dim)} and model "
        f"{Path(model_path).name!r} is {_describe(model.kind, model.context_dim)}"
    )


def check_lora_weight(weight: float, *, name: str = "") -> None:
    """Raise LoraError unless `weight` is a finite number within LORA_WEIGHT_RANGE (negative weights invert a LoRA)."""
    low, high = LORA_WEIGHT_RANGE
    ok = isinstance(weight, int | float) and not isinstance(weight, bool) and math.isfinite(weight)
    if not ok or not low <= weight <= high:
        label = f"the weight of LoRA {name!r}" if name else "a LoRA's weight"
        raise LoraError(f"{label} must be a number from {low} to {high}, got {weight!r}")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _read_header(path: Path) -> dict:
    """The header's JSON, after checking that every tensor's bytes lie inside the file (a truncated file fails)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise LoraError(f"LoRA file {path} is {size} bytes: too short for a safetensors header")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise LoraError(f"LoRA file {path} is not a safetensors file (its header would be {length} bytes)")
            header = json.loads(f.read(length))
    except OSError as error:
        raise LoraError(f"cannot read LoRA file {path}: {error}") from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LoraError(f"LoRA file {path} has a corrupt safetensors header: {error}") from error
    if not isinstance(header, dict):
        raise LoraError(f"LoRA file {path} has a corrupt safetensors header: not a JSON object")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            shape, (begin, stop) = entry["shape"], entry["data_offsets"]
            ok = all(isinstance(n, int) for n in (*shape, begin, stop)) and 0 <= begin <= stop
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise LoraError(f"LoRA file {path} has a corrupt safetensors header: bad entry for tensor {name!r}")
        end = max(end, stop)
    if 8 + length + end > size:
        raise LoraError(f"LoRA file {path} is truncated: {size} bytes, its header describes {8 + length + end}")
    return header


def _format(path: Path, names: list[str]) -> str:
    if all(name.startswith(_KOHYA_PREFIXES) for name in names):
        return "kohya"
    if all(name.startswith(_DIFFUSERS_PREFIXES) for name in names):
        return "diffusers"
    if all(".lora_A." in name or ".lora_B." in name or name.endswith(".alpha") for name in names):
        return "peft"  # bare module names, as peft's get_peft_model_state_dict writes them
    raise LoraError(
        f"LoRA file {path} is in no format known here (kohya lora_unet_…/lora_te_…, diffusers unet.…/text_encoder.…, "
        f"peft …lora_A/lora_B); its first key is {names[0]!r}"
    )


def _context_dim(names: list[str], downs: dict[str, list[int]]) -> int | None:
    """The input width of the UNet's cross-attention key/value LoRAs, else of the (first) text encoder's LoRAs."""
    for name, shape in downs.items():
        if _CONTEXT_INPUT.search(name):
            return shape[1]
    for name, shape in downs.items():
        if _TEXT_ENCODER.match(name) and _HIDDEN_INPUT.search(name):
            return shape[1]
    return None


def _describe(kind: str, dim: int | None) -> str:
    return f"{KIND_NAMES.get(kind, kind)} (context {dim})"
