"""OpenAPI shapes of the answers that have no model serializer, and request/response examples."""

from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, inline_serializer
from rest_framework import serializers

Detail = inline_serializer("Detail", {"detail": serializers.CharField()})
FieldErrors = inline_serializer(
    "FieldErrors", {"field": serializers.ListField(child=serializers.CharField(), required=False)}
)


def detail(description: str) -> OpenApiResponse:
    return OpenApiResponse(Detail, description=description)


BAD_REQUEST = OpenApiResponse(
    FieldErrors,
    description="bad input: one list of messages per field, each naming the allowed values",
    examples=[
        OpenApiExample("out of range", value={"steps": ["must be from 1 to 150."]}, response_only=True),
        OpenApiExample(
            "unknown field", value={"colour": ["unknown field; allowed fields: prompt, …"]}, response_only=True
        ),
    ],
)
RETRY_AFTER = OpenApiParameter(
    "Retry-After", int, OpenApiParameter.HEADER, response=True, description="seconds to wait before trying again"
)
IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    required=False,
    description="a retry with the same key and body returns the same job; the same key with another body is 422",
)
PREFER_WAIT = OpenApiParameter(
    "Prefer",
    str,
    OpenApiParameter.HEADER,
    required=False,
    description="`wait` or `wait=N` (RFC 7240): answer when the job ends (200) or after N seconds (202), "
    "N at most JOB_MAX_WAIT_SECONDS (60 by default)",
)
CREATE_EXAMPLE = OpenApiExample(
    "a job",
    value={
        "prompt": "a small red circle in the top left on a white background",
        "negative_prompt": "blurry",
        "steps": 20,
        "guidance_scale": 7.5,
        "scheduler": "euler_a",
        "seed": 42,
        "num_images": 2,
    },
    request_only=True,
)
IMG2IMG_EXAMPLE = OpenApiExample(
    "img2img from an upload",
    description="init_image is {\"upload\": id} from POST /api/v1/uploads/, or {\"base64\": \"…\"} (raw or a "
    "data:image/png;base64, URI); it is fitted to width × height by resize_mode.",
    value={
        "prompt": "a small blue circle in the top left on a white background",
        "init_image": {"upload": "5f0c6a34-8a8e-4d8e-9a1e-2b6f0b7d8c11"},
        "strength": 0.6,
        "resize_mode": "crop_and_resize",
        "seed": 42,
    },
    request_only=True,
)
INPAINT_EXAMPLE = OpenApiExample(
    "inpainting with a base64 mask",
    description="mask: one channel (white = repaint) or an alpha channel (transparent = repaint).",
    value={
        "prompt": "a red square in the bottom right",
        "init_image": {"upload": "5f0c6a34-8a8e-4d8e-9a1e-2b6f0b7d8c11"},
        "mask": {"base64": "data:image/png;base64,iVBORw0KGgo…"},
        "strength": 1.0,
        "mask_blur": 4,
        "seed": 7,
    },
    request_only=True,
)
UploadRequest = inline_serializer(
    "UploadRequest", {"file": serializers.FileField(help_text="a PNG, JPEG or WebP image")}
)
DETAIL_EXAMPLE = OpenApiExample(
    "succeeded",
    response_only=True,
    value={
        "id": "0b52cf7a-cc61-418b-86ab-8421bbea6e0f",
        "url": "http://localhost:8000/api/v1/jobs/0b52cf7a-cc61-418b-86ab-8421bbea6e0f/",
        "status": "succeeded",
        "progress": {"step": 20, "total": 20, "percent": 100.0},
        "queue_position": None,
        "parameters": {
            "prompt": "a small red circle in the top left on a white background",
            "negative_prompt": "blurry",
            "width": 64,
            "height": 64,
            "steps": 20,
            "guidance_scale": 7.5,
            "scheduler": "euler_a",
            "seed": 42,
            "num_images": 1,
            "model": "tiny",
            "strength": 0.75,
            "mask_blur": 4,
            "inpaint_full_res": False,
            "inpaint_full_res_padding": 32,
            "resize_mode": "just_resize",
            "subseed": None,
            "subseed_strength": 0.0,
            "hires_scale": 1.0,
            "hires_upscaler": "latent",
            "hires_steps": 0,
            "hires_strength": 0.5,
            "guidance_cutoff": 1.0,
            "deep_cache_interval": 1,
            "mode": "img2img",
        },
        "inputs": {
            "init_image": {
                "sha256": "9f2c4d0e…",
                "url": "http://localhost:8000/api/v1/jobs/0b52cf7a-cc61-418b-86ab-8421bbea6e0f/inputs/init_image.png",
            },
            "mask": None,
        },
        "timings": {
            "created_at": "2026-11-22T03:00:02Z",
            "started_at": "2026-11-22T03:00:03Z",
            "finished_at": "2026-11-22T03:00:05Z",
            "run_seconds": 2.1,
        },
        "error": "",
        "attempts": 1,
        "cancel_requested": False,
        "expires_at": "2026-11-29T03:00:05Z",
        "images": [
            {
                "index": 0,
                "seed": 42,
                "width": 64,
                "height": 64,
                "url": "http://localhost:8000/api/v1/jobs/0b52cf7a-cc61-418b-86ab-8421bbea6e0f/images/0.png",
                "png_base64": "iVBORw0KGgoAAAANSUhEUgAA…",
                "expired": False,
            }
        ],
    },
)

ModelsAnswer = inline_serializer(
    "Models",
    {
        "models": inline_serializer(
            "Model",
            {
                "name": serializers.CharField(),
                "ready": serializers.BooleanField(),
                "detail": serializers.CharField(required=False),
                "default": serializers.BooleanField(required=False),
                "defaults": inline_serializer(
                    "ModelDefaults",
                    {
                        "width": serializers.IntegerField(),
                        "height": serializers.IntegerField(),
                        "steps": serializers.IntegerField(),
                        "guidance_scale": serializers.FloatField(),
                        "scheduler": serializers.CharField(),
                    },
                    required=False,
                ),
                "kind": serializers.CharField(
                    required=False, allow_null=True, help_text="sd1, sd2, sdxl or custom; null for a MODELS entry"
                ),
                "inpainting": serializers.BooleanField(required=False),
                "limits": serializers.DictField(required=False, help_text="max_pixels, max_steps of this model"),
                "size_multiple_of": serializers.IntegerField(required=False),
                "max_prompt_tokens": serializers.IntegerField(
                    required=False, help_text="tokens of one window; a prompt may take up to 8 windows"
                ),
                "served": serializers.BooleanField(required=False, help_text="a live worker serves it"),
            },
            many=True,
        ),
        "limits": inline_serializer(
            "Limits",
            {
                "max_pixels": serializers.IntegerField(),
                "max_side": serializers.IntegerField(),
                "max_steps": serializers.IntegerField(),
                "max_images": serializers.IntegerField(),
                "max_prompt_chars": serializers.IntegerField(),
                "max_guidance_scale": serializers.FloatField(),
            },
        ),
    },
)
SchedulersAnswer = inline_serializer(
    "Schedulers",
    {
        "schedulers": inline_serializer(
            "Scheduler",
            {"name": serializers.CharField(), "class": serializers.CharField(), "settings": serializers.DictField()},
            many=True,
        )
    },
)
_check = {"ok": serializers.BooleanField(), "detail": serializers.CharField(required=False)}
HealthAnswer = inline_serializer(
    "Health",
    {
        "status": serializers.ChoiceField(["ok", "degraded", "down"]),
        "database": inline_serializer("DatabaseCheck", _check),
        "broker": inline_serializer("BrokerCheck", {**_check, "transport": serializers.CharField(required=False)}),
        "storage": inline_serializer(
            "StorageCheck",
            {
                **_check,
                "backend": serializers.ChoiceField(["filesystem", "s3"]),
                "held_images": serializers.IntegerField(
                    required=False, help_text="images whose bytes wait in the database for the store to take them"
                ),
            },
        ),
        "workers": inline_serializer(
            "WorkersCheck",
            {
                **_check,
                "alive": serializers.IntegerField(required=False),
                "job_workers": serializers.IntegerField(required=False),
                "workers": serializers.ListField(child=serializers.DictField(), required=False),
            },
        ),
    },
)


def paginated(name: str, item) -> serializers.Serializer:
    return inline_serializer(
        name,
        {
            "count": serializers.IntegerField(),
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": item,
        },
    )


LorasAnswer = inline_serializer(
    "Loras",
    {
        "loras": inline_serializer(
            "Lora",
            {
                "name": serializers.CharField(),
                "kind": serializers.CharField(help_text="the base model kind it was made for: sd1, sd2, sdxl, custom"),
                "format": serializers.CharField(),
                "rank": serializers.IntegerField(),
                "sha256": serializers.CharField(),
            },
            many=True,
        ),
        "weight_range": serializers.ListField(child=serializers.FloatField()),
    },
)
