"""OpenAPI shapes of the /v1/ routes: OpenAI's request and answer bodies and its error envelope."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, inline_serializer
from rest_framework import serializers

from diffusion_api.openai_api import mapping


class BearerScheme(OpenApiAuthenticationExtension):
    """`Authorization: Bearer <token>`: the service's own tokens, as OpenAI's clients send them."""

    target_class = "diffusion_api.accounts.authentication.BearerTokenAuthentication"
    name = "bearerAuth"
    priority = 1  # before drf-spectacular's TokenAuthentication scheme, which matches subclasses too

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer"}


ErrorEnvelope = inline_serializer(
    "OpenAIError",
    {
        "error": inline_serializer(
            "OpenAIErrorBody",
            {
                "message": serializers.CharField(),
                "type": serializers.CharField(help_text="invalid_request_error, requests, server_error"),
                "param": serializers.CharField(allow_null=True, help_text="the request parameter at fault"),
                "code": serializers.CharField(allow_null=True),
            },
        )
    },
)


def error(description: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorEnvelope, description=description)


IMAGE_ERRORS = {
    400: error("bad input; `param` names the parameter"),
    401: error("no token, or an unknown one (`Authorization: Bearer <token>`)"),
    413: error("request body too large"),
    415: error("wrong content type"),
    422: error("Idempotency-Key reused with another body"),
    429: error("too many unfinished jobs, or requests too fast; see Retry-After"),
    410: error("the job's images expired before the answer (a retry that found an old job)"),
    500: error("the job failed or was canceled (`x-should-retry: false`)"),
    503: error("the queue is full (see Retry-After), or the object store does not answer"),
    504: error("the job did not end in time; it goes on, and the message names it (GET /api/v1/jobs/{id}/)"),
}

ImagesResponse = inline_serializer(
    "OpenAIImagesResponse",
    {
        "created": serializers.IntegerField(help_text="when the job was created, Unix seconds"),
        "data": inline_serializer(
            "OpenAIImage",
            {
                "b64_json": serializers.CharField(required=False, help_text="the PNG, base64"),
                "url": serializers.URLField(required=False, help_text="a link that works for OPENAI_URL_TTL seconds"),
            },
            many=True,
        ),
        "size": serializers.CharField(help_text="WIDTHxHEIGHT"),
        "output_format": serializers.ChoiceField(["png"]),
    },
)
STREAM = OpenApiResponse(
    OpenApiTypes.STR,
    description="with `stream: true`: Server-Sent Events `image_generation.partial_image` (up to partial_images, "
    "from the worker's previews) then one `image_generation.completed` per image (`image_edit.*` for edits); "
    "an `error` event carries the envelope",
)


def _choice(name: str, choices, **kwargs) -> serializers.ChoiceField:
    return serializers.ChoiceField(list(choices), required=False, allow_null=True, **kwargs)


_OPENAI_FIELDS = {
    "model": serializers.CharField(required=False, allow_null=True, help_text="GET /v1/models; default: the first"),
    "n": serializers.IntegerField(required=False, allow_null=True, help_text="images, 1 to JOB_MAX_IMAGES"),
    "size": serializers.CharField(
        required=False, allow_null=True, help_text="'auto' (the model's default) or 'WIDTHxHEIGHT'"
    ),
    "response_format": _choice("response_format", mapping.RESPONSE_FORMATS, help_text="default b64_json"),
    **{name: _choice(name, choices) for name, choices in mapping.IGNORED.items() if choices},
    **{name: serializers.CharField(required=False, allow_null=True) for name, c in mapping.IGNORED.items() if not c},
    **{name: _choice(name, choices) for name, choices in mapping.ONLY.items()},
}
_STREAM_FIELDS = {
    "stream": serializers.BooleanField(required=False, allow_null=True),
    "partial_images": serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=3),
    "output_compression": serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=100),
}
_NATIVE_FIELDS = {
    "negative_prompt": serializers.CharField(required=False, help_text="the native API's field"),
    "seed": serializers.IntegerField(required=False, help_text="the native API's field"),
    "steps": serializers.IntegerField(required=False, help_text="the native API's field"),
    "guidance_scale": serializers.FloatField(required=False, help_text="the native API's field"),
    "scheduler": serializers.CharField(required=False, help_text="the native API's field"),
}
_STRENGTH = {"strength": serializers.FloatField(required=False, help_text="img2img strength, (0, 1]")}

GenerationRequest = inline_serializer(
    "OpenAIImageGenerationRequest",
    {"prompt": serializers.CharField(), **_OPENAI_FIELDS, **_STREAM_FIELDS, **_NATIVE_FIELDS},
)
EditRequest = inline_serializer(
    "OpenAIImageEditRequest",
    {
        "image": serializers.FileField(help_text="PNG, JPEG or WebP; also sent as image[]"),
        "mask": serializers.FileField(
            required=False, help_text="PNG with alpha, the image's size: fully transparent = repaint"
        ),
        "prompt": serializers.CharField(),
        **_OPENAI_FIELDS,
        **_STREAM_FIELDS,
        **_NATIVE_FIELDS,
        **_STRENGTH,
    },
)
VariationRequest = inline_serializer(
    "OpenAIImageVariationRequest",
    {
        "image": serializers.FileField(help_text="PNG, JPEG or WebP"),
        **{name: _OPENAI_FIELDS[name] for name in ("model", "n", "size", "response_format", "user")},
        **_NATIVE_FIELDS,
        **_STRENGTH,
    },
)
Model = inline_serializer(
    "OpenAIModel",
    {
        "id": serializers.CharField(),
        "object": serializers.ChoiceField(["model"]),
        "created": serializers.IntegerField(),
        "owned_by": serializers.CharField(),
    },
)
ModelList = inline_serializer(
    "OpenAIModelList", {"object": serializers.ChoiceField(["list"]), "data": serializers.ListField(child=Model)}
)
IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    required=False,
    description="the same key and body give the same job; the same key with another body is 422",
)
GENERATION_EXAMPLE = OpenApiExample(
    "a generation",
    value={"prompt": "a small red circle in the top left", "n": 1, "size": "64x64", "steps": 20, "seed": 42},
    request_only=True,
)
