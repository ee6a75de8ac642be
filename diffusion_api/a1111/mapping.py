"""A1111's request fields → the native job fields, and a job → A1111's answer (info, infotext, PNG text chunk).

Clients such as webuiapi send every field with its default. A field of a feature this project lacks is accepted
with a value that means "off" (UNSUPPORTED) and refused with any other; an unknown field is refused, so nothing a
client asks for is silently ignored.
"""

import base64
import re
import secrets
import struct
import zlib

from PIL import ImageOps
from rest_framework import serializers

from diffusion_api.jobs import catalog, inputs
from diffusion_api.jobs.serializers import (
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
)
from generator.torch_free import limits

# A1111 sampler name (and its aliases, as A1111 lists them) → the project's scheduler, by schedule type. A sampler
# runs with the schedule A1111 calls `Automatic` (the sampler's own); DPM++ 2M also with `Karras`.
SAMPLERS = {
    "Euler a": (["k_euler_a", "k_euler_ancestral"], {"automatic": "euler_a"}),
    "Euler": (["k_euler"], {"automatic": "euler"}),
    "DPM++ 2M": (["k_dpmpp_2m"], {"automatic": "dpmpp_2m", "karras": "dpmpp_2m_karras"}),
    "DDIM": (["ddim"], {"automatic": "ddim"}),
    "DDPM": (["ddpm"], {"automatic": "ddpm"}),
    "PLMS": (["plms"], {"automatic": "pndm"}),
    "UniPC": (["unipc"], {"automatic": "unipc"}),
    "LCM": (["k_lcm"], {"automatic": "lcm"}),
}
# Before A1111 1.9 the schedule was part of the sampler's name.
LEGACY_SAMPLERS = {"DPM++ 2M Karras": ("DPM++ 2M", "karras"), "k_dpmpp_2m_ka": ("DPM++ 2M", "karras")}
# A1111 schedule types: (name, label). Only these two are offered.
SCHEDULE_TYPES = [("automatic", "Automatic"), ("karras", "Karras")]
# The project's scheduler → (A1111 sampler, schedule type label): how a job is named back in info and infotext.
SAMPLER_OF = {
    scheduler: (sampler, dict(SCHEDULE_TYPES)[schedule])
    for sampler, (_aliases, schedules) in SAMPLERS.items()
    for schedule, scheduler in schedules.items()
}

# A1111's hires upscalers with an equivalent here → the native hires_upscaler.
HR_UPSCALERS = {"Latent": "latent", "Latent (nearest)": "latent-nearest", "Lanczos": "lanczos"}
HR_UPSCALER_NAMES = {native: name for name, native in HR_UPSCALERS.items()}
LATENT_UPSCALE_MODES = ["Latent", "Latent (nearest)"]
# A1111's resize_mode numbers: 0 just resize, 1 crop and resize, 2 resize and fill (3, latent upscale: none here).
RESIZE_MODES = {0: "just_resize", 1: "crop_and_resize", 2: "resize_and_fill"}

# Features this project lacks: the values that mean "off" (A1111's defaults, and what webuiapi sends).
UNSUPPORTED = {
    "styles": ([], None),
    "seed_resize_from_h": (-1, 0, None),
    "seed_resize_from_w": (-1, 0, None),
    "restore_faces": (False, None),
    "tiling": (False, None),
    "eta": (None, 1.0),
    "s_min_uncond": (0, None),
    "s_churn": (0, None),
    "s_tmax": (0, None),
    "s_tmin": (0, None),
    "s_noise": (1, None),
    "script_name": (None, ""),
    "script_args": ([], None),
    "alwayson_scripts": ({}, None),
    "refiner_checkpoint": (None, ""),
    "refiner_switch_at": (None, 0),
    "firstpass_image": (None, ""),
    "infotext": (None, ""),
    "comments": (None, {}),
    # txt2img
    "firstphase_width": (0, None),
    "firstphase_height": (0, None),
    "hr_checkpoint_name": (None, ""),
    "hr_additional_modules": (None, []),
    "hr_cfg": (None,),
    "hr_distilled_cfg": (None,),
    "distilled_cfg_scale": (None,),
    # img2img
    "initial_noise_multiplier": (None, 1, 1.0),
    "latent_mask": (None, ""),
    "include_init_images": (False, None),
    "mask_round": (True, None),
    "inpainting_fill": (0, 1, None),  # 0 fill and 1 original both start from the init image's latents here
}
# Accepted with any value: they change nothing here (saving: every job is kept anyway; image_cfg_scale only acts
# on instruct-pix2pix models, as in A1111; the task id and restoring settings have no meaning without global state).
IGNORED = {
    "do_not_save_samples",
    "do_not_save_grid",
    "save_images",
    "override_settings_restore_afterwards",
    "disable_extra_networks",
    "force_task_id",
    "image_cfg_scale",
}
COMMON_FIELDS = {
    "prompt",
    "negative_prompt",
    "seed",
    "subseed",
    "subseed_strength",
    "sampler_name",
    "sampler_index",
    "scheduler",
    "batch_size",
    "n_iter",
    "steps",
    "cfg_scale",
    "width",
    "height",
    "denoising_strength",
    "override_settings",
    "send_images",
}
TXT2IMG_FIELDS = {
    "enable_hr",
    "hr_scale",
    "hr_upscaler",
    "hr_second_pass_steps",
    "hr_resize_x",
    "hr_resize_y",
    "hr_sampler_name",
    "hr_scheduler",
    "hr_prompt",
    "hr_negative_prompt",
}
IMG2IMG_FIELDS = {
    "init_images",
    "mask",
    "resize_mode",
    "mask_blur",
    "mask_blur_x",
    "mask_blur_y",
    "inpainting_mask_invert",
    "inpaint_full_res",
    "inpaint_full_res_padding",
}
TXT2IMG_ONLY_UNSUPPORTED = {
    "firstphase_width",
    "firstphase_height",
    "hr_checkpoint_name",
    "hr_additional_modules",
    "hr_cfg",
    "hr_distilled_cfg",
}
IMG2IMG_ONLY_UNSUPPORTED = {
    "initial_noise_multiplier",
    "latent_mask",
    "include_init_images",
    "mask_round",
    "inpainting_fill",
}


class A1111Invalid(Exception):
    """Field errors in A1111's terms: {A1111 field (or "field.key"): [messages]}."""

    def __init__(self, errors: dict):
        super().__init__(errors)
        self.errors = errors


def _field(kind, **options):
    return kind(required=False, allow_null=True, **options)


class GenerationRequest(serializers.Serializer):
    """The types of the fields both txt2img and img2img map (None: the field's default)."""

    prompt = _field(StrictCharField, allow_blank=True, trim_whitespace=False)
    negative_prompt = _field(StrictCharField, allow_blank=True, trim_whitespace=False)
    seed = _field(StrictIntegerField, help_text="-1: drawn at random")
    subseed = _field(StrictIntegerField, help_text="-1: drawn at random when subseed_strength > 0")
    subseed_strength = _field(StrictFloatField)
    sampler_name = _field(StrictCharField, help_text="e.g. Euler a, Euler, DPM++ 2M, DDIM, PLMS, UniPC, LCM")
    sampler_index = _field(StrictCharField, help_text="deprecated: used when sampler_name is empty")
    scheduler = _field(StrictCharField, help_text="schedule type: Automatic, or Karras (DPM++ 2M)")
    batch_size = _field(StrictIntegerField, min_value=1)
    n_iter = _field(StrictIntegerField, min_value=1)
    steps = _field(StrictIntegerField)
    cfg_scale = _field(StrictFloatField)
    width = _field(StrictIntegerField)
    height = _field(StrictIntegerField)
    denoising_strength = _field(StrictFloatField)
    override_settings = serializers.DictField(required=False, allow_null=True, help_text="sd_model_checkpoint only")
    send_images = _field(StrictBooleanField)


class Txt2ImgRequest(GenerationRequest):
    enable_hr = _field(StrictBooleanField)
    hr_scale = _field(StrictFloatField)
    hr_upscaler = _field(StrictCharField, help_text="Latent, Latent (nearest) or Lanczos")
    hr_second_pass_steps = _field(StrictIntegerField)
    hr_resize_x = _field(StrictIntegerField)
    hr_resize_y = _field(StrictIntegerField)
    hr_sampler_name = _field(StrictCharField, allow_blank=True, help_text="empty or the first pass's sampler")
    hr_scheduler = _field(StrictCharField, allow_blank=True, help_text="empty or the first pass's schedule type")
    hr_prompt = _field(StrictCharField, allow_blank=True, trim_whitespace=False, help_text="empty or the prompt")
    hr_negative_prompt = _field(StrictCharField, allow_blank=True, trim_whitespace=False)


class Img2ImgRequest(GenerationRequest):
    init_images = serializers.ListField(
        child=StrictCharField(), required=False, allow_null=True, help_text="one image, base64 (raw or data: URI)"
    )
    mask = _field(StrictCharField, help_text="white = repaint (black with inpainting_mask_invert 1)")
    resize_mode = _field(StrictIntegerField, help_text="0 just resize, 1 crop and resize, 2 resize and fill")
    mask_blur = _field(StrictIntegerField)
    mask_blur_x = _field(StrictIntegerField)
    mask_blur_y = _field(StrictIntegerField)
    inpainting_mask_invert = _field(StrictIntegerField, help_text="1: black = repaint")
    inpaint_full_res = _field(StrictBooleanField, help_text="repaint the masked area's box only")
    inpaint_full_res_padding = _field(StrictIntegerField)


def sampler_names() -> list[dict]:
    """GET samplers: A1111's SamplerItem list."""
    return [
        {"name": name, "aliases": aliases, "options": {"scheduler": schedules["automatic"]}}
        for name, (aliases, schedules) in SAMPLERS.items()
    ]


def scheduler_for(sampler: str | None, schedule: str | None) -> str:
    """The project's scheduler for an A1111 sampler name (or alias) and schedule type; A1111Invalid if none."""
    sampler = sampler.strip()
    if sampler in LEGACY_SAMPLERS:
        sampler, implied = LEGACY_SAMPLERS[sampler]
        schedule = schedule if schedule and schedule.lower() not in ("automatic", "") else implied
    name = next(
        (n for n, (aliases, _) in SAMPLERS.items() if sampler.lower() in (n.lower(), *(a.lower() for a in aliases))),
        None,
    )
    if name is None:
        raise A1111Invalid({"sampler_name": [f"unknown sampler {sampler!r}; available: {', '.join(SAMPLERS)}"]})
    schedules = SAMPLERS[name][1]
    key = (schedule or "automatic").strip().lower()
    key = next((n for n, label in SCHEDULE_TYPES if key in (n, label.lower())), key)
    if key not in schedules:
        offered = ", ".join(dict(SCHEDULE_TYPES)[s] for s in schedules)
        raise A1111Invalid(
            {"scheduler": [f"sampler {name!r} runs here with schedule type {offered}, not {schedule!r}"]}
        )
    return schedules[key]


def model_title(name: str) -> str:
    return f"{name} [{model_hash(name)}]"


def model_hash(name: str) -> str:
    return catalog.model_version(name)[:10]


def model_for(value) -> str | None:
    """The model a `sd_model_checkpoint` names: a model name or a title `name [hash]`, in any case; None if none."""
    if not isinstance(value, str):
        return None
    wanted = re.sub(r"\s*\[[0-9a-f]*\]\s*$", "", value.strip()).lower()
    return next((name for name in catalog.model_names() if name.lower() == wanted), None)


# A1111's LoRA tag: <lora:name> or <lora:name:weight> (a third part, the text encoder's own weight, is refused).
LORA_TAG = re.compile(r"<lora:([^:<>]+)((?::[^:<>]*)*)>")


def split_lora_tags(prompt: str) -> tuple[str, list[dict], str | None]:
    """The prompt without its `<lora:…>` tags, the LoRAs they name as native `loras`, and an error message or None."""
    loras = []
    for found in LORA_TAG.finditer(prompt):
        name, rest = found.group(1).strip(), found.group(2).split(":")[1:]
        if len(rest) > 1:
            return prompt, [], f"{found.group(0)}: separate text encoder and UNet weights are not supported"
        try:
            weight = float(rest[0]) if rest else 1.0
        except ValueError:
            return prompt, [], f"{found.group(0)}: the weight must be a number"
        if any(lora["name"] == name for lora in loras):
            return prompt, [], f"{found.group(0)}: LoRA {name!r} appears twice"
        loras.append({"name": name, "weight": weight})
    return LORA_TAG.sub("", prompt).strip(), loras, None


def _off(value, off) -> bool:
    """`value` equals an "off" value, booleans only as booleans (False is not 0)."""
    if isinstance(value, bool) or isinstance(off, bool):
        return value is off
    return value == off


def to_native(data, *, img2img: bool, user_model: str | None) -> dict:
    """A1111's request body → the data for the native JobCreateSerializer. A1111Invalid names A1111's fields."""
    if not isinstance(data, dict):
        raise A1111Invalid({"": ["the body must be a JSON object"]})
    own = IMG2IMG_FIELDS if img2img else TXT2IMG_FIELDS
    other_only = TXT2IMG_ONLY_UNSUPPORTED if img2img else IMG2IMG_ONLY_UNSUPPORTED
    allowed = COMMON_FIELDS | own | IGNORED | (set(UNSUPPORTED) - other_only)
    errors = {}
    for name, value in data.items():
        if name in UNSUPPORTED and name in allowed:
            if not any(_off(value, off) for off in UNSUPPORTED[name]):
                shown = ", ".join(
                    "null" if off is None else str(off).lower() if isinstance(off, bool) else repr(off)
                    for off in UNSUPPORTED[name]
                )
                errors[name] = [f"not supported by this server; leave it out or send {shown}"]
        elif name not in allowed:
            errors[name] = ["unknown field for this route"]
    serializer = (Img2ImgRequest if img2img else Txt2ImgRequest)(
        data={k: v for k, v in data.items() if k not in errors}
    )
    if not serializer.is_valid():
        errors.update({name: _messages(found) for name, found in serializer.errors.items()})
    if errors:
        raise A1111Invalid(errors)
    a = {name: value for name, value in serializer.validated_data.items() if value is not None}

    native = {}
    if "prompt" in a:
        a["prompt"], loras, message = split_lora_tags(a["prompt"])
        if message:
            errors["prompt"] = [message]
        elif loras:
            native["loras"] = loras
    for name, target in (
        ("prompt", "prompt"),
        ("negative_prompt", "negative_prompt"),
        ("steps", "steps"),
        ("width", "width"),
        ("height", "height"),
        ("cfg_scale", "guidance_scale"),
    ):
        if name in a:
            native[target] = a[name]
    seed = a.get("seed", -1)
    if seed < -1:
        errors["seed"] = ["must be -1 (random) or from 0"]
    elif seed != -1:
        native["seed"] = seed
    strength = a.get("subseed_strength", 0.0)
    if strength:
        subseed = a.get("subseed", -1)
        if subseed < -1:
            errors["subseed"] = ["must be -1 (random) or from 0"]
        native["subseed"] = secrets.randbelow(limits.DRAWN_SEED_BELOW) if subseed == -1 else subseed
        native["subseed_strength"] = strength
    native["num_images"] = a.get("batch_size", 1) * a.get("n_iter", 1)

    sampler = a.get("sampler_name") or a.get("sampler_index")
    try:
        if sampler:
            native["scheduler"] = scheduler_for(sampler, a.get("scheduler"))
    except A1111Invalid as error:
        errors.update(error.errors)

    overrides = a.get("override_settings") or {}
    for key in overrides:
        if key != "sd_model_checkpoint":
            errors[f"override_settings.{key}"] = ["not supported by this server; only sd_model_checkpoint is"]
    if "sd_model_checkpoint" in overrides:
        model = model_for(overrides["sd_model_checkpoint"])
        if model is None:
            errors["override_settings.sd_model_checkpoint"] = [
                f"unknown model {overrides['sd_model_checkpoint']!r}; available: {', '.join(catalog.model_names())}"
            ]
        else:
            native["model"] = model
    elif user_model:
        native["model"] = user_model

    if img2img:
        errors.update(_img2img_fields(a, native))
    elif a.get("enable_hr"):
        errors.update(_hires_fields(a, native))
    if errors:
        raise A1111Invalid(errors)
    return native


def _hires_fields(a: dict, native: dict) -> dict:
    errors = {}
    upscaler = a.get("hr_upscaler") or "Latent"
    if upscaler not in HR_UPSCALERS:
        errors["hr_upscaler"] = [f"unknown or unsupported upscaler {upscaler!r}; available: {', '.join(HR_UPSCALERS)}"]
    else:
        native["hires_upscaler"] = HR_UPSCALERS[upscaler]
    width, height = a.get("width") or 0, a.get("height") or 0
    resize_x, resize_y = a.get("hr_resize_x") or 0, a.get("hr_resize_y") or 0
    if resize_x or resize_y:
        if not width or not height:
            errors["hr_resize_x"] = ["give width and height with hr_resize_x/hr_resize_y"]
        else:
            scales = {size / side for size, side in ((resize_x, width), (resize_y, height)) if size}
            if len(scales) > 1:
                errors["hr_resize_x"] = ["hr_resize_x / width must equal hr_resize_y / height (one scale)"]
            else:
                native["hires_scale"] = scales.pop()
    else:
        native["hires_scale"] = a.get("hr_scale", 2.0)
    if "hr_second_pass_steps" in a:
        native["hires_steps"] = a["hr_second_pass_steps"]
    if "denoising_strength" in a:
        native["hires_strength"] = a["denoising_strength"]
    for name, same_as in (("hr_prompt", "prompt"), ("hr_negative_prompt", "negative_prompt")):
        if a.get(name) and a[name] != a.get(same_as, ""):
            errors[name] = [f'a second-pass prompt of its own is not supported; send "" or the {same_as}']
    for name, same_as in (("hr_sampler_name", "sampler_name"), ("hr_scheduler", "scheduler")):
        if a.get(name) and a[name] != a.get(same_as):
            errors[name] = [f'the second pass runs the first pass\'s {same_as}; send null, "" or the same value']
    return errors


def _img2img_fields(a: dict, native: dict) -> dict:
    errors = {}
    images = a.get("init_images") or []
    if len(images) != 1:
        errors["init_images"] = [f"give exactly one init image ({len(images)} given)"]
    else:
        native["init_image"] = {"base64": images[0]}
    if a.get("mask"):
        try:
            native["mask"] = {"base64": _engine_mask(a["mask"], invert=a.get("inpainting_mask_invert") == 1)}
        except inputs.ImageRefused as error:
            errors["mask"] = [str(error)]
    mode = a.get("resize_mode", 0)
    if mode not in RESIZE_MODES:
        errors["resize_mode"] = ["must be 0 (just resize), 1 (crop and resize) or 2 (resize and fill)"]
    else:
        native["resize_mode"] = RESIZE_MODES[mode]
    if "mask_blur" in a:
        native["mask_blur"] = a["mask_blur"]
    elif "mask_blur_x" in a or "mask_blur_y" in a:
        blur_x, blur_y = a.get("mask_blur_x", 4), a.get("mask_blur_y", 4)
        if blur_x != blur_y:
            errors["mask_blur_x"] = ["mask_blur_x and mask_blur_y must be equal (one blur radius here)"]
        native["mask_blur"] = blur_x
    if a.get("inpainting_mask_invert", 0) not in (0, 1):
        errors["inpainting_mask_invert"] = ["must be 0 (white = repaint) or 1 (black = repaint)"]
    if "inpaint_full_res" in a:
        native["inpaint_full_res"] = a["inpaint_full_res"]
    if "inpaint_full_res_padding" in a:
        native["inpaint_full_res_padding"] = a["inpaint_full_res_padding"]
    if "denoising_strength" in a:
        native["strength"] = a["denoising_strength"]
    return errors


def _engine_mask(text: str, *, invert: bool) -> str:
    """A1111's mask → the native one (one channel, white = repaint), as base64 PNG.

    As A1111 reads a mask: an RGBA image whose alpha is not all opaque gives its alpha channel (opaque = repaint),
    any other image its grey levels (white = repaint); inpainting_mask_invert 1 swaps the two.
    """
    image = inputs.open_checked(inputs.decode_base64(text))[0]
    if image.mode == "RGBA" and image.getextrema()[-1] != (255, 255):
        mask = image.getchannel("A")
    else:
        mask = image.convert("L")
    if invert:
        mask = ImageOps.invert(mask)
    return base64.b64encode(inputs.png_bytes(mask)).decode("ascii")


# Native field → the A1111 field a native error is reported on.
A1111_NAME = {
    "guidance_scale": "cfg_scale",
    "num_images": "batch_size",
    "scheduler": "sampler_name",
    "strength": "denoising_strength",
    "hires_scale": "hr_scale",
    "hires_steps": "hr_second_pass_steps",
    "hires_strength": "denoising_strength",
    "hires_upscaler": "hr_upscaler",
    "init_image": "init_images",
    "mask_blur": "mask_blur",
    "model": "override_settings.sd_model_checkpoint",
    "non_field_errors": "",
}


def _messages(found) -> list[str]:
    """DRF's errors of one field, flat: a list, or a nested field's {key or index: [...]}, or one message."""
    if isinstance(found, dict):
        return [message for inner in found.values() for message in _messages(inner)]
    if isinstance(found, list | tuple):
        return [message for inner in found for message in _messages(inner)]
    return [str(found)]


def a1111_errors(native_errors: dict) -> dict:
    """Native field errors → the same messages under the A1111 field names."""
    errors = {}
    for name, found in native_errors.items():
        messages = _messages(found)
        if name == "num_images":
            messages = [f"batch_size × n_iter: {m}" for m in messages]
        errors.setdefault(A1111_NAME.get(name, name), []).extend(messages)
    return errors


def infotext(job, index: int) -> str:
    """A1111's "parameters" text of image `index` of a job: prompt, negative prompt, then `Key: value` pairs."""
    sampler, schedule = SAMPLER_OF.get(job.scheduler, (job.scheduler, "Automatic"))
    # A1111 keeps a prompt's <lora:…> tags in its infotext, and lists their files' hashes under "Lora hashes".
    tags = "".join(f"<lora:{lora['name']}:{lora['weight']:g}>" for lora in job.loras)
    lines = [f"{job.prompt} {tags}" if tags else job.prompt]
    if job.negative_prompt:
        lines.append(f"Negative prompt: {job.negative_prompt}")
    pairs = {
        "Steps": job.steps,
        "Sampler": sampler,
        "Schedule type": schedule,
        "CFG scale": job.guidance_scale,
        "Seed": job.seed + index,
        "Size": f"{job.width}x{job.height}",
        "Model hash": job.model_version[:10] if job.model_version else "",
        "Model": job.model,
    }
    if job.subseed is not None:
        pairs.update({"Variation seed": job.subseed + index, "Variation seed strength": job.subseed_strength})
    if job.mode != "txt2img":
        pairs["Denoising strength"] = job.strength
        if job.mode == "inpaint":
            pairs["Mask blur"] = job.mask_blur
            if job.inpaint_full_res:
                pairs.update({"Inpaint area": "Only masked", "Masked area padding": job.inpaint_full_res_padding})
    if job.hires_scale > 1:
        pairs["Hires denoising strength" if job.mode != "txt2img" else "Denoising strength"] = job.hires_strength
        pairs.update(
            {
                "Hires upscale": job.hires_scale,
                "Hires steps": job.hires_steps,
                "Hires upscaler": HR_UPSCALER_NAMES.get(job.hires_upscaler, job.hires_upscaler),
            }
        )
    if job.loras:
        pairs["Lora hashes"] = ", ".join(f"{lora['name']}: {lora['sha256'][:12]}" for lora in job.loras)
    pairs["Version"] = "diffusion_api"
    lines.append(", ".join(f"{key}: {_quoted(value)}" for key, value in pairs.items()))
    return "\n".join(lines)


def _quoted(value) -> str:
    text = str(value)
    return f'"{text}"' if "," in text or '"' in text or ":" in text else text


def info(job, *, infotexts: list[str], interrupted: bool = False) -> dict:
    """The JSON that A1111 answers as `info` (a string of it), for a job."""
    sampler, schedule = SAMPLER_OF.get(job.scheduler, (job.scheduler, "Automatic"))
    seeds = [job.seed + i for i in range(job.num_images)]
    subseeds = [job.subseed + i for i in range(job.num_images)] if job.subseed is not None else [-1] * job.num_images
    return {
        "prompt": job.prompt,
        "all_prompts": [job.prompt] * job.num_images,
        "negative_prompt": job.negative_prompt,
        "all_negative_prompts": [job.negative_prompt] * job.num_images,
        "seed": job.seed,
        "all_seeds": seeds,
        "subseed": subseeds[0],
        "all_subseeds": subseeds,
        "subseed_strength": job.subseed_strength,
        "width": job.width,
        "height": job.height,
        "sampler_name": sampler,
        "scheduler": schedule,
        "cfg_scale": job.guidance_scale,
        "steps": job.steps,
        "batch_size": job.num_images,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": job.model,
        "sd_model_hash": job.model_version[:10] if job.model_version else None,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": job.strength
        if job.mode != "txt2img"
        else job.hires_strength
        if job.hires_scale > 1
        else 0,
        "extra_generation_params": {"Schedule type": schedule},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": job.created_at.strftime("%Y%m%d%H%M%S"),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "version": "diffusion_api",
        "job_id": str(job.id),
        "interrupted": interrupted,
    }


def with_parameters_chunk(png: bytes, text: str) -> bytes:
    """`png` with its `parameters` text chunk(s) replaced by one holding `text`, placed before the image data as
    A1111 writes it (readers that stop at the first IDAT see it); pixels and other chunks untouched."""
    position, chunks, placed = 8, [png[:8]], False
    while position < len(png):
        (length,) = struct.unpack(">I", png[position : position + 4])
        kind = png[position + 4 : position + 8]
        end = position + 12 + length
        keyword = png[position + 8 : position + 8 + length].split(b"\0", 1)[0]
        if kind == b"IDAT" and not placed:
            chunks.append(_chunk(b"iTXt", b"parameters\0\0\0\0\0" + text.encode("utf-8")))
            placed = True
        if not (kind in (b"tEXt", b"iTXt", b"zTXt") and keyword == b"parameters"):
            chunks.append(png[position:end])
        position = end
    return b"".join(chunks)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


PARAM_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
IMAGE_SIZE = re.compile(r"^(\d+)x(\d+)$")


def parse_parameters(text: str) -> dict:
    """A1111's parse_generation_parameters, its core: Prompt, Negative prompt, and the last line's pairs."""
    *lines, last = text.strip().split("\n") if text.strip() else [""]
    if len(PARAM_PAIR.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    result = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in PARAM_PAIR.findall(last):
        if value[:1] == '"' and value[-1:] == '"':
            value = value[1:-1]
        if size := IMAGE_SIZE.match(value):
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
        else:
            result[key] = value
    return result
