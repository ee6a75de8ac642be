"""The project's own latent-diffusion loop: CLIP text encoder → UNet denoising loop → VAE decoder.

It matches diffusers' `StableDiffusionPipeline` on the same components, seed and scheduler, and
adds what a job service needs: several requests batched into one forward pass, each image with
its own seed, a per-step callback for progress, cancel, previews and intermediate latents, and
PNGs that carry their parameters.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from PIL import Image

from generator.limits import MAX_IMAGES_PER_REQUEST, MAX_SEED, MAX_SIDE
from generator.loading import LoadedModel
from generator.pngmeta import png_bytes
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
    the loop then uses them, with the same negative prompts, from the next step on.
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


StepCallback = Callable[[StepState], None]


def resolve_request(model: LoadedModel, request: GenerationRequest) -> GenerationRequest:
    """Fill defaults, draw a seed if needed and check every field; raise ValueError before any compute."""
    defaults = model.defaults
    resolved = replace(
        request,
        width=defaults.width if request.width is None else request.width,
        height=defaults.height if request.height is None else request.height,
        steps=defaults.steps if request.steps is None else request.steps,
        guidance_scale=defaults.guidance_scale if request.guidance_scale is None else request.guidance_scale,
        scheduler=defaults.scheduler if request.scheduler is None else request.scheduler,
        seed=random.SystemRandom().randrange(2**32) if request.seed is None else request.seed,
    )

    if not isinstance(resolved.prompt, str) or not resolved.prompt.strip():
        raise ValueError("prompt must be a non-empty string")
    if not isinstance(resolved.negative_prompt, str):
        raise ValueError("negative_prompt must be a string")
    for name in ("prompt", "negative_prompt"):
        text = getattr(resolved, name)
        tokens = len(model.tokenizer(text, truncation=False).input_ids) - 2
        if tokens > model.max_prompt_tokens:
            raise ValueError(
                f"{name} is {tokens} tokens long; this model's tokenizer takes at most "
                f"{model.max_prompt_tokens} (longer prompts are rejected, not truncated)"
            )

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
    return resolved


def batch_key(request: GenerationRequest) -> tuple:
    """Requests with equal keys can share one denoising loop (one scheduler, one latent shape)."""
    return (request.width, request.height, request.steps, request.scheduler)


@torch.inference_mode()
def generate(
    model: LoadedModel,
    requests: list[GenerationRequest],
    *,
    callback: StepCallback | None = None,
) -> list[GenerationResult]:
    """Run compatible requests (same size, steps and scheduler) together in one batched loop."""
    # 1. Check inputs
    if not requests:
        raise ValueError("generate needs at least one request")
    requests = [resolve_request(model, r) for r in requests]
    if len({batch_key(r) for r in requests}) > 1:
        raise ValueError("requests in one batch must share width, height, steps and scheduler")
    first = requests[0]
    device, dtype = model.device, model.dtype

    seeds = [r.seed + i for r in requests for i in range(r.num_images)]
    image_slices, start = [], 0
    for r in requests:
        image_slices.append(slice(start, start + r.num_images))
        start += r.num_images
    # Latents, guidance and scheduler arithmetic stay in fp32 whatever the weights' dtype: only the UNet's
    # input is cast, so bf16 or fp16 weights do not add rounding to every step's update.
    guidance = torch.tensor(
        [r.guidance_scale for r in requests for _ in range(r.num_images)], device=device, dtype=torch.float32
    ).view(-1, 1, 1, 1)  # (N, 1, 1, 1)
    rescale = torch.tensor(
        [r.guidance_rescale for r in requests for _ in range(r.num_images)], device=device, dtype=torch.float32
    ).view(-1, 1, 1, 1)
    guidance_embedding = model.unet.config.time_cond_proj_dim is not None
    use_cfg = not guidance_embedding and any(r.guidance_scale > 1 for r in requests)

    # 2. Encode prompts: (N, T, D) conditional, and unconditional for classifier-free guidance
    text_embeds = encode_prompts([r.prompt for r in requests for _ in range(r.num_images)], model)
    prompt_embeds = text_embeds
    if use_cfg:
        negative_embeds = encode_prompts([r.negative_prompt for r in requests for _ in range(r.num_images)], model)
        prompt_embeds = torch.cat([negative_embeds, text_embeds])  # (2N, T, D)

    # 3. Scheduler and timesteps
    scheduler = make_scheduler(first.scheduler, model.scheduler_config)
    scheduler.set_timesteps(first.steps, device=device)
    timesteps = scheduler.timesteps

    # 4. Initial noise: each image from its own seed on a CPU generator, so results do not depend on the device
    factor = model.vae_scale_factor
    shape = (1, model.unet.config.in_channels, first.height // factor, first.width // factor)
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    latents = torch.cat([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators])
    latents = latents.to(device=device) * scheduler.init_noise_sigma  # (N, C, H/f, W/f), fp32

    # 5. Extra step arguments: ancestral and DDPM-like schedulers draw noise from the same generators
    step_kwargs = {"generator": generators} if "generator" in _step_parameters(scheduler) else {}
    timestep_cond = None
    if guidance_embedding:  # guidance-distilled (LCM) UNets take w as an embedding instead of CFG
        w = (guidance.view(-1) - 1).float()
        timestep_cond = guidance_scale_embedding(w, model.unet.config.time_cond_proj_dim).to(device, dtype)

    # 6. Denoising loop
    canceled: set[int] = set()
    for i, t in enumerate(timesteps):
        model_input = torch.cat([latents] * 2) if use_cfg else latents  # (2N or N, C, h, w)
        scaled = scheduler.scale_model_input(model_input, t)
        model_input = scaled.to(dtype)
        noise_pred = model.unet(
            model_input, t, encoder_hidden_states=prompt_embeds, timestep_cond=timestep_cond, return_dict=False
        )[0].float()
        if use_cfg:
            noise_uncond, noise_text = noise_pred.chunk(2)
            noise_pred = noise_uncond + guidance * (noise_text - noise_uncond)
            if (rescale > 0).any():
                noise_pred = rescale_noise_cfg(noise_pred, noise_text, rescale)
        stepped = scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)
        latents = stepped[0]

        if callback is not None:  # x̂0 is worked out only for a callback: no cost to plain generation
            x_t = scaled[-len(latents) :].float()  # the (text half of the) UNet's input
            if len(stepped) > 1 and stepped[1] is not None:  # the scheduler's own pred_original_sample
                denoised = stepped[1].float()
            else:
                denoised = _denoised(scheduler, x_t, noise_pred, t, model.scheduler_config)
            state = StepState(
                i + 1, len(timesteps), int(t), latents, image_slices, model, canceled,
                model_input=x_t, noise_pred=noise_pred, denoised=denoised, prompt_embeds=text_embeds,
            )
            callback(state)
            if len(canceled) == len(requests):
                break
            if state.prompt_embeds is not text_embeds:  # the callback conditions the next steps on other prompts
                if state.prompt_embeds.shape != text_embeds.shape:
                    raise ValueError(
                        f"prompt_embeds must keep the shape {tuple(text_embeds.shape)}, "
                        f"got {tuple(state.prompt_embeds.shape)}"
                    )
                text_embeds = state.prompt_embeds.to(device=device, dtype=text_embeds.dtype)
                prompt_embeds = torch.cat([negative_embeds, text_embeds]) if use_cfg else text_embeds

    # 7. Decode the images of requests still running
    results = [GenerationResult(request=r, canceled=k in canceled) for k, r in enumerate(requests)]
    keep = [k for k in range(len(requests)) if k not in canceled]
    if not keep:
        return results
    rows = torch.cat([torch.arange(image_slices[k].start, image_slices[k].stop) for k in keep])
    pixels = decode_latents(model, latents[rows.to(device)])  # (M, H, W, 3) uint8

    # 8. PNGs with manifests
    settings = scheduler_settings(scheduler)
    row = 0
    for k in keep:
        r = requests[k]
        for index in range(r.num_images):
            image = Image.fromarray(pixels[row])
            row += 1
            manifest = build_manifest(model, r, index=index, scheduler_settings=settings)
            results[k].images.append(
                GeneratedImage(index, r.seed + index, r.width, r.height, image, png_bytes(image, manifest), manifest)
            )
    return results


def generate_one(
    model: LoadedModel, request: GenerationRequest, *, callback: StepCallback | None = None
) -> GenerationResult:
    return generate(model, [request], callback=callback)[0]


def encode_prompts(prompts: list[str], model: LoadedModel) -> torch.Tensor:
    """(len(prompts), T, D) last hidden states in the model's dtype, as `generate` conditions on them; each distinct
    prompt is encoded once."""
    unique = list(dict.fromkeys(prompts))
    tokens = model.tokenizer(
        unique, padding="max_length", max_length=model.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    mask = None
    if getattr(model.text_encoder.config, "use_attention_mask", False):
        mask = tokens.attention_mask.to(model.device)
    hidden = model.text_encoder(tokens.input_ids.to(model.device), attention_mask=mask)[0]  # (U, T, D)
    hidden = hidden.to(model.dtype)
    return hidden[torch.tensor([unique.index(p) for p in prompts], device=model.device)]


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


def decode_latents(model: LoadedModel, latents: torch.Tensor) -> list:
    """Decode (N, C, h, w) latents to a uint8 array (N, H, W, 3), with the VAE or the model's tiny decoder."""
    latents = latents.to(model.dtype)
    if model.decoder == "tiny":  # trained on the UNet's latent space directly (scaling factor included)
        images = model.tiny_vae.decode(latents, return_dict=False)[0]  # (N, 3, H, W)
    else:
        images = model.vae.decode(latents / model.vae.config.scaling_factor, return_dict=False)[0]  # (N, 3, H, W)
    images = (images / 2 + 0.5).clamp(0, 1)
    array = images.cpu().permute(0, 2, 3, 1).float().numpy()
    return (array * 255).round().astype("uint8")


def build_manifest(model: LoadedModel, request: GenerationRequest, *, index: int, scheduler_settings: dict) -> dict:
    """Everything needed to make this image again (no timestamps, so it is reproducible byte for byte)."""
    import diffusers
    import transformers

    fields = asdict(request)
    fields.pop("num_images")
    return {
        "format": "generator-manifest/1",
        **fields,
        "seed": request.seed + index,
        "request_seed": request.seed,
        "index": index,
        "model": {"name": model.name, "hash": model.content_hash},
        "scheduler_settings": scheduler_settings,
        "dtype": str(model.dtype).removeprefix("torch."),
        "decoder": model.decoder,
        "fast_path": model.cache.get("fast_path", {}),  # channels-last and compiled buckets change low bits
        "device_type": model.device.type,
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },
    }


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
    posterior = model.vae.encode(image.to(model.device, model.dtype)).latent_dist
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
