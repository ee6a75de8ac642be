"""An OpenAI Images request → the native job fields, validated by the native JobCreateSerializer.

Every limit is the native API's: OpenAI's fields are renamed (n → num_images, size → width × height) and the
serializer and services.job_create judge them. A refusal names OpenAI's parameter, not the native field.
"""

import re
from dataclasses import dataclass

from django.conf import settings
from PIL import Image

from diffusion_api.jobs import catalog, inputs, services
from diffusion_api.jobs.serializers import JobCreateSerializer
from diffusion_api.openai_api.errors import OpenAIError

GENERATIONS, EDITS, VARIATIONS = "generations", "edits", "variations"

# OpenAI's optional fields that change nothing here, each with the values OpenAI allows (None: any string).
IGNORED = {
    "quality": ("auto", "standard", "hd", "low", "medium", "high"),  # the steps decide; send `steps` to change them
    "style": ("vivid", "natural"),
    "moderation": ("auto", "low"),
    "input_fidelity": ("high", "low"),
    "user": None,
    "safety_identifier": None,
}
# OpenAI's fields whose defaults are what this service does, and the one value each accepts.
ONLY = {"background": ("auto", "opaque"), "output_format": ("png",)}
# The native fields a client may add (the openai client's `extra_body`), per route.
EXTRA = {
    GENERATIONS: ("negative_prompt", "seed", "steps", "guidance_scale", "scheduler"),
    EDITS: ("negative_prompt", "seed", "steps", "guidance_scale", "scheduler", "strength"),
    VARIATIONS: ("negative_prompt", "seed", "steps", "guidance_scale", "scheduler", "strength"),
}
OWN = {
    GENERATIONS: ("prompt", "model", "n", "size", "response_format", "stream", "partial_images", "output_compression"),
    EDITS: ("prompt", "model", "n", "size", "response_format", "stream", "partial_images", "output_compression"),
    VARIATIONS: ("model", "n", "size", "response_format"),
}
FILES = {GENERATIONS: (), EDITS: ("image", "image[]", "mask"), VARIATIONS: ("image", "image[]")}
RESPONSE_FORMATS = ("b64_json", "url")
MAX_PARTIAL_IMAGES = 3  # as OpenAI
# Native field → the OpenAI parameter a refusal names.
PARAM_OF = {"num_images": "n", "width": "size", "height": "size", "init_image": "image", "non_field_errors": None}
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
_INTEGERS = {"n", "partial_images", "output_compression", "seed", "steps"}
_NUMBERS = {"guidance_scale", "strength"}


@dataclass
class Request:
    """A validated request: the native fields for services.job_submit and how to answer."""

    fields: dict
    response_format: str = "b64_json"
    stream: bool = False
    partial_images: int = 0


def parse(route: str, data, files=None) -> Request:
    """Check an OpenAI body (JSON, or multipart fields and `files` for edits and variations) and map it.

    OpenAIError (400, naming `param`) for anything the native API would refuse, or that this service cannot honour.
    """
    if not isinstance(data, dict):
        raise OpenAIError("The body must be a JSON object.", code="invalid_json")
    if files is not None:
        data = {name: _from_form(name, value) for name, value in data.items()}
    data = {name: value for name, value in data.items() if value is not None}  # null = OpenAI's default
    allowed = {*OWN[route], *EXTRA[route], *IGNORED, *ONLY}
    for name in [*data, *(files or {})]:
        if name not in allowed and name not in FILES[route]:
            raise OpenAIError(f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
    for name, choices in {**IGNORED, **ONLY}.items():
        if name in data:
            _choice(data, name, choices)
    native = {}
    if route == VARIATIONS:  # docs/openai.md: img2img under a fixed prompt, without classifier-free guidance
        native.update(
            prompt=settings.OPENAI_VARIATION_PROMPT, guidance_scale=1.0, strength=settings.OPENAI_VARIATION_STRENGTH
        )
    elif "prompt" in data:
        native["prompt"] = data["prompt"]
    native.update({name: data[name] for name in EXTRA[route] if name in data})
    if "n" in data:
        native["num_images"] = data["n"]
    if "model" in data:
        native["model"] = _model(data["model"])
    native.update(_size(data.get("size", "auto")))
    request = Request(fields=native)
    if "response_format" in data:
        request.response_format = _choice(data, "response_format", RESPONSE_FORMATS)
    if "output_compression" in data:
        _integer(data, "output_compression", 0, 100)
    if "stream" in data:
        if not isinstance(data["stream"], bool):
            raise OpenAIError("'stream' must be true or false.", param="stream", code="invalid_type")
        request.stream = data["stream"]
    if "partial_images" in data:
        request.partial_images = _integer(data, "partial_images", 0, MAX_PARTIAL_IMAGES)

    serializer = JobCreateSerializer(data=native)
    if not serializer.is_valid():
        raise refusal(serializer.errors)
    request.fields = dict(serializer.validated_data)
    if route != GENERATIONS:
        request.fields.update(_images(route, files or {}))
    return request


def refusal(errors: dict) -> OpenAIError:
    """The first of the native API's field errors, naming OpenAI's parameter."""
    name, messages = next(iter(errors.items()))
    message = messages[0] if isinstance(messages, list) and messages else messages
    param = PARAM_OF.get(name, name)
    text = str(message)
    if param is not None and param != name:
        text = f"{name}: {text}"
    return OpenAIError(f"Invalid '{param}': {text}" if param else text, param=param, code="invalid_value")


def _from_form(name: str, value):
    """Multipart fields are strings: read the ones that are numbers or booleans as such (else leave the string,
    which the checks then refuse by name)."""
    if not isinstance(value, str):
        return value
    try:
        if name in _INTEGERS:
            return int(value)
        if name in _NUMBERS:
            return float(value)
    except ValueError:
        return value
    if name == "stream" and value in ("true", "false"):
        return value == "true"
    return value


def _choice(data: dict, name: str, choices) -> str:
    value = data[name]
    if not isinstance(value, str) or (choices is not None and value not in choices):
        allowed = ", ".join(f"'{c}'" for c in choices) if choices else "a string"
        raise OpenAIError(
            f"Invalid value: {value!r}. Supported values are: {allowed}.", param=name, code="invalid_value"
        )
    return value


def _integer(data: dict, name: str, low: int, high: int) -> int:
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise OpenAIError(f"'{name}' must be an integer from {low} to {high}.", param=name, code="invalid_value")
    return value


def _model(name) -> str:
    """A model name; whether it exists and the user may use it is the registry's to say (check_model, in a thread:
    this runs on the event loop)."""
    if not isinstance(name, str) or not name:
        raise OpenAIError(f"The model '{name}' does not exist.", param="model", code="model_not_found")
    return name


def check_model(name: str | None, user) -> None:
    """OpenAI's `model_not_found` for a model the catalog does not offer this user."""
    if name is None:
        return
    try:
        catalog.model_path(name, user)
    except catalog.ModelUnavailable as error:
        raise OpenAIError(
            f"The model '{name}' does not exist or you do not have access to it ({error}); available: "
            f"{', '.join(catalog.model_names(user))}.",
            param="model",
            code="model_not_found",
        ) from error


def _size(size) -> dict:
    """ "WxH" → width and height (the native checks judge them); "auto" → the model's default size."""
    if size == "auto":
        return {}
    match = _SIZE.match(size) if isinstance(size, str) else None
    if match is None:
        raise OpenAIError(
            f"Invalid value: {size!r}. Supported values are 'auto' and 'WIDTHxHEIGHT' (e.g. '512x512'), each side a "
            "multiple of the model's size_multiple_of (GET /api/v1/models/) within the pixel budget.",
            param="size",
            code="invalid_value",
        )
    return {"width": int(match[1]), "height": int(match[2])}


def _images(route: str, files: dict) -> dict:
    """The input image (and for edits the mask) as services.ImageInput, checked as the native API checks them.

    OpenAI's mask marks with fully transparent pixels what to repaint; the native mask is white where to repaint.
    """
    images = [*files.get("image", []), *files.get("image[]", [])]
    if len(images) != 1:
        raise OpenAIError(f"Send exactly one 'image' file ({len(images)} sent).", param="image", code="invalid_image")
    data = _read(images[0], "image")
    image = _open(data, "image")
    fields = {"init_image": services.ImageInput(data=data)}
    masks = files.get("mask", [])
    if route == EDITS and masks:
        mask = inputs.normalized(_open(_read(masks[0], "mask"), "mask"))
        if "A" not in mask.getbands():
            raise OpenAIError("The mask must be a PNG with an alpha channel.", param="mask", code="invalid_image")
        if mask.size != image.size:
            raise OpenAIError(
                f"The mask is {mask.width}x{mask.height} and the image {image.width}x{image.height}: "
                "they must have the same size.",
                param="mask",
                code="invalid_image",
            )
        repaint = mask.getchannel("A").point(lambda alpha: 255 if alpha == 0 else 0)
        fields["mask"] = services.ImageInput(data=inputs.png_bytes(repaint))
    return fields


def _read(file, param: str) -> bytes:
    limit = settings.JOB_MAX_IMAGE_BODY_BYTES
    if file.size > limit:
        raise OpenAIError(
            f"The {param} is {file.size} bytes; at most {limit} (JOB_MAX_IMAGE_BODY_BYTES).",
            param=param,
            code="image_too_large",
        )
    return file.read()


def _open(data: bytes, param: str) -> Image.Image:
    """The native checks (inputs.open_checked: format, pixel count, mode, corruption)."""
    try:
        return inputs.open_checked(data)[0]
    except inputs.ImageRefused as error:
        raise OpenAIError(f"Invalid '{param}': {error}.", param=param, code="invalid_image") from error
