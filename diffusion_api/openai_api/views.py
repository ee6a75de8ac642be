"""OpenAI's Images API: each request becomes a job of the native API, and the answer waits for it.

The image routes are asynchronous (adrf): a waiting request holds a coroutine, not a thread, and every database
call goes through sync_to_async. A client that goes away leaves its job running; a retry finds it again (_submit).
"""

import asyncio
import base64
import hashlib
import json
import time
from datetime import timedelta

from adrf.views import APIView as AsyncAPIView
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core import signing
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import HttpResponse, StreamingHttpResponse
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from diffusion_api.accounts.authentication import BearerTokenAuthentication
from diffusion_api.jobs import catalog, events, selectors, services, store
from diffusion_api.jobs.models import Job, JobImage, JobProtocol, JobStatus
from diffusion_api.jobs.parsers import SafeJSONParser
from diffusion_api.jobs.throttling import FailOpenScopedRateThrottle
from diffusion_api.openai_api import errors, mapping, schema
from diffusion_api.openai_api.errors import SERVER_ERROR, OpenAIError

URL_SALT = "openai-image-url"
OWNED_BY = "diffusion-api"


class OpenAIMixin:
    """OpenAI's protocol: the service's tokens as `Authorization: Bearer <token>` (the native API keeps `Token
    <key>`), and OpenAI's error envelope for every refusal."""

    authentication_classes = [BearerTokenAuthentication]

    def get_exception_handler(self):
        return errors.handle


class ImagesView(OpenAIMixin, AsyncAPIView):
    route = mapping.GENERATIONS
    event_prefix = "image_generation"
    throttle_scope = "job_create"

    def get_throttles(self):
        return [FailOpenScopedRateThrottle()]

    async def post(self, request):
        data, files = self._body(request)
        parsed = mapping.parse(self.route, data, files)
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 1 <= len(key) <= 255:
            raise OpenAIError("Idempotency-Key must be 1 to 255 characters.", param="Idempotency-Key")
        job = await sync_to_async(_submit)(
            request.user, parsed, key=key, fingerprint=_fingerprint(self.route, data, files), tries=_tries(request)
        )
        if parsed.stream:
            stream = _stream(job, parsed, self.event_prefix, _wait_seconds(request))
            return StreamingHttpResponse(
                stream,
                content_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        ended = await events.wait_for_end(job.id, _wait_seconds(request))
        job, images = await sync_to_async(_outcome)(job.id)
        if not ended:
            raise _timeout(job)
        if job.status != JobStatus.SUCCEEDED:
            raise _failure(job)
        return Response(await sync_to_async(_images_answer)(request, job, images, parsed.response_format))

    def _body(self, request) -> tuple[dict, dict | None]:
        if _body_bytes(request) > settings.JOB_MAX_BODY_BYTES:
            raise OpenAIError(
                f"The request body is {_body_bytes(request)} bytes; at most {settings.JOB_MAX_BODY_BYTES}.",
                status_code=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                code="request_too_large",
            )
        return request.data, None


class GenerationsView(ImagesView):
    parser_classes = [SafeJSONParser]

    @extend_schema(
        summary="Create images from a prompt (OpenAI's images.generate)",
        operation_id="openai_images_generate",
        request=schema.GenerationRequest,
        parameters=[schema.IDEMPOTENCY_KEY],
        examples=[schema.GENERATION_EXAMPLE],
        responses={200: schema.ImagesResponse, (200, "text/event-stream"): schema.STREAM, **schema.IMAGE_ERRORS},
    )
    async def post(self, request):
        return await super().post(request)


class MultipartImagesView(ImagesView):
    parser_classes = [MultiPartParser, FormParser]

    def _body(self, request) -> tuple[dict, dict]:
        if _body_bytes(request) > settings.JOB_MAX_IMAGE_BODY_BYTES:
            raise OpenAIError(
                f"The request with its images is {_body_bytes(request)} bytes; at most "
                f"{settings.JOB_MAX_IMAGE_BODY_BYTES} (JOB_MAX_IMAGE_BODY_BYTES).",
                param="image",
                code="image_too_large",
            )
        files = {name: request.FILES.getlist(name) for name in request.FILES}
        return {name: request.data.get(name) for name in request.data if name not in files}, files


class EditsView(MultipartImagesView):
    route = mapping.EDITS
    event_prefix = "image_edit"

    @extend_schema(
        summary="Repaint an image: inpainting where the mask is transparent, img2img without a mask",
        operation_id="openai_images_edit",
        request={"multipart/form-data": schema.EditRequest},
        parameters=[schema.IDEMPOTENCY_KEY],
        responses={200: schema.ImagesResponse, (200, "text/event-stream"): schema.STREAM, **schema.IMAGE_ERRORS},
    )
    async def post(self, request):
        return await super().post(request)


class VariationsView(MultipartImagesView):
    route = mapping.VARIATIONS

    @extend_schema(
        summary="Variations of an image: img2img at OPENAI_VARIATION_STRENGTH under OPENAI_VARIATION_PROMPT",
        operation_id="openai_images_variations",
        request={"multipart/form-data": schema.VariationRequest},
        parameters=[schema.IDEMPOTENCY_KEY],
        responses={200: schema.ImagesResponse, **schema.IMAGE_ERRORS},
    )
    async def post(self, request):
        return await super().post(request)


def _body_bytes(request) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def _tries(request) -> int:
    """How many times the official client has tried this request before (x-stainless-retry-count)."""
    try:
        return max(int(request.headers.get("x-stainless-retry-count", "0")), 0)
    except ValueError:
        return 0


def _wait_seconds(request) -> float:
    """OPENAI_WAIT_SECONDS, or less when the client says it gives up sooner (x-stainless-read-timeout): it then
    reads a 504 naming the job rather than a dropped connection, and its retry finds the same job."""
    wait = settings.OPENAI_WAIT_SECONDS
    try:
        read_timeout = float(request.headers.get("x-stainless-read-timeout", "inf"))
    except ValueError:
        return wait
    return max(min(wait, read_timeout - 2), 0)


def _fingerprint(route: str, data: dict, files: dict | None) -> str:
    """The same route and body (files by content) give the same fingerprint, whatever the key order."""
    digests = {}
    for name, uploads in (files or {}).items():
        digests[name] = [hashlib.sha256(_content(upload)).hexdigest() for upload in uploads]
    body = json.dumps([route, data, digests], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def _content(upload) -> bytes:
    upload.seek(0)
    content = upload.read()
    upload.seek(0)
    return content


def _submit(user, parsed: mapping.Request, *, key: str | None, fingerprint: str, tries: int) -> Job:
    """The job for this request: a new one, or the one an earlier try of the same request made.

    The official client retries timeouts, 408, 409, 429 and 5xx without an idempotency key. So without one, the same
    body from the same user within OPENAI_RETRY_WINDOW seconds is a retry, and so is one that says it is
    (x-stainless-retry-count > 0) within that window plus OPENAI_WAIT_SECONDS per earlier try (each waited at most
    that long). A failed or canceled job is not reused: a retry runs it again. services.job_submit looks for the
    earlier try under its lock on the user, so two tries cannot both miss the job.
    """
    earlier = None if key is not None else lambda: _earlier_try(user, fingerprint, tries)
    mapping.check_model(parsed.fields.get("model"), user)
    try:
        return services.job_submit(
            owner=user,
            idempotency_key=key,
            request_fingerprint=fingerprint,
            earlier=earlier,
            protocol=JobProtocol.OPENAI,
            **parsed.fields,
        ).job
    except DjangoValidationError as error:
        raise mapping.refusal(error.message_dict) from error
    except services.IdempotencyMismatch as error:
        raise OpenAIError(
            str(error),
            status_code=status.HTTP_422_UNPROCESSABLE_ENTITY,
            param="Idempotency-Key",
            code="idempotency_key_reused",
        ) from error
    except services.CapacityExceeded as error:
        full = error.whole_service  # the service is full (503), or this user has too many unfinished jobs (429)
        raise OpenAIError(
            str(error),
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE if full else status.HTTP_429_TOO_MANY_REQUESTS,
            type=SERVER_ERROR if full else "requests",
            code="queue_full" if full else "rate_limit_exceeded",
            headers={"Retry-After": str(error.retry_after)},
        ) from error
    except store.StoreUnavailable as error:  # the input image could not be stored: nothing was queued
        raise _store_down(error) from error


def _earlier_try(user, fingerprint: str, tries: int) -> Job | None:
    window = settings.OPENAI_RETRY_WINDOW + tries * settings.OPENAI_WAIT_SECONDS
    return (
        Job.objects.filter(
            owner=user,
            protocol=JobProtocol.OPENAI,
            request_fingerprint=fingerprint,
            created_at__gte=timezone.now() - timedelta(seconds=window),
        )
        .exclude(status__in=[JobStatus.FAILED, JobStatus.CANCELED])
        .order_by("-created_at")
        .first()
    )


def _outcome(job_id) -> tuple[Job, list[JobImage]]:
    job = Job.objects.get(id=job_id)
    images = list(job.images.order_by("index")) if job.status == JobStatus.SUCCEEDED else []
    return job, images


def _timeout(job: Job) -> OpenAIError:
    return OpenAIError(
        f"Job {job.id} did not end in time (it is {job.status}); it goes on: GET /api/v1/jobs/{job.id}/, or send "
        "the same request again to wait for it.",
        status_code=status.HTTP_504_GATEWAY_TIMEOUT,
        type=SERVER_ERROR,
        code="timeout",
    )


def _failure(job: Job) -> OpenAIError:
    """A failed or canceled job: a 500 that the client must not retry (it would run the job again)."""
    why = (job.error or "no reason recorded") if job.status == JobStatus.FAILED else "it was canceled"
    return OpenAIError(
        f"Job {job.id} {job.status}: {why}",
        status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
        type=SERVER_ERROR,
        code=f"job_{job.status}",
        headers={"x-should-retry": "false"},
    )


def _images_answer(request, job: Job, images: list[JobImage], response_format: str) -> dict:
    if response_format == "url":
        data = [{"url": _signed_url(request, job.id, image.index)} for image in images]
    else:
        data = [{"b64_json": base64.b64encode(_png(image)).decode("ascii")} for image in images]
    return {"created": int(job.created_at.timestamp()), "data": data, **_image_meta(job)}


def _png(image: JobImage) -> bytes:
    """An image's bytes, or the error that says why not: 410 once expired, 503 while the object store is down (the
    clients retry a 5xx)."""
    try:
        return selectors.image_png(image=image)
    except selectors.ImageExpired as error:
        raise OpenAIError(f"The {error}.", status_code=status.HTTP_410_GONE, code="image_expired") from error
    except store.StoreUnavailable as error:
        raise _store_down(error) from error


def _store_down(error: store.StoreUnavailable) -> OpenAIError:
    return OpenAIError(
        f"The object store does not answer: {error}",
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        type=SERVER_ERROR,
        code="storage_unavailable",
        headers={"Retry-After": str(settings.JOB_RETRY_AFTER)},
    )


def _image_meta(job: Job) -> dict:
    return {"size": f"{job.width}x{job.height}", "output_format": "png"}


def _signed_url(request, job_id, index: int) -> str:
    token = signing.dumps([str(job_id), index], salt=URL_SALT)
    path = reverse("openai:image-file", kwargs={"token": token})
    base = settings.PUBLIC_BASE_URL.rstrip("/")
    return f"{base}{path}" if base else request.build_absolute_uri(path)


USAGE = {
    "input_tokens": 0,
    "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
    "output_tokens": 0,
    "total_tokens": 0,
}  # the GPT image models' token counts: none here


async def _stream(job: Job, parsed: mapping.Request, prefix: str, timeout: float):
    """Server-Sent Events in OpenAI's shapes: up to `partial_images` previews spread over the steps, then one
    completed event per image, or an `error` event."""
    meta = {"background": "opaque", "output_format": "png", "quality": "auto", "size": f"{job.width}x{job.height}"}
    sent = 0
    try:
        async with asyncio.timeout(timeout):
            async for event in events.follow(job.id, previews=parsed.partial_images > 0):
                if event.type == "end":
                    break
                if event.type == "preview" and sent < parsed.partial_images and _due(event.data, sent, parsed):
                    partial = {"b64_json": event.data["png_base64"], "partial_image_index": sent}
                    yield _sse(f"{prefix}.partial_image", {**partial, **meta, "created_at": int(time.time())})
                    sent += 1
    except TimeoutError:
        job, _ = await sync_to_async(_outcome)(job.id)
        yield _sse("error", _timeout(job).body)
        return
    job, images = await sync_to_async(_outcome)(job.id)
    if job.status != JobStatus.SUCCEEDED:
        yield _sse("error", _failure(job).body)
        return
    try:
        pngs = await sync_to_async(lambda: [_png(image) for image in images])()
    except OpenAIError as error:
        yield _sse("error", error.body)
        return
    for png in pngs:
        b64 = base64.b64encode(png).decode("ascii")
        yield _sse(f"{prefix}.completed", {"b64_json": b64, **meta, "created_at": int(time.time()), "usage": USAGE})


def _due(data: dict, sent: int, parsed: mapping.Request) -> bool:
    """Preview k of N is sent once the job is (k + 1) / (N + 1) of the way through its steps."""
    step, total = data.get("step"), data.get("total")
    if not step or not total:
        return True
    return step * (parsed.partial_images + 1) >= (sent + 1) * total


def _sse(event: str, data: dict) -> str:
    """One event; its data names its type too, as OpenAI's do (the client reads the type from the data)."""
    if event != "error":
        data = {"type": event, **data}
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


class ImageFileView(APIView):
    """A `response_format: url` link: the PNG, without a token, while the signature is valid (OPENAI_URL_TTL).

    An expired or altered link is a 403, as the object store answers for its own presigned links.
    """

    authentication_classes = []
    permission_classes = [AllowAny]

    def get_exception_handler(self):
        return errors.handle

    @extend_schema(
        summary="An image of a `response_format: url` answer, as PNG, while its link is valid",
        operation_id="openai_image_file",
        auth=[],
        responses={
            (200, "image/png"): OpenApiTypes.BINARY,
            403: schema.error("the link expired, or was altered"),
            404: schema.error("no such image"),
            410: schema.error("the image expired: its job's retention deleted the bytes"),
            503: schema.error("the object store does not answer"),
        },
    )
    def get(self, request, token):
        try:
            job_id, index = signing.loads(token, salt=URL_SALT, max_age=settings.OPENAI_URL_TTL)
        except signing.SignatureExpired as error:
            raise OpenAIError("This image link has expired.", status_code=403, code="link_expired") from error
        except signing.BadSignature as error:
            raise OpenAIError("This image link is not valid.", status_code=403, code="invalid_signature") from error
        image = JobImage.objects.filter(job_id=job_id, index=index, job__status=JobStatus.SUCCEEDED).first()
        if image is None:
            raise OpenAIError("No such image.", status_code=404, code="not_found")
        return HttpResponse(_png(image), content_type="image/png")


class ModelsView(OpenAIMixin, APIView):
    @extend_schema(
        summary="The models this service offers, in OpenAI's list shape",
        operation_id="openai_models_list",
        responses={200: schema.ModelList, 401: schema.error("no token, or an unknown one")},
    )
    def get(self, request):
        return Response({"object": "list", "data": model_list(request.user)})


class ModelView(OpenAIMixin, APIView):
    @extend_schema(
        summary="One model, in OpenAI's shape",
        operation_id="openai_models_retrieve",
        parameters=[OpenApiParameter("model", str, OpenApiParameter.PATH)],
        responses={200: schema.Model, 401: schema.error("no token"), 404: schema.error("no such model")},
    )
    def get(self, request, model):
        found = [entry for entry in model_list(request.user) if entry["id"] == model]
        if not found:
            raise OpenAIError(
                f"The model '{model}' does not exist.", status_code=404, param="model", code="model_not_found"
            )
        return Response(found[0])


def model_list(user=None) -> list[dict]:
    """The catalog's models `user` may use, as OpenAI lists them (`created`: when the model's folder last changed)."""
    entries = []
    for name in catalog.model_names(user):
        try:
            path = catalog.model_path(name, user)
        except catalog.ModelUnavailable:  # broken: not listed, as OpenAI lists only what runs
            continue
        created = int(path.stat().st_mtime) if path.exists() else 0
        entries.append({"id": name, "object": "model", "created": created, "owned_by": OWNED_BY})
    return entries
