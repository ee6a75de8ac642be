"""A1111's /sdapi/v1/ routes. Each txt2img/img2img request becomes a job of the native service (same validation,
limits, quotas, cache and review), created with protocol a1111; the request then waits for its job's end without
holding a thread (adrf's async view, events.wait_for_end) and answers as A1111 does."""

import base64
import hashlib
import json
from pathlib import Path

from adrf.views import APIView
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.reverse import reverse

from diffusion_api.a1111 import errors, mapping, schema
from diffusion_api.a1111.authentication import LimitedBasicAuthentication
from diffusion_api.a1111.models import UserOptions
from diffusion_api.accounts.authentication import BearerTokenAuthentication, HashedTokenAuthentication
from diffusion_api.jobs import catalog, events, inputs, selectors, services, store
from diffusion_api.jobs.models import Job, JobProtocol, JobStatus
from diffusion_api.jobs.serializers import JobCreateSerializer
from diffusion_api.jobs.throttling import FailOpenScopedRateThrottle

ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)


class A1111View(APIView):
    """Token, Bearer or Basic auth; errors in A1111's shapes."""

    authentication_classes = [HashedTokenAuthentication, BearerTokenAuthentication, LimitedBasicAuthentication]

    def get_exception_handler(self):
        return errors.handle

    def get_authenticate_header(self, request):
        return 'Basic realm="sdapi"'


def _body_bytes(request) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def _too_large(request, limit: int) -> Response | None:
    if _body_bytes(request) <= limit:
        return None
    detail = f"request body is {_body_bytes(request)} bytes; at most {limit} allowed"
    return errors.error(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, "HTTPException", detail)


def _user_model(user) -> str | None:
    options = UserOptions.objects.filter(user=user).values_list("options", flat=True).first() or {}
    return mapping.model_for(options.get("sd_model_checkpoint"))


def _submit(user, data, *, img2img: bool):
    """Map, validate with the native serializer and submit: the job, or a Response refusing it."""
    native = mapping.to_native(data, img2img=img2img, user_model=_user_model(user))
    serializer = JobCreateSerializer(data=native)
    if not serializer.is_valid():
        raise mapping.A1111Invalid(mapping.a1111_errors(serializer.errors))
    fingerprint = hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    try:
        submission = services.job_submit(
            owner=user, request_fingerprint=fingerprint, protocol=JobProtocol.A1111, **serializer.validated_data
        )
    except DjangoValidationError as error:
        raise mapping.A1111Invalid(mapping.a1111_errors(error.message_dict)) from error
    except services.CapacityExceeded as error:
        code = status.HTTP_503_SERVICE_UNAVAILABLE if error.whole_service else status.HTTP_429_TOO_MANY_REQUESTS
        return errors.error(code, "HTTPException", str(error), {"Retry-After": str(error.retry_after)})
    except store.StoreUnavailable as error:  # the init image or mask could not be stored: nothing was queued
        return _store_down(error)
    return submission.job


def _answer(job_id, data: dict, *, img2img: bool) -> Response:
    """A1111's answer for an ended job: images, the parameters as received, and info as a JSON string."""
    job = Job.objects.get(id=job_id)
    if job.status == JobStatus.FAILED:
        return errors.error(status.HTTP_500_INTERNAL_SERVER_ERROR, "JobFailed", f"job {job.id} failed: {job.error}")
    parameters = dict(data)
    if img2img:
        parameters.update(init_images=None, mask=None)  # as A1111 answers without include_init_images
    if job.status != JobStatus.SUCCEEDED:  # canceled: interrupted or skipped
        info = mapping.info(job, infotexts=[], interrupted=True)
        return Response({"images": [], "parameters": parameters, "info": json.dumps(info)})
    texts, images = [], []
    for image in job.images.order_by("index"):
        text = mapping.infotext(job, image.index)
        texts.append(text)
        try:
            png = selectors.image_png(image=image)
        except selectors.ImageExpired as error:
            return errors.error(status.HTTP_410_GONE, "HTTPException", str(error))
        except store.StoreUnavailable as error:
            return _store_down(error)
        images.append(base64.b64encode(mapping.with_parameters_chunk(png, text)).decode("ascii"))
    if data.get("send_images") is False:
        images = []
    return Response(
        {"images": images, "parameters": parameters, "info": json.dumps(mapping.info(job, infotexts=texts))}
    )


def _store_down(error: store.StoreUnavailable) -> Response:
    detail = f"the object store does not answer: {error}"
    headers = {"Retry-After": str(settings.JOB_RETRY_AFTER)}
    return errors.error(status.HTTP_503_SERVICE_UNAVAILABLE, "HTTPException", detail, headers)


GENERATION_RESPONSES = {
    200: OpenApiResponse(schema.GenerationAnswer, description="the job ended: its images (none if interrupted)"),
    401: schema.UNAUTHORIZED,
    413: schema.error("request body too large"),
    422: schema.INVALID,
    429: schema.error("too many unfinished jobs, or created too fast; see Retry-After"),
    410: schema.error("the job's images expired (JOB_RESULT_RETENTION_SECONDS) before the answer"),
    500: schema.error("the job failed (its error is in detail)"),
    503: schema.error("the queue is full, or the object store does not answer; see Retry-After"),
    202: schema.error("the job did not end within A1111_WAIT_SECONDS; it goes on: Location and detail name it"),
}


class GenerationView(A1111View):
    img2img = False
    throttle_scope = "job_create"

    def get_throttles(self):
        return [FailOpenScopedRateThrottle()]

    async def post(self, request):
        limit = settings.JOB_MAX_IMAGE_BODY_BYTES if self.img2img else settings.JOB_MAX_BODY_BYTES
        if refused := _too_large(request, limit):
            return refused
        data = request.data
        submitted = await sync_to_async(_submit)(request.user, data, img2img=self.img2img)
        if isinstance(submitted, Response):
            return submitted
        # The job is committed and queued: if the client goes away now, the job still runs to its end.
        if not await events.wait_for_end(submitted.id, settings.A1111_WAIT_SECONDS):
            url = reverse("jobs:detail", kwargs={"job_id": submitted.id}, request=request)
            detail = f"job {submitted.id} has not ended after {settings.A1111_WAIT_SECONDS} s; it goes on: GET {url}"
            return errors.error(status.HTTP_202_ACCEPTED, "TimeoutError", detail, {"Location": url})
        return await sync_to_async(_answer)(submitted.id, data, img2img=self.img2img)


class Txt2ImgView(GenerationView):
    @extend_schema(
        summary="txt2img: run a job and answer with its images when it ends",
        request=mapping.Txt2ImgRequest,
        responses=GENERATION_RESPONSES,
    )
    async def post(self, request):
        return await super().post(request)


class Img2ImgView(GenerationView):
    img2img = True

    @extend_schema(
        summary="img2img (inpainting with a mask): run a job and answer with its images when it ends",
        request=mapping.Img2ImgRequest,
        responses=GENERATION_RESPONSES,
    )
    async def post(self, request):
        return await super().post(request)


def _current_job(user) -> Job | None:
    """The caller's current /sdapi/ job: the running one started first, else the queued one created first."""
    mine = Job.objects.filter(owner=user, protocol=JobProtocol.A1111)
    return (
        mine.filter(status=JobStatus.RUNNING).order_by("started_at").first()
        or mine.filter(status=JobStatus.QUEUED).order_by("created_at").first()
    )


class ProgressView(A1111View):
    @extend_schema(
        summary="Progress of your current /sdapi/ job (0 and job_count 0 when you have none)",
        parameters=[OpenApiParameter("skip_current_image", bool, required=False)],
        responses={200: schema.ProgressAnswer, 401: schema.UNAUTHORIZED},
    )
    def get(self, request):
        job = _current_job(request.user)
        count = Job.objects.filter(owner=request.user, protocol=JobProtocol.A1111, status__in=ACTIVE).count()
        state = {
            "skipped": False,
            "interrupted": bool(job and job.cancel_requested),
            "job": f"job {job.id}" if job else "",
            "job_count": count,
            "job_timestamp": job.created_at.strftime("%Y%m%d%H%M%S") if job else "0",
            "job_no": 0,
            "sampling_step": job.progress_step if job else 0,
            "sampling_steps": job.progress_total if job else 0,
        }
        progress, eta, text, image = 0.0, 0.0, None, None
        if job is not None and job.status == JobStatus.RUNNING:
            progress = job.progress_step / job.progress_total if job.progress_total else 0.0
            if progress > 0 and job.started_at:
                elapsed = (timezone.now() - job.started_at).total_seconds()
                eta = elapsed / progress - elapsed
            if request.query_params.get("skip_current_image", "false").lower() != "true":
                preview = events.latest_preview(job.id)
                image = base64.b64encode(preview).decode("ascii") if preview else None
            text = f"step {job.progress_step} of {job.progress_total}"
        elif job is not None:
            text = "queued"
        return Response(
            {"progress": progress, "eta_relative": eta, "state": state, "current_image": image, "textinfo": text}
        )


class CancelView(A1111View):
    def post(self, request):
        """Cancel the caller's queued and running /sdapi/ jobs (never anyone else's): a queued job ends at once, a
        running one at its next step; its waiting txt2img/img2img call then answers 200 with no images."""
        for job in Job.objects.filter(owner=request.user, protocol=JobProtocol.A1111, status__in=ACTIVE):
            try:
                services.job_cancel(job=job)
            except services.JobConflict:
                pass  # it ended meanwhile
        return Response({})


class InterruptView(CancelView):
    @extend_schema(
        summary="Stop your current /sdapi/ jobs (queued ones at once, a running one at its next step)",
        request=None,
        responses={200: OpenApiTypes.OBJECT, 401: schema.UNAUTHORIZED},
    )
    def post(self, request):
        return super().post(request)


class SkipView(CancelView):
    @extend_schema(
        summary="As interrupt: a job's images are made in one batch, so there is no single image to skip",
        request=None,
        responses={200: OpenApiTypes.OBJECT, 401: schema.UNAUTHORIZED},
    )
    def post(self, request):
        return super().post(request)


def _storable(value) -> bool:
    """Whether PostgreSQL's jsonb takes `value`: it refuses the NUL character, and UTF-8 refuses lone surrogates."""
    if isinstance(value, dict):
        return all(_storable(key) and _storable(item) for key, item in value.items())
    if isinstance(value, list):
        return all(_storable(item) for item in value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return "\x00" not in value
    return True


class OptionsView(A1111View):
    @extend_schema(
        summary="Your options: sd_model_checkpoint (your default model) and whatever else you stored",
        responses={200: OpenApiTypes.OBJECT, 401: schema.UNAUTHORIZED},
    )
    def get(self, request):
        stored = UserOptions.objects.filter(user=request.user).values_list("options", flat=True).first() or {}
        model = mapping.model_for(stored.get("sd_model_checkpoint")) or settings.DEFAULT_MODEL
        return Response({**stored, "sd_model_checkpoint": mapping.model_title(model), "sd_checkpoint_hash": None})

    @extend_schema(
        summary="Store options; sd_model_checkpoint (a model name or title) sets your default model",
        request=OpenApiTypes.OBJECT,
        responses={
            200: OpenApiTypes.BOOL,
            401: schema.UNAUTHORIZED,
            413: schema.error("request body too large"),
            422: schema.INVALID,
        },
    )
    def post(self, request):
        if refused := _too_large(request, settings.JOB_MAX_BODY_BYTES):
            return refused
        data = request.data
        if not isinstance(data, dict):
            raise mapping.A1111Invalid({"": ["the body must be a JSON object"]})
        data = {key: value for key, value in data.items() if key != "sd_checkpoint_hash"}
        if not _storable(data):
            raise mapping.A1111Invalid({"": ["options must not contain NUL characters or unpaired surrogates"]})
        if "sd_model_checkpoint" in data:
            model = mapping.model_for(data["sd_model_checkpoint"])
            if model is None:
                available = ", ".join(catalog.model_names())
                raise mapping.A1111Invalid(
                    {"sd_model_checkpoint": [f"unknown model {data['sd_model_checkpoint']!r}; available: {available}"]}
                )
            data["sd_model_checkpoint"] = model
        options, _ = UserOptions.objects.get_or_create(user=request.user)
        options.options = {**options.options, **data}
        options.save(update_fields=["options", "updated_at"])
        return Response(True)


class SdModelsView(A1111View):
    @extend_schema(summary="The models", responses={200: schema.SdModel.__class__(many=True), 401: schema.UNAUTHORIZED})
    def get(self, request):
        return Response(
            [
                {
                    "title": mapping.model_title(name),
                    "model_name": name,
                    "hash": mapping.model_hash(name),
                    "sha256": getattr(catalog.model_record(name), "sha256", None) or None,
                    "filename": name,
                    "config": None,
                }
                for name in catalog.model_names(request.user)
            ]
        )


def _list_view(summary: str, item, produce):
    class ListView(A1111View):
        @extend_schema(summary=summary, responses={200: item, 401: schema.UNAUTHORIZED})
        def get(self, request):
            return Response(produce())

    return ListView


SamplersView = _list_view(
    "A1111 samplers that map to a scheduler here", schema.Sampler.__class__(many=True), mapping.sampler_names
)
SchedulersView = _list_view(
    "Schedule types (Karras with DPM++ 2M only)",
    schema.Scheduler.__class__(many=True),
    lambda: [
        {"name": name, "label": label, "aliases": None, "default_rho": -1.0, "need_inner_model": False}
        for name, label in mapping.SCHEDULE_TYPES
    ],
)
UpscalersView = _list_view(
    "Pixel-space upscalers for hr_upscaler",
    schema.Upscaler.__class__(many=True),
    lambda: [{"name": "Lanczos", "model_name": None, "model_path": None, "model_url": None, "scale": 4.0}],
)
LatentUpscaleModesView = _list_view(
    "Latent upscale modes for hr_upscaler",
    schema.NameOnly.__class__(many=True),
    lambda: [{"name": name} for name in mapping.LATENT_UPSCALE_MODES],
)
class LorasView(A1111View):
    @extend_schema(
        summary="The registry's LoRAs this user may apply, as <lora:name:weight> in a prompt",
        responses={200: schema.Lora.__class__(many=True), 401: schema.UNAUTHORIZED},
    )
    def get(self, request):
        return Response(
            [
                {"name": name, "alias": name, "path": Path(catalog.lora_record(name).path).name, "metadata": {}}
                for name in catalog.lora_names(request.user)
            ]
        )
ScriptsView = _list_view("Scripts (none)", schema.Scripts, lambda: {"txt2img": [], "img2img": []})


class PngInfoView(A1111View):
    @extend_schema(
        summary="The text chunks of a PNG, its `parameters` infotext parsed",
        request=schema.PngInfoRequest,
        responses={
            200: schema.PngInfoAnswer,
            401: schema.UNAUTHORIZED,
            413: schema.error("request body too large"),
            422: schema.INVALID,
        },
    )
    def post(self, request):
        if refused := _too_large(request, settings.JOB_MAX_IMAGE_BODY_BYTES):
            return refused
        data = request.data
        text = data.get("image") if isinstance(data, dict) else None
        if not isinstance(text, str):
            raise mapping.A1111Invalid({"image": ["a base64 image (raw or a data: URI) is required"]})
        if not text.strip():
            return Response({"info": "", "items": {}, "parameters": {}})
        try:
            image = inputs.open_checked(inputs.decode_base64(text))[0]
        except inputs.ImageRefused as error:
            raise mapping.A1111Invalid({"image": [str(error)]}) from error
        items = {
            key: str(value) for key, value in image.info.items() if isinstance(key, str) and isinstance(value, str)
        }
        info = items.pop("parameters", "")
        return Response({"info": info, "items": items, "parameters": mapping.parse_parameters(info) if info else {}})
