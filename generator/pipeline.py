"""The project's own latent-diffusion loop: CLIP text encoder → UNet denoising loop → VAE decoder.

It matches diffusers' `StableDiffusionPipeline` on the same components, seed and scheduler, and
adds what a job service needs: several requests batched into one forward pass, each image with
its own seed, a per-step callback for progress, cancel, previews and intermediate latents, and
PNGs that carry their parameters.

The same loop makes every mode (`request_mode`):
- txt2img: from noise, as `StableDiffusionPipeline`;
- img2img (SDEdit, Meng et al. 2022): the init image's latents noised to the first timestep of a schedule cut to
  `strength` of its steps, as `StableDiffusionImg2ImgPipeline`;
- inpaint: as `StableDiffusionInpaintPipeline` (a 9-input-channel UNet sees the mask and the masked image's
  latents; a 4-channel one has the kept region blended back from the noised original after every step), with
  A1111's mask blur, "inpaint only the masked area" and paste-back of the kept pixels.
Any mode may add A1111's variation seed (`subseed`, `subseed_strength`), the two-pass hires fix (`hires_*`) and a
tiled VAE (`vae_tile_size`).

SDXL folders (`model.is_sdxl`) run through the same loop, as `StableDiffusionXLPipeline` and its img2img and inpaint
pipelines condition them: the prompt embeds are both text encoders' penultimate hidden states side by side, and every
UNet call also gets `added_cond_kwargs` (text_encoder_2's pooled, projected embedding and the time ids: original
size, crop's top left (0, 0), target size, all the pass's own size). An empty negative prompt is zeros where
model_index.json sets `force_zeros_for_empty_prompt`, and an fp16 SDXL VAE runs in fp32 (`force_upcast`). Not for
SDXL (refused with a ValueError): prompt weighting syntax, prompts longer than one window, and LoRAs.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch
from PIL import Image, ImageFilter

from generator import deepcache, images, limits, lora
from generator.limits import MAX_IMAGES_PER_REQUEST, MAX_SEED, MAX_SIDE
from generator.loading import LoadedModel
from generator.lora import LoraSpec
from generator.lora_info import check_lora_weight
from generator.pngmeta import png_bytes
from generator.prompts import check_prompt, chunk_tokens, encode_weighted, is_plain, uses_syntax, weights_record
from generator.schedulers import SCHEDULERS, make_scheduler, scheduler_error, scheduler_settings


@dataclass(frozen=True)
class GenerationRequest:
    """What a user asks for. `None` fields take the model's defaults; `seed=None` draws one."""

    prompt: str
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    guidance_rescale: float = 0.0
    scheduler: str | None = None
    seed: int | None = None
    num_images: int = 1
    # img2img and inpainting: the caller brings both to exactly width × height (generator.images.fit / fit_mask).
    init_image: Image.Image | None = field(default=None, repr=False)  # RGB
    mask_image: Image.Image | None = field(default=None, repr=False)  # "L": white = repaint
    strength: float = 0.75  # (0, 1]: the share of the steps that run from the noised init image
    mask_blur: int = 4  # Gaussian blur radius of the mask, pixels
    inpaint_full_res: bool = False  # repaint only the mask's box (+ padding), scaled to width × height
    inpaint_full_res_padding: int = 32
    # Variations: image i's start noise is slerp(noise(seed + i), noise(subseed + i), subseed_strength).
    subseed: int | None = None
    subseed_strength: float = 0.0
    # The hires fix: a second pass at width × height × hires_scale, img2img from the upscaled first pass.
    hires_scale: float = 1.0  # 1: off
    hires_upscaler: str = "latent"  # limits.HIRES_UPSCALERS
    hires_steps: int = 0  # 0: the same as steps
    hires_strength: float = 0.5
    vae_tile_size: int = 0  # pixels; 0: the VAE encodes and decodes whole images
    # Fewer UNet evaluations (limits.FIELDS): guidance only on the first `guidance_cutoff` share of the steps, and
    # the deep blocks recomputed every `deep_cache_interval` steps (1: every step, the exact loop).
    guidance_cutoff: float = 1.0
    deep_cache_interval: int = 1
    # LoRAs applied to the model for this request, in order, each at its weight (generator.lora).
    loras: tuple[LoraSpec, ...] = ()

    @property
    def mode(self) -> str:
        return request_mode(self)


def request_mode(request: GenerationRequest) -> str:
    """The mode, "txt2img", "img2img" or "inpaint", from the images the request carries."""
    return limits.request_mode(request.init_image is not None, request.mask_image is not None)


@dataclass
class GeneratedImage:
    index: int  # position within its request
    seed: int
    width: int
    height: int
    image: Image.Image
    png: bytes  # with the `parameters` and `generator_manifest` text chunks
    manifest: dict


@dataclass
class GenerationResult:
    request: GenerationRequest  # fully resolved: no None fields, seed included
    images: list[GeneratedImage] = field(default_factory=list)
    canceled: bool = False


@dataclass
class StepState:
    """What the per-step callback sees after each denoising step.

    Besides reading, a callback may `cancel` requests, and may condition the steps that follow on other
    prompt embeddings by assigning `prompt_embeds` (same shape; e.g. `encode_prompts(other_prompts, model)`):
    the loop then uses them, with the same negative prompts, from the next step on. (SDXL: the pooled embeddings
    and time ids stay the request's.)
    """

    step: int  # steps done so far, 1..total
    total: int
    timestep: int
    latents: torch.Tensor  # (N, C, H/f, W/f): every image of every request, in request order, after this step
    image_slices: list[slice]  # request i's images are latents[image_slices[i]]
    model: LoadedModel
    canceled: set[int]
    # The UNet's input of this step (N, C, H/f, W/f), fp32: the latents before the step as
    # `scale_model_input` made them, so that every scheduler's x_t reads as √ᾱ·x0 + √(1-ᾱ)·ε.
    model_input: torch.Tensor | None = None
    # The guided model output of this step (N, C, H/f, W/f), fp32: noise (ε) for epsilon-prediction models, v for
    # v-prediction ones, as the scheduler received it (classifier-free guidance and guidance rescale applied).
    noise_pred: torch.Tensor | None = None
    # The predicted clean latents x̂0 of this step (N, C, H/f, W/f), fp32: the scheduler's own
    # `pred_original_sample` where its step returns one, else computed from ᾱ at this timestep
    # (`predict_original`); None for a scheduler with neither. Decode with `decode_latents`.
    denoised: torch.Tensor | None = None
    # The conditional prompt embeddings (N, T, D) the next step will use; assign to change them (see above).
    prompt_embeds: torch.Tensor | None = None

    def cancel(self, request_index: int | None = None) -> None:
        """Stop request `request_index` (all requests when None); its result has no images."""
        indices = range(len(self.image_slices)) if request_index is None else [request_index]
        self.canceled.update(indices)

    def preview_images(self) -> list[Image.Image]:
        """Cheap previews of the current latents (a linear map to RGB, no VAE decode)."""
        return latents_to_preview(self.model, self.latents)

    def preview(self, request_index: int, max_side: int = 256) -> Image.Image:
        """A cheap preview of request `request_index`'s first image: its predicted clean image (`denoised`, else
        the latents) through the linear latent → RGB map, scaled up towards the image's size, at most `max_side`."""
        source = self.denoised if self.denoised is not None else self.latents
        image = latents_to_preview(self.model, source[self.image_slices[request_index]][:1])[0]
        scale = min(self.model.vae_scale_factor, max_side / max(image.size))
        if scale <= 1:
            return image
        return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)


StepCallback = Callable[[StepState], None]

MIN_TILE_LATENTS = 8  # a VAE tile is at least 8 latents a side, so its overlap (a quarter) is at least 2


def resolve_request(model: LoadedModel, request: GenerationRequest) -> GenerationRequest:
    """Fill defaults, draw a seed if needed and check every field; raise ValueError before any compute."""
    defaults = model.defaults
    # An init image brings its own size: the caller fitted it to the size it wants (generator.images.fit).
    init_size = request.init_image.size if isinstance(request.init_image, Image.Image) else (None, None)
    default_width = init_size[0] or defaults.width
    default_height = init_size[1] or defaults.height
    resolved = replace(
        request,
        width=default_width if request.width is None else request.width,
        height=default_height if request.height is None else request.height,
        steps=defaults.steps if request.steps is None else request.steps,
        guidance_scale=defaults.guidance_scale if request.guidance_scale is None else request.guidance_scale,
        scheduler=defaults.scheduler if request.scheduler is None else request.scheduler,
        seed=random.SystemRandom().randrange(2**32) if request.seed is None else request.seed,
    )

    if not isinstance(resolved.prompt, str) or not resolved.prompt.strip():
        raise ValueError("prompt must be a non-empty string")
    if not isinstance(resolved.negative_prompt, str):
        raise ValueError("negative_prompt must be a string")
    for name in ("prompt", "negative_prompt"):  # weighting syntax, and at most MAX_CHUNKS windows (never truncated)
        check_prompt(getattr(resolved, name), model.tokenizer, name=name)
        if model.is_sdxl:
            _check_sdxl_prompt(model, getattr(resolved, name), name)

    factor = model.vae_scale_factor
    for name in ("width", "height"):
        value = getattr(resolved, name)
        if not _is_int(value) or not factor <= value <= MAX_SIDE or value % factor:
            raise ValueError(f"{name} must be a multiple of {factor} between {factor} and {MAX_SIDE}, got {value!r}")

    train_steps = model.scheduler_config.get("num_train_timesteps", 1000)
    if not _is_int(resolved.steps) or not 1 <= resolved.steps <= train_steps:
        raise ValueError(f"steps must be an integer from 1 to {train_steps}, got {resolved.steps!r}")
    if (
        not _is_number(resolved.guidance_scale)
        or not math.isfinite(resolved.guidance_scale)
        or resolved.guidance_scale < 0
    ):
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {resolved.guidance_scale!r}")
    if not _is_number(resolved.guidance_rescale) or not 0 <= resolved.guidance_rescale <= 1:
        raise ValueError(f"guidance_rescale must be a number from 0 to 1, got {resolved.guidance_rescale!r}")
    if not _is_int(resolved.num_images) or not 1 <= resolved.num_images <= MAX_IMAGES_PER_REQUEST:
        raise ValueError(
            f"num_images must be an integer from 1 to {MAX_IMAGES_PER_REQUEST}, got {resolved.num_images!r}"
        )
    if not _is_int(resolved.seed) or not 0 <= resolved.seed <= MAX_SEED - resolved.num_images + 1:
        raise ValueError(
            f"seed must be an integer from 0 to {MAX_SEED - resolved.num_images + 1}, got {resolved.seed!r}"
        )
    if resolved.scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {resolved.scheduler!r}; known schedulers: {', '.join(SCHEDULERS)}")
    # The web process's torch-free check first, so both refuse a scheduler the model cannot run with one message.
    if message := scheduler_error(resolved.scheduler, resolved.steps, model.scheduler_config):
        raise ValueError(message)
    try:  # some schedulers cap the step count (lcm: its original_inference_steps)
        scheduler = make_scheduler(resolved.scheduler, model.scheduler_config)
        scheduler.set_timesteps(resolved.steps)
        if int(scheduler.timesteps.max()) >= train_steps:  # e.g. ddim's steps_offset at 1000 steps
            raise ValueError(f"its timesteps would pass the model's {train_steps} training timesteps")
    except ValueError as error:
        raise ValueError(f"scheduler {resolved.scheduler!r} cannot run {resolved.steps} steps: {error}") from error
    _check_image_fields(model, resolved)
    _check_loras(resolved)
    if model.is_sdxl and resolved.loras:  # generator.lora loads into text_encoder and the UNet only
        raise ValueError("LoRAs are not supported for SDXL models yet")
    return resolved


def _check_sdxl_prompt(model: LoadedModel, text: str, name: str) -> None:
    """SDXL prompts are encoded as StableDiffusionXLPipeline encodes them: one window, no weighting (both would
    need each text encoder's windows weighted and the pooled embedding chosen, which nothing here checks yet)."""
    if uses_syntax(text):
        raise ValueError(f"{name}: prompt weighting syntax ((word:1.2), [word], BREAK) is not supported for SDXL")
    for tokenizer in (model.tokenizer, model.tokenizer_2):
        if len(chunk_tokens(text, tokenizer)) > 1:
            raise ValueError(
                f"{name} is longer than one window of {tokenizer.model_max_length - 2} tokens; SDXL models take "
                "one window (longer prompts are rejected, not truncated)"
            )


def _check_loras(request: GenerationRequest) -> None:
    """LoraSpecs with weights in generator.lora_info.LORA_WEIGHT_RANGE, each file once. Whether a file fits the
    model is checked when it is loaded (generator.lora.activate), still before any compute."""
    loras = request.loras
    if not isinstance(loras, tuple | list) or not all(isinstance(spec, LoraSpec) for spec in loras):
        raise ValueError(f"loras must be a tuple of generator.lora.LoraSpec, got {loras!r}")
    for spec in loras:
        check_lora_weight(spec.weight, name=spec.name)
    if len({spec.sha256 for spec in loras}) < len(loras):
        raise ValueError(f"each LoRA may appear once; got {', '.join(spec.name for spec in loras)}")


def _check_image_fields(model: LoadedModel, request: GenerationRequest) -> None:
    """The img2img, inpainting, variation, hires and tiling fields, against limits.FIELDS and the images."""
    for name in (
        "strength", "mask_blur", "inpaint_full_res_padding", "subseed_strength", "hires_scale", "hires_strength",
        "guidance_cutoff",
    ):
        _check_range(name, getattr(request, name))
    spec = limits.FIELDS["deep_cache_interval"]
    if not _is_int(request.deep_cache_interval) or not spec.min <= request.deep_cache_interval <= spec.max:
        raise ValueError(
            f"deep_cache_interval must be an integer from {spec.min} to {spec.max}, got {request.deep_cache_interval!r}"
        )
    if request.deep_cache_interval > 1:
        deepcache.check_supported(getattr(model.unet, "eager", model.unet))
    if not isinstance(request.inpaint_full_res, bool):
        raise ValueError(f"inpaint_full_res must be true or false, got {request.inpaint_full_res!r}")
    if request.subseed is not None and (
        not _is_int(request.subseed) or not 0 <= request.subseed <= MAX_SEED - request.num_images + 1
    ):
        raise ValueError(
            f"subseed must be an integer from 0 to {MAX_SEED - request.num_images + 1}, got {request.subseed!r}"
        )
    if request.hires_upscaler not in limits.HIRES_UPSCALERS:
        raise ValueError(
            f"hires_upscaler must be one of {', '.join(limits.HIRES_UPSCALERS)}, got {request.hires_upscaler!r}"
        )
    train_steps = model.scheduler_config.get("num_train_timesteps", 1000)
    if not _is_int(request.hires_steps) or not 0 <= request.hires_steps <= train_steps:
        raise ValueError(f"hires_steps must be an integer from 0 to {train_steps}, got {request.hires_steps!r}")
    factor = model.vae_scale_factor
    tile = request.vae_tile_size
    if not _is_int(tile) or (tile and (tile % factor or tile < MIN_TILE_LATENTS * factor)):
        raise ValueError(
            f"vae_tile_size must be 0 (no tiling) or a multiple of {factor} of at least {MIN_TILE_LATENTS * factor}, "
            f"got {tile!r}"
        )
    mode = request_mode(request)  # raises for a mask without an init image
    for name, wanted in (("init_image", "RGB"), ("mask_image", "L")):
        image = getattr(request, name)
        if image is None:
            continue
        if not isinstance(image, Image.Image) or image.mode != wanted:
            raise ValueError(f"{name} must be a PIL image in mode {wanted!r}")
        if image.size != (request.width, request.height):
            raise ValueError(
                f"{name} is {image.width} × {image.height}; it must be width × height = "
                f"{request.width} × {request.height} (generator.images.fit brings it there)"
            )
    if message := limits.hires_error(
        request.width, request.height, request.hires_scale, factor=factor, mode=mode
    ):
        raise ValueError(f"hires_scale: {message}")
    if mode == "inpaint" and model.unet.config.in_channels not in (4, 9):
        raise ValueError(f"inpainting needs a UNet with 4 or 9 input channels, not {model.unet.config.in_channels}")


def _check_range(name: str, value) -> None:
    spec = limits.FIELDS[name]
    low, high = spec.min, spec.max
    ok = _is_number(value) and math.isfinite(value) and (value > low if spec.min_exclusive else value >= low)
    if not ok or (high is not None and value > high):
        interval = f"{'(' if spec.min_exclusive else '['}{low}, {high}]"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")


def batch_key(request: GenerationRequest) -> tuple:
    """Requests with equal keys can share one denoising loop (one scheduler, one latent shape).

    The loop runs one truncated schedule and at most two passes for the whole batch, so the mode, the strength and
    the hires and tiling settings must match, and so must the LoRAs, which are the model's for the whole batch.
    Everything else is per row: each request's own init image, mask, mask blur, masked-area crop and variation seed,
    so jobs with different input images do batch together.
    A txt2img request's key is unchanged from before these modes (its extra fields are at their defaults).
    """
    key = (request.width, request.height, request.steps, request.scheduler)
    mode = request_mode(request)
    if mode != "txt2img":
        key += (mode, request.strength)
    if request.hires_scale != 1:
        key += ("hires", request.hires_scale, request.hires_upscaler, request.hires_steps, request.hires_strength)
    if request.vae_tile_size:
        key += ("tiles", request.vae_tile_size)
    if request.guidance_cutoff != 1 or request.deep_cache_interval != 1:
        key += ("evaluations", request.guidance_cutoff, request.deep_cache_interval)
    if request.loras:  # the batch's LoRAs are the model's while it runs: files (by hash), order and weights
        key += ("loras", tuple((spec.sha256, spec.weight) for spec in request.loras))
    return key


@torch.inference_mode()
def generate(
    model: LoadedModel,
    requests: list[GenerationRequest],
    *,
    callback: StepCallback | None = None,
) -> list[GenerationResult]:
    """Run compatible requests (same `batch_key`: size, steps, scheduler, mode ...) together in one batched loop."""
    # 1. Check inputs
    if not requests:
        raise ValueError("generate needs at least one request")
    requests = [resolve_request(model, r) for r in requests]
    if len({batch_key(r) for r in requests}) > 1:
        raise ValueError(
            "requests in one batch must share width, height, steps and scheduler, and mode, strength, hires, tiling, "
            "guidance_cutoff, deep_cache_interval and LoRAs"
        )
    if len({prompt_windows(model, r) for r in requests}) > 1:
        raise ValueError("requests in one batch must have prompts of as many windows (prompt_windows)")
    first = requests[0]
    device = model.device
    lora.activate(model, list(first.loras))  # every batch sets its own, none included: nothing stays from the last

    seeds = [r.seed + i for r in requests for i in range(r.num_images)]
    image_slices, start = [], 0
    for r in requests:
        image_slices.append(slice(start, start + r.num_images))
        start += r.num_images
    batch = _Batch(model, requests, image_slices, callback)

    # 2. Encode prompts: (N, T, D) conditional, and unconditional for classifier-free guidance, in one call so that
    # both have the same T (a prompt of fewer windows than the longest is padded with the empty prompt's)
    positives = [r.prompt for r in requests for _ in range(r.num_images)]
    negatives = [r.negative_prompt for r in requests for _ in range(r.num_images)] if batch.use_cfg else []
    embeds, pooled = encode_prompts_pooled(positives + negatives, model)  # (N or 2N, T, D); SDXL: (N or 2N, P)
    if pooled is not None and model.pipeline_config.get("force_zeros_for_empty_prompt"):
        # An empty negative prompt conditions on zeros, not on the empty prompt's embeddings, as
        # StableDiffusionXLPipeline does for negative_prompt=None
        zeros = torch.tensor([False] * len(positives) + [text == "" for text in negatives], device=embeds.device)
        embeds = embeds.masked_fill(zeros[:, None, None], 0)
        pooled = pooled.masked_fill(zeros[:, None], 0)
    batch.text_embeds = embeds[: len(positives)]
    if batch.use_cfg:
        batch.negative_embeds = embeds[len(positives) :]
    if pooled is not None:
        batch.pooled_embeds = pooled[: len(positives)]
        batch.negative_pooled_embeds = pooled[len(positives) :] if batch.use_cfg else None

    # 3. The inputs of img2img and inpainting, one row per image (a request's rows share its image and mask)
    inputs = [_prepare_inputs(r) for r in requests]
    rows = [inputs[k] for k, r in enumerate(requests) for _ in range(r.num_images)]

    # 4. The first pass, at width × height. Each image draws from its own seed's CPU generator, so results do not
    # depend on the device or on the batch; ancestral and DDPM-like schedulers draw their step noise from them too.
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    mode = first.mode
    pixels = None if mode == "txt2img" else torch.cat([row.pixels for row in rows]).to(device)
    mask = None if mode != "inpaint" else torch.cat([row.mask for row in rows]).to(device)
    latents = batch.run_pass(
        first.width, first.height, first.steps, None if mode == "txt2img" else first.strength,
        generators, pixels=pixels, mask=mask,
    )

    # 5. The hires fix: upscale the first pass and denoise it again (img2img) at the larger size
    if first.hires_scale != 1 and not batch.all_canceled:
        width, height = limits.hires_size(first.width, first.height, first.hires_scale, model.vae_scale_factor)
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]  # as A1111: the pass's own noise
        if first.hires_upscaler == "lanczos":
            decoded = decode_latents(model, latents, tile_size=first.vae_tile_size)
            upscaled = [Image.fromarray(a).resize((width, height), Image.Resampling.LANCZOS) for a in decoded]
            pixels = torch.cat([_image_tensor(image) for image in upscaled]).to(device)
            start_latents = None
        else:
            interpolation = "nearest" if first.hires_upscaler == "latent-nearest" else "bilinear"
            size = (height // model.vae_scale_factor, width // model.vae_scale_factor)
            start_latents = torch.nn.functional.interpolate(latents, size=size, mode=interpolation)
            pixels = None
        latents = batch.run_pass(
            width, height, first.hires_steps or first.steps, first.hires_strength, generators,
            pixels=pixels, start_latents=start_latents,
        )

    # 6. Decode the images of requests still running
    results = [GenerationResult(request=r, canceled=k in batch.canceled) for k, r in enumerate(requests)]
    keep = [k for k in range(len(requests)) if k not in batch.canceled]
    if not keep:
        return results
    kept_rows = torch.cat([torch.arange(image_slices[k].start, image_slices[k].stop) for k in keep])
    decoded = decode_latents(model, latents[kept_rows.to(device)], tile_size=first.vae_tile_size)  # (M, H, W, 3)

    # 7. PNGs with manifests; an inpainted image is pasted back over its original through the blurred mask
    settings = scheduler_settings(batch.scheduler)
    row = 0
    for k in keep:
        r = requests[k]
        for index in range(r.num_images):
            image = Image.fromarray(decoded[row])
            row += 1
            if mode == "inpaint":
                image = inputs[k].paste_back(image)
            manifest = build_manifest(model, r, index=index, scheduler_settings=settings)
            results[k].images.append(
                GeneratedImage(
                    index, r.seed + index, image.width, image.height, image, png_bytes(image, manifest), manifest
                )
            )
    return results


@dataclass
class _Inputs:
    """One request's init image and mask as the loop uses them, and how its output goes back over the original."""

    pixels: torch.Tensor  # (1, 3, H, W) in [-1, 1]: the init image (its masked area's box, for inpaint_full_res)
    mask: torch.Tensor | None = None  # (1, 1, H, W) in {0, 1}: 1 = repaint; the blurred mask binarized at 1/2
    original: Image.Image | None = None  # the request's init image
    overlay: Image.Image | None = None  # "L": how much of the output shows over the original (255 = all)
    box: tuple[int, int, int, int] | None = None  # inpaint_full_res: where the repainted box goes back

    def paste_back(self, output: Image.Image) -> Image.Image:
        """A1111's overlay: the kept pixels are the original's exactly, blended into the output along the blur."""
        if self.box is not None:
            x1, y1, x2, y2 = self.box
            pasted = self.original.copy()
            pasted.paste(images.fit(output, x2 - x1, y2 - y1, "crop_and_resize"), (x1, y1))
            output = pasted
        return Image.composite(output, self.original, self.overlay)


def _prepare_inputs(request: GenerationRequest) -> _Inputs | None:
    if request.init_image is None:
        return None
    if request.mask_image is None:
        return _Inputs(_image_tensor(request.init_image))
    # Blur first: the box, the binary mask the model sees and the overlay all follow the blurred edge, as in A1111.
    blurred = request.mask_image
    if request.mask_blur:
        blurred = blurred.filter(ImageFilter.GaussianBlur(request.mask_blur))
    image, mask = request.init_image, blurred
    box = None
    if request.inpaint_full_res:
        box = images.crop_region(blurred, request.inpaint_full_res_padding, request.width, request.height)
    if box is not None:
        image = images.fit(image.crop(box), request.width, request.height, "resize_and_fill")
        mask = images.fit_mask(blurred.crop(box), request.width, request.height, "resize_and_fill")
        overlay = blurred
    else:
        # A1111 doubles the blurred mask for the overlay of a whole-image inpaint: all of what the model was asked
        # to repaint (mask ≥ 1/2) shows, and the blur fades out only outside it.
        overlay = blurred.point(lambda value: min(255, 2 * value))
    binary = torch.from_numpy((np.asarray(mask, dtype=np.float32) / 255 >= 0.5).astype(np.float32))
    return _Inputs(_image_tensor(image), binary[None, None], request.init_image, overlay, box)


def _image_tensor(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 in [-1, 1], as diffusers' VaeImageProcessor makes it."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None] * 2 - 1


class _Batch:
    """The state that the passes of one `generate` call share: prompts, guidance, callback, cancels, step count."""

    def __init__(self, model: LoadedModel, requests: list[GenerationRequest], image_slices, callback):
        self.model, self.requests, self.image_slices, self.callback = model, requests, image_slices, callback
        device = model.device
        # Latents, guidance and scheduler arithmetic stay in fp32 whatever the weights' dtype: only the UNet's
        # input is cast, so bf16 or fp16 weights do not add rounding to every step's update.
        self.guidance = torch.tensor(
            [r.guidance_scale for r in requests for _ in range(r.num_images)], device=device, dtype=torch.float32
        ).view(-1, 1, 1, 1)  # (N, 1, 1, 1)
        self.rescale = torch.tensor(
            [r.guidance_rescale for r in requests for _ in range(r.num_images)], device=device, dtype=torch.float32
        ).view(-1, 1, 1, 1)
        guidance_embedding = model.unet.config.time_cond_proj_dim is not None
        self.use_cfg = not guidance_embedding and any(r.guidance_scale > 1 for r in requests)
        self.timestep_cond = None
        if guidance_embedding:  # guidance-distilled (LCM) UNets take w as an embedding instead of CFG
            w = (self.guidance.view(-1) - 1).float()
            self.timestep_cond = guidance_scale_embedding(w, model.unet.config.time_cond_proj_dim).to(
                device, model.dtype
            )
        self.text_embeds: torch.Tensor | None = None
        self.negative_embeds: torch.Tensor | None = None
        self.pooled_embeds: torch.Tensor | None = None  # SDXL: (N, P)
        self.negative_pooled_embeds: torch.Tensor | None = None
        self.canceled: set[int] = set()
        self.scheduler = None  # the last pass's, for the manifest
        # Each pass's steps as run, so the callback's `total` counts both passes from the first step on.
        first = requests[0]
        self.total = len(self.timesteps(first.steps, None if first.mode == "txt2img" else first.strength)[1])
        if first.hires_scale != 1:
            self.total += len(self.timesteps(first.hires_steps or first.steps, first.hires_strength)[1])
        self.done = 0

    def timesteps(self, steps: int, strength: float | None, device=None):
        """A fresh scheduler and the timesteps a pass runs: all from noise, else the schedule's last `strength`
        share as diffusers' get_timesteps (a scheduler may run more timesteps than steps: PNDM adds one)."""
        scheduler = make_scheduler(self.requests[0].scheduler, self.model.scheduler_config)
        scheduler.set_timesteps(steps, device=device)
        timesteps = scheduler.timesteps
        if strength is not None:
            t_start = (steps - _steps_run(steps, strength)) * scheduler.order
            timesteps = timesteps[t_start:]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(t_start)
        return scheduler, timesteps

    @property
    def all_canceled(self) -> bool:
        return len(self.canceled) == len(self.requests)

    @property
    def prompt_embeds(self) -> torch.Tensor:
        if self.use_cfg:
            return torch.cat([self.negative_embeds, self.text_embeds])  # (2N, T, D)
        return self.text_embeds

    def added_cond_kwargs(self, width: int, height: int, guided: bool) -> dict | None:
        """SDXL's added conditioning for a UNet call at width × height, rows as `prompt_embeds` (guided) or
        `text_embeds`: {"text_embeds": (2N or N, P), "time_ids": (2N or N, K)}. None for SD 1.x."""
        if self.pooled_embeds is None:
            return None
        negative_ids, time_ids = add_time_ids(self.model, width, height)  # (1, K) each
        n = len(self.pooled_embeds)
        if not guided:
            return {"text_embeds": self.pooled_embeds, "time_ids": time_ids.repeat(n, 1)}
        return {
            "text_embeds": torch.cat([self.negative_pooled_embeds, self.pooled_embeds]),
            "time_ids": torch.cat([negative_ids.repeat(n, 1), time_ids.repeat(n, 1)]),
        }

    def run_pass(
        self,
        width: int,
        height: int,
        steps: int,
        strength: float | None,
        generators: list[torch.Generator],
        *,
        pixels: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        start_latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One denoising pass: from noise (strength None), or from `pixels` / `start_latents` noised to `strength`.

        With `mask` (inpainting) the pass follows StableDiffusionInpaintPipeline, otherwise
        StableDiffusionImg2ImgPipeline (or StableDiffusionPipeline from noise), draw for draw from `generators`.
        """
        model, first = self.model, self.requests[0]
        device, dtype, factor = model.device, model.dtype, model.vae_scale_factor
        tile = first.vae_tile_size
        scheduler, timesteps = self.timesteps(steps, strength, device)
        self.scheduler = scheduler
        shape = (1, model.vae.config.latent_channels, height // factor, width // factor)
        n = len(generators)
        unet_channels = model.unet.config.in_channels
        inpaint = mask is not None
        pure_noise = strength is None or (inpaint and strength == 1)  # the inpaint pipeline's is_strength_max

        # Start latents. The draws follow diffusers': the init image's latent sample, then the noise, then (on a
        # 9-channel UNet) the masked image's latent sample, each image from its own generator.
        image_latents = start_latents
        if pixels is not None and (not pure_noise or (inpaint and unet_channels == 4)):
            image_latents = encode_pixels(model, pixels, generators, tile_size=tile)
        noise = self.start_noise(shape, generators).to(device)
        if pure_noise:
            latents = noise * scheduler.init_noise_sigma  # (N, C, H/f, W/f), fp32
        else:
            latents = scheduler.add_noise(image_latents, noise, timesteps[:1].repeat(n))

        # Image conditioning of a 9-channel (inpainting) UNet: the mask at latent size and the masked image's latents.
        # Without a mask it is asked to paint everywhere: mask 1, the masked image all grey (A1111's choice).
        condition = None
        if unet_channels == 9:
            if inpaint:
                masked = encode_pixels(model, pixels * (mask < 0.5), generators, tile_size=tile)
                latent_mask = torch.nn.functional.interpolate(mask, size=shape[2:])
            else:
                grey = torch.zeros((n, 3, height, width), device=device)
                masked = encode_pixels(model, grey, None, tile_size=tile)
                latent_mask = torch.ones((n, 1, *shape[2:]), device=device)
            condition = torch.cat([latent_mask, masked], dim=1)
            if self.use_cfg:
                condition = torch.cat([condition] * 2)
            condition = condition.to(dtype)
        # A 4-channel UNet inpaints by putting the known region back, noised to the next timestep, after each step.
        keep_mask = None
        if inpaint and unet_channels == 4:
            keep_mask = 1 - torch.nn.functional.interpolate(mask, size=shape[2:])

        step_kwargs = {"generator": generators} if "generator" in _step_parameters(scheduler) else {}
        # Guidance runs on the first `guidance_cutoff` share of the steps (at least one); the rest run the prompts'
        # half alone, a batch of N rows instead of 2N.
        guided_steps = math.ceil(first.guidance_cutoff * len(timesteps)) if self.use_cfg else 0
        # SDXL: pooled embeds and time ids (None for SD 1.x, whose UNet calls take no added_cond_kwargs at all)
        added = {guided: self.added_cond_kwargs(width, height, guided) for guided in (True, False)}
        features = None  # DeepCache: the deep features of the last full step
        for i, t in enumerate(timesteps):
            guided = i < guided_steps
            model_input = torch.cat([latents] * 2) if guided else latents  # (2N or N, C, h, w)
            scaled = scheduler.scale_model_input(model_input, t)
            model_input = scaled.to(dtype)
            if condition is not None:
                model_input = torch.cat([model_input, condition if guided else condition[-n:]], dim=1)
            embeds = self.prompt_embeds if guided else self.text_embeds
            extra = {} if added[guided] is None else {"added_cond_kwargs": added[guided]}
            if first.deep_cache_interval == 1:
                noise_pred = model.unet(
                    model_input, t, encoder_hidden_states=embeds, timestep_cond=self.timestep_cond, return_dict=False,
                    **extra,
                )[0]
            elif i % first.deep_cache_interval == 0:
                noise_pred, features = _unet_full(model.unet, model_input, t, embeds, self.timestep_cond, **extra)
            else:
                noise_pred = _unet_shallow(model.unet, model_input, t, embeds, features, self.timestep_cond, **extra)
            noise_pred = noise_pred.float()
            if guided:
                noise_uncond, noise_text = noise_pred.chunk(2)
                noise_pred = noise_uncond + self.guidance * (noise_text - noise_uncond)
                if (self.rescale > 0).any():
                    noise_pred = rescale_noise_cfg(noise_pred, noise_text, self.rescale)
            stepped = scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)
            latents = stepped[0]
            if keep_mask is not None:
                known = image_latents
                if i < len(timesteps) - 1:
                    known = scheduler.add_noise(image_latents, noise, timesteps[i + 1 : i + 2])
                latents = keep_mask * known + (1 - keep_mask) * latents
            self.done += 1
            if self.callback is not None:
                self.report(scheduler, scaled, stepped, latents, noise_pred, t)
                if self.all_canceled:
                    break
        return latents

    def start_noise(self, shape: tuple, generators: list[torch.Generator]) -> torch.Tensor:
        """(N, C, h, w) fp32 on the CPU: each image's noise from its generator, slerped towards its variation seed's."""
        noise = torch.cat([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators])
        rows = [(r, i) for r in self.requests for i in range(r.num_images)]
        for row, (r, i) in enumerate(rows):
            if r.subseed is None or r.subseed_strength == 0:  # strength 0 draws nothing: exactly today's noise
                continue
            sub = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(r.subseed + i), dtype=torch.float32)
            noise[row] = slerp(r.subseed_strength, noise[row], sub[0])
        return noise

    def report(self, scheduler, scaled, stepped, latents, noise_pred, t) -> None:
        """Call the callback with this step's StepState; take up its cancels and new prompt embeddings."""
        x_t = scaled[-len(latents) :].float()  # the (text half of the) UNet's input
        if len(stepped) > 1 and stepped[1] is not None:  # the scheduler's own pred_original_sample
            denoised = stepped[1].float()
        else:  # x̂0 is worked out only for a callback: no cost to plain generation
            denoised = _denoised(scheduler, x_t, noise_pred, t, self.model.scheduler_config)
        state = StepState(
            self.done, self.total, int(t), latents, self.image_slices, self.model, self.canceled,
            model_input=x_t, noise_pred=noise_pred, denoised=denoised, prompt_embeds=self.text_embeds,
        )
        self.callback(state)
        if state.prompt_embeds is not self.text_embeds:  # the callback conditions the next steps on other prompts
            if state.prompt_embeds.shape != self.text_embeds.shape:
                raise ValueError(
                    f"prompt_embeds must keep the shape {tuple(self.text_embeds.shape)}, "
                    f"got {tuple(state.prompt_embeds.shape)}"
                )
            self.text_embeds = state.prompt_embeds.to(device=self.model.device, dtype=self.text_embeds.dtype)


def _unet_full(unet, sample, t, embeds, timestep_cond, **extra):
    """DeepCache's full step (generator/deepcache.py): (output, features); compiled on the fast path.
    `extra`: SDXL's `added_cond_kwargs`, or nothing."""
    if hasattr(unet, "full"):  # fastpath.BucketedUNet
        return unet.full(sample, t, embeds, timestep_cond=timestep_cond, **extra)
    return deepcache.unet_full(unet, sample, t, embeds, timestep_cond=timestep_cond, **extra)


def _unet_shallow(unet, sample, t, embeds, features, timestep_cond, **extra):
    """DeepCache's shallow step on the last full step's `features`."""
    if hasattr(unet, "shallow"):
        return unet.shallow(sample, t, embeds, features, timestep_cond=timestep_cond, **extra)
    return deepcache.unet_shallow(unet, sample, t, embeds, features, timestep_cond=timestep_cond, **extra)


# StableDiffusionXLImg2ImgPipeline's defaults, for a UNet trained with an aesthetic score in its time ids (the refiner)
AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE = 6.0, 2.5


def add_time_ids(model: LoadedModel, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's micro-conditioning, (1, K) for the negative and the positive rows, in the model's dtype.

    As StableDiffusionXLPipeline: original size + crop's top left + target size, (h, w) + (0, 0) + (h, w), the image
    itself (no crop, no upscale). A UNet trained with aesthetic scores (`requires_aesthetics_score` in
    model_index.json) takes original size + crop + score instead, as StableDiffusionXLImg2ImgPipeline gives it;
    only there do the negative rows differ."""
    size, crop = (height, width), (0, 0)
    if model.pipeline_config.get("requires_aesthetics_score"):
        positive, negative = size + crop + (AESTHETIC_SCORE,), size + crop + (NEGATIVE_AESTHETIC_SCORE,)
    else:
        positive = negative = size + crop + size
    as_tensor = lambda ids: torch.tensor([ids], dtype=model.dtype, device=model.device)  # noqa: E731
    return as_tensor(negative), as_tensor(positive)


def _steps_run(steps: int, strength: float | None) -> int:
    """The steps a pass runs: all from noise, else diffusers' int(steps × strength), at least one."""
    if strength is None:
        return steps
    return max(1, min(int(steps * strength), steps))


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of two noise tensors, flattened, as A1111's variation seeds (val 0: low; 1: high).

    Two Gaussian noises of many dimensions are nearly orthogonal and of nearly equal norm, so slerp keeps the
    mix's norm (a lerp would shrink it, and the image would lose contrast). Nearly parallel ones are lerped.
    """
    a, b = low.flatten().double(), high.flatten().double()
    dot = torch.dot(a / a.norm(), b / b.norm()).clamp(-1, 1)
    if dot > 0.9995:
        mixed = (1 - val) * a + val * b
    else:
        omega = torch.acos(dot)
        mixed = (torch.sin((1 - val) * omega) * a + torch.sin(val * omega) * b) / torch.sin(omega)
    return mixed.view_as(low).to(low.dtype)


def prompt_windows(model: LoadedModel, request: GenerationRequest) -> tuple[int, int]:
    """How many windows of model_max_length tokens the prompt and the negative prompt take (generator.prompts).

    `generate` pads every row's conditioning to the batch's longest, so requests share a batch only with equal
    counts: otherwise a plain prompt's pixels would depend on a long prompt batched with it."""
    prompt, negative = (chunk_tokens(text, model.tokenizer) for text in (request.prompt, request.negative_prompt))
    return len(prompt), len(negative)


def generate_one(
    model: LoadedModel, request: GenerationRequest, *, callback: StepCallback | None = None
) -> GenerationResult:
    return generate(model, [request], callback=callback)[0]


def encode_prompts(prompts: list[str], model: LoadedModel) -> torch.Tensor:
    """(len(prompts), T, D) last hidden states in the model's dtype, as `generate` conditions on them.

    Each prompt is encoded alone, so its embedding never depends on what else is in the batch, and the last
    PROMPT_CACHE_SIZE prompts' embeddings are kept on the model: the empty negative prompt, and prompts that come
    again, cost no text-encoder call (a real share of a small job's time to its first step). Whatever changes the
    text encoder's weights must clear `model.cache["prompt_embeds"]`.

    A weighted or long prompt takes several windows of model_max_length tokens (generator.prompts); rows of fewer
    windows than the longest are padded with the empty prompt's, as A1111 pads its unconditional prompt, so that
    every row has the same T.

    SDXL: both text encoders' penultimate hidden states side by side (D = D1 + D2); `encode_prompts_pooled` gives
    their pooled embeddings too.
    """
    return encode_prompts_pooled(prompts, model)[0]


def encode_prompts_pooled(prompts: list[str], model: LoadedModel) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`encode_prompts`' (len(prompts), T, D) and, for SDXL, text_encoder_2's pooled, projected embeddings
    (len(prompts), P); None for SD 1.x. The cache keeps both, so a cached SDXL prompt costs no encoder call either."""
    kept = model.cache.setdefault("prompt_embeds", OrderedDict())  # prompt → ((1, T, D), (1, P) or None)
    rows = {}
    for prompt in dict.fromkeys(prompts):
        if prompt in kept:
            kept.move_to_end(prompt)
        else:
            if model.is_sdxl:
                kept[prompt] = _encode_prompt_sdxl(prompt, model)
            else:
                kept[prompt] = (_encode_prompt(prompt, model), None)
            if len(kept) > PROMPT_CACHE_SIZE:
                kept.popitem(last=False)
        rows[prompt] = kept[prompt]
    embeds = [rows[prompt][0] for prompt in prompts]  # (1, T_i, D) each
    pooled = torch.cat([rows[prompt][1] for prompt in prompts]) if model.is_sdxl else None  # (N, P)
    tokens = max(e.shape[1] for e in embeds)
    if any(e.shape[1] < tokens for e in embeds):  # SD 1.x only: an SDXL prompt takes one window
        empty = encode_prompts([""], model)  # (1, L, D): one window
        embeds = [torch.cat([e] + [empty] * ((tokens - e.shape[1]) // empty.shape[1]), dim=1) for e in embeds]
    return torch.cat(embeds), pooled  # (len(prompts), T, D)


PROMPT_CACHE_SIZE = 64


def _encode_prompt(prompt: str, model: LoadedModel) -> torch.Tensor:
    """(1, T, D). A prompt with no weighting syntax that fits one window goes the way every prompt always went, so
    its pixels are what they were; any other is encoded window by window (generator.prompts)."""
    if not is_plain(prompt, model.tokenizer):
        return encode_weighted(prompt, model.tokenizer, model.text_encoder, model.device, model.dtype)
    length = model.tokenizer.model_max_length
    tokens = model.tokenizer([prompt], padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    mask = None
    if getattr(model.text_encoder.config, "use_attention_mask", False):
        mask = tokens.attention_mask.to(model.device)
    return model.text_encoder(tokens.input_ids.to(model.device), attention_mask=mask)[0].to(model.dtype)  # (1, T, D)


def _encode_prompt_sdxl(prompt: str, model: LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, T, D1 + D2) and (1, P), as StableDiffusionXLPipeline.encode_prompt: each encoder reads its own tokenizer's
    ids (no attention mask) and gives its penultimate layer's hidden states; text_encoder_2 also gives the pooled
    embedding, its end token's state through its projection (`text_embeds`)."""
    hidden = []
    for tokenizer, text_encoder in ((model.tokenizer, model.text_encoder), (model.tokenizer_2, model.text_encoder_2)):
        length = tokenizer.model_max_length
        ids = tokenizer([prompt], padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        output = text_encoder(ids.input_ids.to(model.device), output_hidden_states=True)
        hidden.append(output.hidden_states[-2])  # (1, L, D_i)
    pooled = output.text_embeds  # (1, P): text_encoder_2's
    return torch.cat(hidden, dim=-1).to(model.dtype), pooled.to(model.dtype)


def alpha_bar_at(alphas_cumprod: torch.Tensor, timestep: float) -> float:
    """ᾱ at a possibly fractional timestep, interpolating log σ as diffusers' sigma schedulers do."""
    alpha_bar = alphas_cumprod.double().clamp(min=2**-24).cpu().numpy()  # ᾱ = 0 (zero SNR) would make σ infinite
    log_sigma = 0.5 * np.log((1 - alpha_bar) / alpha_bar)
    value = np.interp(float(timestep), np.arange(len(alpha_bar)), log_sigma)
    return float(1 / (1 + np.exp(2 * value)))


def predict_original(sample: torch.Tensor, output: torch.Tensor, alpha_bar: float, prediction_type: str):
    """x̂0 from the UNet's input x_t and output (DDIM, Song et al. 2021, eq. 12; v: Salimans & Ho 2022)."""
    a, s = alpha_bar**0.5, (1 - alpha_bar) ** 0.5
    if prediction_type == "epsilon":
        return (sample - s * output) / a
    if prediction_type == "v_prediction":
        return a * sample - s * output
    if prediction_type == "sample":
        return output
    raise ValueError(f"unknown prediction_type {prediction_type!r}; known: epsilon, v_prediction, sample")


def _denoised(scheduler, x_t: torch.Tensor, output: torch.Tensor, t, scheduler_config: dict) -> torch.Tensor | None:
    """x̂0 for a scheduler whose step does not return it (DPM-Solver, UniPC, PNDM), from ᾱ at timestep `t`."""
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if alphas_cumprod is None:
        return None
    alpha_bar = alpha_bar_at(alphas_cumprod, float(t))
    return predict_original(x_t, output, alpha_bar, scheduler_config.get("prediction_type", "epsilon"))


def rescale_noise_cfg(noise_cfg: torch.Tensor, noise_text: torch.Tensor, rescale: torch.Tensor) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
    §3.4): bring the guided prediction's std back to the text prediction's, mixing by `rescale` (N,1,1,1)."""
    dims = list(range(1, noise_text.ndim))
    std_text = noise_text.std(dim=dims, keepdim=True)
    std_cfg = noise_cfg.std(dim=dims, keepdim=True)
    rescaled = noise_cfg * (std_text / std_cfg)
    return rescale * rescaled + (1 - rescale) * noise_cfg


def guidance_scale_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of guidance strengths `w` (N,) → (N, dim), as LCM-distilled UNets expect."""
    w = w * 1000.0
    half = dim // 2
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    angles = w[:, None] * frequencies[None, :]  # (N, half)
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        embedding = torch.nn.functional.pad(embedding, (0, 1))
    return embedding


def decode_latents(model: LoadedModel, latents: torch.Tensor, *, tile_size: int = 0) -> list:
    """Decode (N, C, h, w) latents to a uint8 array (N, H, W, 3), with the VAE or the model's tiny decoder.

    `tile_size` (pixels, a multiple of the VAE factor; 0: whole images) decodes overlapping tiles and blends them.
    """
    latents = latents.to(model.dtype if model.decoder == "tiny" else model.vae_dtype)
    if model.decoder == "tiny":  # trained on the UNet's latent space directly (scaling factor included)
        decode = lambda z: model.tiny_vae.decode(z, return_dict=False)[0]  # noqa: E731
    else:
        decode = lambda z: model.vae.decode(z / model.vae.config.scaling_factor, return_dict=False)[0]  # noqa: E731
    if tile_size:
        factor = model.vae_scale_factor
        tile = tile_size // factor
        images = _tiled(decode, latents, tile, max(1, tile // 4), factor)  # (N, 3, H, W)
    else:
        images = decode(latents)  # (N, 3, H, W)
    images = (images / 2 + 0.5).clamp(0, 1)
    array = images.cpu().permute(0, 2, 3, 1).float().numpy()
    return (array * 255).round().astype("uint8")


def encode_pixels(
    model: LoadedModel, pixels: torch.Tensor, generators: list[torch.Generator] | None, *, tile_size: int = 0
) -> torch.Tensor:
    """(N, 3, H, W) pixels in [-1, 1] → (N, C, H/f, W/f) fp32 latents, scaled as the UNet sees them.

    With `generators` each image's latents are a sample of the VAE's posterior drawn from its own generator, as
    diffusers' img2img and inpaint pipelines draw them (`retrieve_latents`); without, the posterior's mean.
    `tile_size` (pixels; 0: whole images) encodes overlapping tiles and blends the posteriors' means and spreads.
    """
    factor = model.vae_scale_factor

    def encode(part: torch.Tensor) -> torch.Tensor:  # (n, 2C, h, w): mean and standard deviation
        posterior = model.vae.encode(part.to(model.vae_dtype)).latent_dist
        return torch.cat([posterior.mean, posterior.std], dim=1)

    if tile_size:
        overlap = max(factor, tile_size // 4 // factor * factor)
        moments = _tiled(encode, pixels, tile_size, overlap, 1 / factor)
    else:
        moments = encode(pixels)
    mean, std = moments.chunk(2, dim=1)
    if generators is None:
        latents = mean
    else:
        shape = (1, *mean.shape[1:])
        eps = torch.cat([torch.randn(shape, generator=g, dtype=mean.dtype) for g in generators]).to(mean.device)
        latents = mean + std * eps  # DiagonalGaussianDistribution.sample, one generator per image
    return latents.float() * model.vae.config.scaling_factor


def _tiled(function, x: torch.Tensor, tile: int, overlap: int, scale: float) -> torch.Tensor:
    """`function` (a VAE decoder or encoder, output `scale` × the input's size) over overlapping tiles of x.

    Each tile's output is weighted by a ramp across its overlaps with its neighbours (1 inside, falling to 0
    towards a neighbouring tile's side, not at the image's border) and the weighted outputs are summed and
    normalised: a seam fades across the overlap instead of showing where one tile's receptive field stopped.
    """
    height, width = x.shape[-2:]
    if height <= tile and width <= tile:
        return function(x)
    out = weight = None
    for top in _tile_starts(height, tile, overlap):
        for left in _tile_starts(width, tile, overlap):
            part = function(x[..., top : top + tile, left : left + tile])
            ph, pw = part.shape[-2:]
            ramp_h = _ramp(ph, round(overlap * scale), top > 0, top + tile < height)
            ramp_w = _ramp(pw, round(overlap * scale), left > 0, left + tile < width)
            w = (ramp_h[:, None] * ramp_w[None, :]).to(part.device, part.dtype)
            if out is None:
                size = (*part.shape[:2], round(height * scale), round(width * scale))
                out = torch.zeros(size, device=part.device, dtype=torch.float32)
                weight = torch.zeros(size[-2:], device=part.device, dtype=torch.float32)
            y, x0 = round(top * scale), round(left * scale)
            out[..., y : y + ph, x0 : x0 + pw] += (part * w).float()
            weight[y : y + ph, x0 : x0 + pw] += w.float()
    return (out / weight).to(part.dtype)


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, tile - overlap))
    return starts + [size - tile]  # the last tile ends at the border (its overlap may be larger)


def _ramp(length: int, overlap: int, fade_start: bool, fade_end: bool) -> torch.Tensor:
    """A tile's blending weight along one axis: 1, ramping linearly over `overlap` at the sides it shares."""
    ramp = torch.ones(length, dtype=torch.float64)
    steps = (torch.arange(overlap, dtype=torch.float64) + 0.5) / overlap  # never 0: every pixel has some weight
    if fade_start:
        ramp[:overlap] = torch.minimum(ramp[:overlap], steps)
    if fade_end:
        ramp[length - overlap :] = torch.minimum(ramp[length - overlap :], steps.flip(0))
    return ramp


def build_manifest(model: LoadedModel, request: GenerationRequest, *, index: int, scheduler_settings: dict) -> dict:
    """Everything needed to make this image again (no timestamps, so it is reproducible byte for byte).

    The fields of img2img, inpainting, variations, the hires fix and tiling appear only where a request uses them,
    so a txt2img manifest reads as it always has; a missing one is at its default. Input images are recorded by
    their pixels' hashes (generator.images.image_sha256).
    """
    import diffusers
    import transformers

    values = {f.name: getattr(request, f.name) for f in fields(request)}
    base = {name: values[name] for name in _TXT2IMG_FIELDS}
    mode = request_mode(request)
    extra = {}
    for name in ("prompt", "negative_prompt"):  # the fragments and weights a prompt with weighting syntax parsed to
        if (weights := weights_record(values[name])) is not None:
            extra[f"{name}_weights"] = weights
    if mode != "txt2img":
        extra.update(mode=mode, strength=request.strength, init_image_sha256=images.image_sha256(request.init_image))
    if mode == "inpaint":
        extra.update(
            mask_sha256=images.image_sha256(request.mask_image),
            mask_blur=request.mask_blur,
            inpaint_full_res=request.inpaint_full_res,
            inpaint_full_res_padding=request.inpaint_full_res_padding,
        )
    if request.subseed is not None and request.subseed_strength > 0:
        extra.update(
            subseed=request.subseed + index, request_subseed=request.subseed, subseed_strength=request.subseed_strength
        )
    if request.hires_scale != 1:
        hires = ("hires_scale", "hires_upscaler", "hires_steps", "hires_strength")
        extra.update({name: values[name] for name in hires})
    if request.vae_tile_size:
        extra["vae_tile_size"] = request.vae_tile_size
    if request.guidance_cutoff != 1:
        extra["guidance_cutoff"] = request.guidance_cutoff
    if request.deep_cache_interval != 1:
        extra["deep_cache_interval"] = request.deep_cache_interval
    if request.loras:  # by hash: a registry name may later point at another file
        extra["loras"] = [{"name": s.name, "sha256": s.sha256, "weight": s.weight} for s in request.loras]
    return {
        "format": "generator-manifest/1",
        **base,
        **extra,
        "seed": request.seed + index,
        "request_seed": request.seed,
        "index": index,
        "model": {"name": model.name, "hash": model.content_hash},
        "scheduler_settings": scheduler_settings,
        "dtype": str(model.dtype).removeprefix("torch."),
        "decoder": model.decoder,
        "fast_path": model.cache.get("fast_path", {}),  # channels-last and compiled buckets change low bits
        **({"engine": model.cache["engine"]} if "engine" in model.cache else {}),  # a worker's choice, and why
        "device_type": model.device.type,
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },
    }


_TXT2IMG_FIELDS = (
    "prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "guidance_rescale", "scheduler", "seed",
)


def latents_to_preview(model: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
    """Map latents to RGB with a per-model linear fit (latent channels → RGB), at latent resolution."""
    matrix = model.cache.get("preview_matrix")
    if matrix is None:
        matrix = model.cache["preview_matrix"] = fit_preview_matrix(model)
    flat = latents.float().permute(0, 2, 3, 1)  # (N, h, w, C)
    flat = torch.cat([flat, torch.ones_like(flat[..., :1])], dim=-1)  # (N, h, w, C+1): bias column
    rgb = (flat @ matrix.to(flat.device)).clamp(-1, 1)  # (N, h, w, 3)
    array = ((rgb + 1) * 127.5).round().byte().cpu().numpy()
    return [Image.fromarray(a) for a in array]


@torch.inference_mode()
def fit_preview_matrix(model: LoadedModel, blocks: int = 16, seed: int = 0) -> torch.Tensor:
    """Least-squares (C+1, 3) map from latents to RGB, fitted once per model by encoding flat colour blocks."""
    factor = model.vae_scale_factor
    generator = torch.Generator("cpu").manual_seed(seed)
    colours = torch.rand((1, 3, blocks, blocks), generator=generator) * 2 - 1  # (1, 3, b, b) in [-1, 1]
    image = colours.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)  # (1, 3, b*f, b*f)
    posterior = model.vae.encode(image.to(model.device, model.vae_dtype)).latent_dist
    latents = posterior.mode().float().cpu() * model.vae.config.scaling_factor  # (1, C, b, b)
    x = latents[0].flatten(1).T  # (b*b, C)
    x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # (b*b, C+1)
    y = colours[0].flatten(1).T  # (b*b, 3)
    return torch.linalg.lstsq(x, y).solution  # (C+1, 3)


def _step_parameters(scheduler) -> set[str]:
    import inspect

    return set(inspect.signature(scheduler.step).parameters)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
