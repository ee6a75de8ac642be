"""OpenAPI shapes of the /sdapi/v1/ answers, and the security schemes of its authenticators."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import serializers


class LimitedBasicScheme(OpenApiAuthenticationExtension):
    target_class = "diffusion_api.a1111.authentication.LimitedBasicAuthentication"
    name = "basicAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "basic"}


ValidationItems = inline_serializer(
    "A1111ValidationItem",
    {
        "loc": serializers.ListField(child=serializers.CharField()),
        "msg": serializers.CharField(),
        "type": serializers.CharField(),
    },
    many=True,
)
ValidationError = inline_serializer("A1111ValidationError", {"detail": ValidationItems})
ErrorBody = inline_serializer(
    "A1111Error",
    {
        "error": serializers.CharField(),
        "detail": serializers.CharField(),
        "body": serializers.CharField(),
        "errors": serializers.CharField(),
    },
)


def error(description: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorBody, description=description)


INVALID = OpenApiResponse(ValidationError, description="bad input: one entry per field, its location naming it")
UNAUTHORIZED = error("no or wrong credentials (token, or HTTP Basic username and password)")
THROTTLED = error("too many failed Basic logins, or requests; see Retry-After")

GenerationAnswer = inline_serializer(
    "A1111GenerationAnswer",
    {
        "images": serializers.ListField(child=serializers.CharField(), help_text="base64 PNGs"),
        "parameters": serializers.DictField(help_text="the request as received (init_images and mask: null)"),
        "info": serializers.CharField(help_text="a JSON object, as a string: seeds, sampler, infotexts, …"),
    },
)
ProgressAnswer = inline_serializer(
    "A1111Progress",
    {
        "progress": serializers.FloatField(),
        "eta_relative": serializers.FloatField(),
        "state": inline_serializer(
            "A1111State",
            {
                "skipped": serializers.BooleanField(),
                "interrupted": serializers.BooleanField(),
                "job": serializers.CharField(),
                "job_count": serializers.IntegerField(),
                "job_timestamp": serializers.CharField(),
                "job_no": serializers.IntegerField(),
                "sampling_step": serializers.IntegerField(),
                "sampling_steps": serializers.IntegerField(),
            },
        ),
        "current_image": serializers.CharField(allow_null=True),
        "textinfo": serializers.CharField(allow_null=True),
    },
)
SdModel = inline_serializer(
    "A1111SdModel",
    {
        "title": serializers.CharField(),
        "model_name": serializers.CharField(),
        "hash": serializers.CharField(allow_null=True),
        "sha256": serializers.CharField(allow_null=True),
        "filename": serializers.CharField(),
        "config": serializers.CharField(allow_null=True),
    },
)
Sampler = inline_serializer(
    "A1111Sampler",
    {
        "name": serializers.CharField(),
        "aliases": serializers.ListField(child=serializers.CharField()),
        "options": serializers.DictField(child=serializers.CharField()),
    },
)
Scheduler = inline_serializer(
    "A1111Scheduler",
    {
        "name": serializers.CharField(),
        "label": serializers.CharField(),
        "aliases": serializers.ListField(child=serializers.CharField(), allow_null=True),
        "default_rho": serializers.FloatField(),
        "need_inner_model": serializers.BooleanField(),
    },
)
Upscaler = inline_serializer(
    "A1111Upscaler",
    {
        "name": serializers.CharField(),
        "model_name": serializers.CharField(allow_null=True),
        "model_path": serializers.CharField(allow_null=True),
        "model_url": serializers.CharField(allow_null=True),
        "scale": serializers.FloatField(),
    },
)
Lora = inline_serializer(
    "A1111Lora",
    {
        "name": serializers.CharField(),
        "alias": serializers.CharField(),
        "path": serializers.CharField(),
        "metadata": serializers.DictField(),
    },
)
NameOnly = inline_serializer("A1111Name", {"name": serializers.CharField()})
Scripts = inline_serializer(
    "A1111Scripts",
    {
        "txt2img": serializers.ListField(child=serializers.CharField()),
        "img2img": serializers.ListField(child=serializers.CharField()),
    },
)
PngInfoRequest = inline_serializer("A1111PngInfoRequest", {"image": serializers.CharField()})
PngInfoAnswer = inline_serializer(
    "A1111PngInfo",
    {
        "info": serializers.CharField(),
        "items": serializers.DictField(),
        "parameters": serializers.DictField(),
    },
)
Options = inline_serializer("A1111Options", {"sd_model_checkpoint": serializers.CharField()})
