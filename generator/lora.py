"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") per batch, through diffusers and peft.

    activate(model, [LoraSpec("ink", "/loras/ink.safetensors", 0.8, sha256)])  # the batch's LoRAs, before its steps
    activate(model, [])                                                        # a batch without: every one disabled

Each file is loaded once per model, as a peft adapter named after its hash, into the UNet (and the text encoder where
it has text-encoder layers) by diffusers' `StableDiffusionLoraLoaderMixin`, which also converts kohya files. A batch
then only picks the active adapters and their weights (`set_adapters`), so switching reads no file. `generate` calls
`activate` for every batch, with an empty list when it has no LoRA, so no LoRA outlives its batch.

A LoRA changes no base weight: peft wraps each targeted layer, W x + weight · (alpha / rank) · B A x. The compiled
graphs of a `BucketedUNet` (generator.fastpath) hold the base UNet as it was compiled, so while a UNet LoRA is active
the UNet runs eager (`eager_only`). With no LoRA active they serve again; torch.compile recompiles a graph once after
the first LoRA is loaded (its guards see the wrapped layers), not at each switch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.loaders.lora_base import (
    disable_lora_for_text_encoder,
    enable_lora_for_text_encoder,
    set_adapters_for_text_encoder,
)
from diffusers.utils import recurse_remove_peft_layers
from diffusers.utils.peft_utils import delete_adapter_layers

from generator.loading import LoadedModel
from generator.lora_info import LoraError, check_compatible, read_lora_info


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA as a request carries it: the registry's name, the file the worker resolved it to, its weight, and the
    file's sha256 (the manifest records it; `activate` refuses a file whose bytes no longer have it)."""

    name: str
    path: str
    weight: float
    sha256: str


@dataclass
class _Adapters:
    """What `activate` has done to a model (kept in `model.cache["loras"]`)."""

    unet: set[str] = field(default_factory=set)  # adapters loaded into the UNet
    text_encoder: set[str] = field(default_factory=set)  # … and into the text encoder
    active: tuple[tuple[str, float], ...] | None = ()  # (adapter, weight) as set; None: unknown, set it again


def adapter_name(spec: LoraSpec) -> str:
    """The peft adapter's name: the file's hash, so one file is loaded once whatever names the registry gives it."""
    return f"lora_{spec.sha256[:16]}"


def activate(model: LoadedModel, loras: list[LoraSpec]) -> None:
    """Make exactly `loras` active on `model`, at their weights, loading the ones not loaded yet; [] disables all.

    Cheap when the active set is unchanged. A LoRA at weight 0 is loaded (so a bad file is refused all the same) but
    not applied. Changing the text encoder's adapters clears the prompt-embedding cache.
    """
    adapters = {adapter_name(spec) for spec in loras}
    if len(adapters) < len(loras):
        raise LoraError(f"the same LoRA file is asked for twice: {', '.join(spec.name for spec in loras)}")
    state = model.cache.setdefault("loras", _Adapters())
    wanted = tuple((adapter_name(spec), float(spec.weight)) for spec in loras if spec.weight != 0)
    # Outside inference mode: peft's adapter parameters must stay usable (and removable) after this batch.
    with torch.inference_mode(False), torch.no_grad():
        for spec in loras:
            if adapter_name(spec) not in state.unet | state.text_encoder:
                _load(model, spec, state)
                state.active = None  # newly wrapped layers start with the new adapter active
        if wanted == state.active:
            return
        unet = getattr(model.unet, "eager", model.unet)
        on_unet = [(name, weight) for name, weight in wanted if name in state.unet]
        on_text = [(name, weight) for name, weight in wanted if name in state.text_encoder]
        if on_unet:
            unet.enable_lora()
            unet.set_adapters([name for name, _ in on_unet], [weight for _, weight in on_unet])
        elif state.unet:
            unet.disable_lora()
        if on_text:
            enable_lora_for_text_encoder(model.text_encoder)
            set_adapters_for_text_encoder(
                [name for name, _ in on_text], model.text_encoder, [weight for _, weight in on_text]
            )
        elif state.text_encoder:
            disable_lora_for_text_encoder(model.text_encoder)
    if state.active is None or on_text != [(n, w) for n, w in state.active if n in state.text_encoder]:
        model.cache.pop("prompt_embeds", None)  # embeddings of the old text encoder (generator.pipeline)
    if unet is not model.unet:
        model.unet.eager_only = bool(on_unet)  # the compiled graphs hold the UNet without LoRA
    state.active = wanted


def unload_all(model: LoadedModel) -> None:
    """Remove every LoRA layer from the model (their memory with them); the next `activate` loads files again."""
    state = model.cache.pop("loras", None)
    if state is None:
        return
    unet = getattr(model.unet, "eager", model.unet)
    if state.unet:
        unet.unload_lora()
    if state.text_encoder:  # as diffusers' unload_lora_weights does for a transformers text encoder
        recurse_remove_peft_layers(model.text_encoder)
        if getattr(model.text_encoder, "peft_config", None) is not None:
            del model.text_encoder.peft_config
            model.text_encoder._hf_peft_config_loaded = None
        model.cache.pop("prompt_embeds", None)
    if unet is not model.unet:
        model.unet.eager_only = False


def _load(model: LoadedModel, spec: LoraSpec, state: _Adapters) -> None:
    """Check the file (hash, base model) and load it as adapter `adapter_name(spec)`, as diffusers'
    `StableDiffusionPipeline.load_lora_weights` does: the same state dict, alphas, metadata and LoraConfig."""
    info = read_lora_info(spec.path)
    if info.sha256 != spec.sha256:
        raise LoraError(
            f"LoRA {spec.name!r} ({spec.path}) has sha256 {info.sha256}, not {spec.sha256} as registered: "
            "the file changed since"
        )
    check_compatible(info, model.path, name=spec.name)
    name = adapter_name(spec)
    unet = getattr(model.unet, "eager", model.unet)
    try:  # safetensors only: a LoRA file is never unpickled
        state_dict, alphas, metadata = StableDiffusionLoraLoaderMixin.lora_state_dict(
            spec.path, use_safetensors=True, return_lora_metadata=True
        )
        if info.format == "peft":  # a bare UNet adapter, as peft's get_peft_model_state_dict names it
            state_dict = {f"unet.{key.removeprefix('base_model.model.')}": v for key, v in state_dict.items()}
        if any(key.startswith("unet.") for key in state_dict):
            StableDiffusionLoraLoaderMixin.load_lora_into_unet(
                state_dict, alphas, unet, adapter_name=name, metadata=metadata
            )
            state.unet.add(name)
        if any(key.startswith("text_encoder.") for key in state_dict):
            StableDiffusionLoraLoaderMixin.load_lora_into_text_encoder(
                state_dict, alphas, model.text_encoder, adapter_name=name, metadata=metadata
            )
            state.text_encoder.add(name)
    except (ValueError, RuntimeError, KeyError) as error:
        _delete(model, name, state)
        raise LoraError(f"LoRA {spec.name!r} ({spec.path}) does not fit model {model.name!r}: {error}") from error
    if name not in state.unet | state.text_encoder:
        raise LoraError(f"LoRA {spec.name!r} ({spec.path}) has no layers for this model's UNet or text encoder")


def _delete(model: LoadedModel, name: str, state: _Adapters) -> None:
    """Remove adapter `name` wherever a failed load left it."""
    unet = getattr(model.unet, "eager", model.unet)
    if name in getattr(unet, "peft_config", {}):
        unet.delete_adapters(name)
    if name in (getattr(model.text_encoder, "peft_config", None) or {}):
        delete_adapter_layers(model.text_encoder, name)
    state.unet.discard(name)
    state.text_encoder.discard(name)
    state.active = None
