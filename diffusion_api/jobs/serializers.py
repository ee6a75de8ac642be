"""Input checking and output shapes. Types are strict: "64" is not an integer, 1.5 is not an integer."""

import base64
import math

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.reverse import reverse

from diffusion_api.jobs import inputs, selectors, services, store
from diffusion_api.jobs.models import PARAMETER_FIELDS, ImageState, Job, JobImage, JobStatus, Upload
from diffusion_api.jobs.webhooks import WebhookRefused, check_webhook_url
from generator.torch_free import limits


class StrictIntegerField(serializers.IntegerField):
    default_error_messages = {"invalid": "must be an integer (a JSON number without a fraction), not {kind}."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid", kind=type(data).__name__)
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    default_error_messages = {"invalid": "must be a number, not {kind}."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int | float) or not math.isfinite(data):
            self.fail("invalid", kind=type(data).__name__ if not isinstance(data, float) else "a non-finite number")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    default_error_messages = {"invalid": "must be true or false."}

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class StrictCharField(serializers.CharField):
    default_error_messages = {"invalid": "must be a string."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


def _range(low, high) -> dict:
    message = f"must be from {low} to {high}."
    return {"min_value": low, "max_value": high, "error_messages": {"min_value": message, "max_value": message}}


def _range_above(low, high) -> dict:
    """(low, high]: DRF's min_value is inclusive, so the lower end is a validator of its own."""
    message = f"must be more than {low} and at most {high}."

    def above(value):
        if value <= low:
            raise serializers.ValidationError(message)

    return {"max_value": high, "validators": [above], "error_messages": {"max_value": message}}


_STRICT = {int: StrictIntegerField, float: StrictFloatField}
# A value of the wrong type is told the range too, as an out-of-range one is ({span}: "from 1 to 10", ...).
_WRONG_TYPE = {
    int: "must be an integer {span} (a JSON number without a fraction), not {{kind}}.",
    float: "must be a number {span}, not {{kind}}.",
}


def _request_field(spec: limits.FieldSpec) -> serializers.Field:
    """A serializer field from a row of generator.limits.FIELDS, with this deployment's bounds (settings)."""
    low, high = limits.bounds(spec.name, settings)
    options = {"required": spec.default == limits.REQUIRED}
    if spec.default not in (limits.REQUIRED, limits.FROM_MODEL, limits.DRAWN):
        options["default"] = spec.default  # the service resolves the others (they depend on the model)
    if spec.default is None:
        options["allow_null"] = True  # null = off (e.g. no variation seed)
    if spec.help:
        options["help_text"] = spec.help
    if spec.type is bool:
        return StrictBooleanField(**options)
    if spec.choices is not None and spec.name != "scheduler":  # validate_scheduler names the known ones itself
        return StrictChoiceField(choices=spec.choices, **options)
    if spec.type is str:
        if spec.choices is None:
            options.update(allow_blank=bool(not low), trim_whitespace=bool(low))
        if high is not None:
            options.update(max_length=high, error_messages={"max_length": f"must be at most {high} characters."})
        return StrictCharField(**options)
    if spec.min_exclusive:
        span, bounded = f"more than {low} and at most {high}", _range_above(low, high)
    else:
        span, bounded = f"from {low} to {high}", _range(low, high)
    bounded["error_messages"]["invalid"] = _WRONG_TYPE[spec.type].format(span=span)
    return _STRICT[spec.type](**options, **bounded)


class StrictChoiceField(serializers.ChoiceField):
    default_error_messages = {"invalid_choice": "{input!r} is not one of: {choices}."}

    def to_internal_value(self, data):
        if not isinstance(data, str) or data not in self.choices:
            self.fail("invalid_choice", input=data, choices=", ".join(self.choices))
        return data


class ImageInputSerializer(serializers.Serializer):
    """An input image: `{"upload": "<id>"}` (from POST uploads/) or `{"base64": "<PNG/JPEG/WebP, raw or data: URI>"}`,
    exactly one of the two."""

    upload = serializers.UUIDField(required=False, help_text="the id of one of your uploads (POST /api/v1/uploads/)")
    base64 = StrictCharField(
        required=False, help_text="the image file as base64, raw or as a data:image/…;base64, URI"
    )

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError('must be an object: {"upload": "<id>"} or {"base64": "<image>"}.')
        if unknown := sorted(set(data) - {"upload", "base64"}):
            raise serializers.ValidationError(f"unknown keys {', '.join(unknown)}; allowed: upload, base64.")
        if len(data) != 1:
            raise serializers.ValidationError('give exactly one of "upload" and "base64".')
        value = super().to_internal_value(data)
        if "upload" in value:
            return services.ImageInput(upload=value["upload"])
        try:
            return services.ImageInput(data=inputs.decode_base64(value["base64"]))
        except inputs.ImageRefused as error:
            raise serializers.ValidationError({"base64": [str(error)]}) from error


class LoraRequestSerializer(serializers.Serializer):
    name = StrictCharField(max_length=100, help_text="a LoRA of the registry (GET loras/)")
    weight = StrictFloatField(required=False, default=1.0, help_text="0 = no effect, 1 = as trained")

    def to_internal_value(self, data):
        if isinstance(data, dict) and (unknown := sorted(set(data) - {"name", "weight"})):
            raise serializers.ValidationError({n: ["unknown field; allowed fields: name, weight."] for n in unknown})
        return super().to_internal_value(data)


class JobCreateSerializer(serializers.Serializer):
    # The request fields come from generator.limits.FIELDS (get_fields); these are the API's own.
    model = StrictCharField(required=False)
    loras = LoraRequestSerializer(
        many=True, required=False, help_text="LoRAs applied to the model for this job, several at once"
    )
    webhook_url = StrictCharField(required=False, max_length=2000, help_text="POSTed the job's final state")
    cache = StrictBooleanField(
        required=False,
        default=True,
        help_text="false: always run the model, even when an identical earlier request (explicit seed) succeeded",
    )
    init_image = ImageInputSerializer(
        required=False, help_text="img2img: the image to start from, fitted to width × height by resize_mode"
    )
    mask = ImageInputSerializer(
        required=False,
        help_text="inpainting (with init_image): one channel, white = repaint, or an alpha channel, transparent = "
        "repaint; its image's size or aspect ratio",
    )

    def get_fields(self):
        # Limits are settings: read them when a serializer is made, not when the module is imported.
        own = super().get_fields()
        fields = {name: _request_field(spec) for name, spec in limits.FIELDS.items() if spec.api}
        fields.update(own)
        return fields

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": ["the body must be a JSON object."]})
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError(
                {name: [f"unknown field; allowed fields: {', '.join(self.fields)}."] for name in unknown}
            )
        return super().to_internal_value(data)

    def validate_scheduler(self, value: str) -> str:
        try:
            limits.check_scheduler(value)
        except ValueError as error:
            raise serializers.ValidationError(f"{error}.") from error
        return value

    def validate_webhook_url(self, value: str) -> str:
        try:
            check_webhook_url(value)
        except WebhookRefused as error:
            raise serializers.ValidationError(str(error)) from error
        return value

    # `model` and `loras` are checked against the registry by services.job_plan, with the owner: the routes that
    # validate this serializer on the event loop must not query the database here.


class FieldsBuiltOnce:
    """For serializers that only show a model: build the fields once per class, then give each instance copies.

    DRF builds a ModelSerializer's fields from the model, and deep-copies every declared field, for each instance; for
    a job's status, which nests five serializers and about fifty fields, that was half the route's py-spy samples
    (docs/experiments/benchmarks-history.md, "Status reads under ASGI"). The fields depend only on the class, so the
    first instance's are kept unbound, and each instance binds shallow copies of them (new objects sharing their
    settings). Only for output: a field's validators would be shared too.
    """

    def get_fields(self):
        built = type(self).__dict__.get("_fields_built")  # this class's own, not a parent's
        if built is None:
            built = super().get_fields()
            type(self)._fields_built = built
        return {name: _shallow_copy(field) for name, field in built.items()}


def _shallow_copy(field):
    copied = object.__new__(type(field))
    copied.__dict__.update(field.__dict__)
    return copied


class ProgressSerializer(FieldsBuiltOnce, serializers.Serializer):
    step = serializers.IntegerField(source="progress_step")
    total = serializers.IntegerField(source="progress_total")
    percent = serializers.FloatField()


class ParametersSerializer(FieldsBuiltOnce, serializers.ModelSerializer):
    """The request as resolved: defaults filled in, the seed drawn; `mode` follows from the inputs."""

    class Meta:
        model = Job
        fields = [*PARAMETER_FIELDS, "mode"]


class InputImageSerializer(serializers.Serializer):
    sha256 = serializers.CharField(help_text="generator.images.image_sha256 of the fitted pixels (the PNG manifest's)")
    url = serializers.CharField(help_text="the fitted PNG the job ran on")


class InputsSerializer(FieldsBuiltOnce, serializers.Serializer):
    """The job's input images as it ran on them: fitted to width × height (mask: mode L, white = repaint)."""

    init_image = serializers.SerializerMethodField()
    mask = serializers.SerializerMethodField()

    @extend_schema_field(InputImageSerializer(allow_null=True))
    def get_init_image(self, job: Job) -> dict | None:
        return self._input(job, "init_image", job.init_image_sha256)

    @extend_schema_field(InputImageSerializer(allow_null=True))
    def get_mask(self, job: Job) -> dict | None:
        return self._input(job, "mask", job.mask_sha256)

    def _input(self, job: Job, name: str, digest: str) -> dict | None:
        if not digest:
            return None
        kwargs = {"job_id": job.id, "name": name}
        return {"sha256": digest, "url": reverse("jobs:input", kwargs=kwargs, request=self.context.get("request"))}


class UploadSerializer(serializers.ModelSerializer):
    sha256 = serializers.CharField(help_text="SHA-256 of the stored PNG (EXIF orientation applied)")
    format = serializers.CharField(help_text="the format it was sent in: PNG, JPEG or WEBP")

    class Meta:
        model = Upload
        fields = ["id", "sha256", "width", "height", "format", "expires_at"]


class TimingsSerializer(FieldsBuiltOnce, serializers.ModelSerializer):
    run_seconds = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = ["created_at", "started_at", "finished_at", "run_seconds"]

    def get_run_seconds(self, job: Job) -> float | None:
        if job.started_at and job.finished_at:
            return round((job.finished_at - job.started_at).total_seconds(), 3)
        return None


class ImageSerializer(FieldsBuiltOnce, serializers.ModelSerializer):
    url = serializers.SerializerMethodField(
        help_text="the PNG: a presigned link straight to the object store, valid for IMAGE_URL_EXPIRES_SECONDS "
        "(403 after, or once altered), when the store is S3; otherwise this API's image route"
    )
    png_base64 = serializers.SerializerMethodField(
        help_text="null once the image has expired (`expired`), or while the object store does not answer"
    )
    expired = serializers.SerializerMethodField(
        help_text="true once the job's retention deleted the bytes (see the job's expires_at); the record stays"
    )

    class Meta:
        model = JobImage
        fields = ["index", "seed", "width", "height", "url", "png_base64", "expired"]

    def get_url(self, image: JobImage) -> str:
        if image.state == ImageState.STORED and store.is_object_store():
            return store.signed_url(image.file.name)
        kwargs = {"job_id": image.job_id, "index": image.index}
        return reverse("jobs:image", kwargs=kwargs, request=self.context.get("request"))

    def get_png_base64(self, image: JobImage) -> str | None:
        # An outage shows as null here, not as a failed answer: the status, the other fields and the url still serve.
        try:
            return base64.b64encode(selectors.image_png(image=image)).decode("ascii")
        except (selectors.ImageExpired, store.StoreUnavailable):
            return None

    def get_expired(self, image: JobImage) -> bool:
        return image.state == ImageState.EXPIRED


class JobSummarySerializer(FieldsBuiltOnce, serializers.ModelSerializer):
    """A job in a list: no image data."""

    url = serializers.SerializerMethodField()
    progress = ProgressSerializer(source="*", read_only=True)
    expires_at = serializers.DateTimeField(
        read_only=True,
        allow_null=True,
        help_text="when the images' bytes are deleted (JOB_RESULT_RETENTION_SECONDS after the job ended); null: kept",
    )

    class Meta:
        model = Job
        fields = [
            "id",
            "url",
            "status",
            "prompt",
            "model",
            "width",
            "height",
            "num_images",
            "progress",
            "created_at",
            "finished_at",
            "expires_at",
        ]

    def get_url(self, job: Job) -> str:
        return reverse("jobs:detail", kwargs={"job_id": job.id}, request=self.context.get("request"))


class JobDetailSerializer(JobSummarySerializer):
    """A job with its resolved parameters and, when it succeeded, its images as base64 PNG."""

    queue_position = serializers.SerializerMethodField(help_text="1 = next to run; null unless queued")
    parameters = ParametersSerializer(source="*", read_only=True)
    inputs = InputsSerializer(source="*", read_only=True)
    timings = TimingsSerializer(source="*", read_only=True)
    images = serializers.SerializerMethodField(help_text="null until the job has succeeded")

    class Meta:
        model = Job
        fields = [
            "id",
            "url",
            "status",
            "progress",
            "queue_position",
            "waiting_reason",
            "parameters",
            "inputs",
            "timings",
            "error",
            "attempts",
            "cancel_requested",
            "cached_from",
            "expires_at",
            "images",
        ]

    def get_queue_position(self, job: Job) -> int | None:
        return self.context.get("queue_position")

    @extend_schema_field(ImageSerializer(many=True, allow_null=True))
    def get_images(self, job: Job) -> list[dict] | None:
        if job.status != JobStatus.SUCCEEDED:
            return None
        return ImageSerializer(job.images.order_by("index"), many=True, context=self.context).data
