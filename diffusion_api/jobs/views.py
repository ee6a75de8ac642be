"""Thin views: parse, call a service or selector, shape the answer."""

import asyncio
import hashlib
import json

from adrf.views import APIView as AsyncAPIView
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection
from django.http import Http404, HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view, inline_serializer
from rest_framework import serializers, status
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

from diffusion_api.accounts import services as accounts
from diffusion_api.celery import app as celery_app
from diffusion_api.jobs import catalog, events, schema, selectors, services, store
from diffusion_api.jobs.models import TERMINAL_STATUSES, JobStatus
from diffusion_api.jobs.parsers import SafeJSONParser
from diffusion_api.jobs.queue import is_jobs_queue
from diffusion_api.jobs.serializers import (
    JobCreateSerializer,
    JobDetailSerializer,
    JobSummarySerializer,
    UploadSerializer,
)
from diffusion_api.jobs.throttling import FailOpenScopedRateThrottle, TokenUsernameThrottle
from generator.torch_free import LORA_WEIGHT_RANGE, SCHEDULERS, limits


def _get_job_or_404(request, job_id):
    job = selectors.job_get(user=request.user, job_id=job_id)
    if job is None:
        raise Http404("no such job")
    return job


def _detail(request, job, code=status.HTTP_200_OK, headers=None) -> Response:
    context = {"request": request, "queue_position": selectors.job_queue_position(job=job)}
    return Response(JobDetailSerializer(job, context=context).data, status=code, headers=headers)


class JobListCreateView(AsyncAPIView):
    """Async handlers (adrf) so that `Prefer: wait` holds no thread; the work itself runs in Django's thread."""

    throttle_scope = "job_create"

    @extend_schema(
        summary="Your jobs, newest first, without image data",
        operation_id="v1_jobs_list",
        parameters=[
            OpenApiParameter("status", str, enum=JobStatus.values, required=False),
            OpenApiParameter("page", int, required=False),
        ],
        responses={
            200: schema.paginated("PaginatedJobList", JobSummarySerializer(many=True)),
            400: schema.BAD_REQUEST,
            401: schema.detail("no token"),
            404: schema.detail("no such page"),
        },
    )
    async def get(self, request):
        return await sync_to_async(self.list_jobs)(request)

    def list_jobs(self, request):
        wanted = request.query_params.get("status")
        if wanted is not None and wanted not in JobStatus.values:
            raise ValidationError({"status": [f"must be one of {', '.join(JobStatus.values)}."]})
        jobs = selectors.job_list(user=request.user, status=wanted)
        paginator = PageNumberPagination()
        page = paginator.paginate_queryset(jobs, request, view=self)
        return paginator.get_paginated_response(
            JobSummarySerializer(page, many=True, context={"request": request}).data
        )

    @extend_schema(
        summary="Create a job; it is queued once stored",
        description="With `Prefer: wait` (or `wait=N`, N ≤ JOB_MAX_WAIT_SECONDS) the answer waits until the job "
        "ends (200 with the finished job) or N seconds pass (202 with the job as it stands); "
        "`Preference-Applied` says the wait granted.",
        request=JobCreateSerializer,
        parameters=[schema.IDEMPOTENCY_KEY, schema.PREFER_WAIT],
        examples=[schema.CREATE_EXAMPLE, schema.IMG2IMG_EXAMPLE, schema.INPAINT_EXAMPLE],
        responses={
            200: JobDetailSerializer,
            202: JobDetailSerializer,
            400: schema.BAD_REQUEST,
            401: schema.detail("no token"),
            404: schema.detail("init_image or mask names an upload that is not yours, or no longer exists"),
            413: schema.detail("request body too large"),
            422: schema.detail("Idempotency-Key reused with another body"),
            429: schema.detail("too many unfinished jobs, or created too fast; see Retry-After"),
            503: schema.detail("the queue is full, or the object store does not take an input image; see Retry-After"),
        },
    )
    async def post(self, request):
        wait = _prefer_wait(request)
        response = await sync_to_async(self.create_job)(request)
        if wait is None or response.status_code != status.HTTP_202_ACCEPTED:
            return response
        job_id = response.data["id"]
        if response.data["status"] not in TERMINAL_STATUSES:
            await events.wait_for_end(job_id, wait)
        job = await sync_to_async(selectors.job_get)(user=request.user, job_id=job_id)
        waited = await sync_to_async(_detail)(
            request, job, code=status.HTTP_200_OK if job.is_terminal else status.HTTP_202_ACCEPTED
        )
        for header in ("Location", "Idempotent-Replayed"):
            if header in response:
                waited[header] = response[header]
        waited["Preference-Applied"] = f"wait={wait}"
        return waited

    def create_job(self, request):
        if _body_bytes(request) > settings.JOB_MAX_BODY_BYTES and not _carries_images(request.data):
            # The middleware let the body through up to JOB_MAX_IMAGE_BODY_BYTES; only images may use that room.
            return _too_large(request, settings.JOB_MAX_BODY_BYTES, "without init_image or mask")
        serializer = JobCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 1 <= len(key) <= 255:
            raise ValidationError({"Idempotency-Key": ["must be 1 to 255 characters."]})
        try:
            submission = services.job_submit(
                owner=request.user,
                idempotency_key=key,
                request_fingerprint=_fingerprint(request.data),
                **serializer.validated_data,
            )
        except DjangoValidationError as error:
            raise ValidationError(error.message_dict) from error
        except services.UploadNotFound as error:
            raise Http404(str(error)) from error
        except services.IdempotencyMismatch as error:
            return Response({"detail": str(error)}, status=status.HTTP_422_UNPROCESSABLE_ENTITY)
        except services.CapacityExceeded as error:
            code = status.HTTP_503_SERVICE_UNAVAILABLE if error.whole_service else status.HTTP_429_TOO_MANY_REQUESTS
            return Response({"detail": str(error)}, status=code, headers={"Retry-After": str(error.retry_after)})
        except store.StoreUnavailable as error:  # an init image or mask could not be stored
            return _store_down(error)
        job = submission.job
        headers = {"Location": reverse("jobs:detail", kwargs={"job_id": job.id}, request=request)}
        if submission.replayed:
            headers["Idempotent-Replayed"] = "true"
        return _detail(request, job, code=status.HTTP_202_ACCEPTED, headers=headers)

    def get_throttles(self):
        return [FailOpenScopedRateThrottle()] if self.request.method == "POST" else []


def _prefer_wait(request) -> int | None:
    """Seconds the client asks to wait for the job (RFC 7240 `Prefer: wait=N`, or `wait` alone for the most),
    within JOB_MAX_WAIT_SECONDS; None without a wait preference."""
    for preference in request.headers.get("Prefer", "").split(","):
        name, _, value = preference.strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        if not value.strip():
            return settings.JOB_MAX_WAIT_SECONDS
        try:
            seconds = int(value.strip().strip('"'))
        except ValueError:
            raise ValidationError({"Prefer": ["wait=N takes a whole number of seconds."]}) from None
        if seconds < 0:
            raise ValidationError({"Prefer": ["wait=N takes a whole number of seconds."]})
        return min(seconds, settings.JOB_MAX_WAIT_SECONDS)
    return None


def _store_down(error: store.StoreUnavailable) -> Response:
    return Response(
        {"detail": f"the object store does not answer: {error}"},
        status=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(settings.JOB_RETRY_AFTER)},
    )


def _body_bytes(request) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def _carries_images(data) -> bool:
    return isinstance(data, dict) and bool({"init_image", "mask"} & set(data))


def _too_large(request, limit: int, why: str) -> Response:
    detail = f"request body is {_body_bytes(request)} bytes; at most {limit} allowed {why}"
    return Response({"detail": detail}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)


def _fingerprint(data) -> str:
    """The same JSON body, whatever its key order or spacing, gives the same fingerprint."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class JobDetailView(APIView):
    @extend_schema(
        summary="A job: status, progress, queue position, parameters, timings, images when done",
        examples=[schema.DETAIL_EXAMPLE],
        responses={200: JobDetailSerializer, 401: schema.detail("no token"), 404: schema.detail("no such job")},
    )
    def get(self, request, job_id):
        return _detail(request, _get_job_or_404(request, job_id))


class EventStreamRenderer(BaseRenderer):
    """Lets a client that accepts only text/event-stream (a browser's EventSource) reach the events route."""

    media_type = "text/event-stream"
    format = "sse"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return json.dumps(data).encode() if data is not None else b""


class JobEventsView(AsyncAPIView):
    renderer_classes = [JSONRenderer, EventStreamRenderer]

    @extend_schema(
        summary="Server-Sent Events of a job: snapshot, queue position, progress, previews, the final job",
        description="Events: `snapshot` on connect, `queued` (queue position) while waiting, `progress` (step, total, "
        "percent, eta_seconds, and `at`: the worker's clock, Unix seconds, when it published), `preview` with "
        "`?previews=1` (a small PNG in `png_base64`, at most every JOB_PREVIEW_INTERVAL seconds; needs Redis), and "
        "`end` with the job as GET jobs/{id}/ shows it; then the stream closes. Each event has an `id`: reconnecting "
        "with `Last-Event-ID` skips a snapshot the client already has. A comment line every 15 s keeps proxies from "
        "closing an idle stream.",
        parameters=[OpenApiParameter("previews", bool, required=False)],
        responses={
            (200, "text/event-stream"): OpenApiTypes.STR,
            401: schema.detail("no token"),
            404: schema.detail("no such job"),
        },
    )
    async def get(self, request, job_id):
        await sync_to_async(_get_job_or_404)(request, job_id)
        previews = request.query_params.get("previews", "").lower() in ("1", "true", "yes")
        last_event_id = request.headers.get("Last-Event-ID")
        response = StreamingHttpResponse(
            _event_stream(request, job_id, previews=previews, last_event_id=last_event_id),
            content_type="text/event-stream",
        )
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
        return response


KEEPALIVE_SECONDS = 15.0


async def _event_stream(request, job_id, *, previews: bool, last_event_id: str | None):
    """SSE frames of events.follow, with a keep-alive comment when nothing happened for KEEPALIVE_SECONDS."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump() -> None:
        try:
            async for event in events.follow(job_id, previews=previews, last_event_id=last_event_id):
                await queue.put(event)
        finally:
            await queue.put(None)

    task = asyncio.get_running_loop().create_task(pump())
    try:
        yield "retry: 2000\n\n"
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if event is None:
                return
            data = event.data
            if event.type == "end":
                job = await sync_to_async(selectors.job_get)(user=request.user, job_id=job_id)
                detail = await sync_to_async(_detail)(request, job)
                data = {**data, "job": detail.data}
            yield f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(data, cls=DjangoJSONEncoder)}\n\n"
    finally:
        task.cancel()


class JobCancelView(APIView):
    @extend_schema(
        summary="Cancel: a queued job ends at once, a running one at its next step",
        request=None,
        responses={
            202: JobDetailSerializer,
            401: schema.detail("no token"),
            404: schema.detail("no such job"),
            409: schema.detail("the job has already ended"),
        },
    )
    def post(self, request, job_id):
        job = _get_job_or_404(request, job_id)
        try:
            job = services.job_cancel(job=job)
        except services.JobConflict as error:
            return Response({"detail": str(error)}, status=status.HTTP_409_CONFLICT)
        return _detail(request, job, code=status.HTTP_202_ACCEPTED)


class JobImageView(APIView):
    @extend_schema(
        summary="One image of a succeeded job, as PNG",
        operation_id="v1_jobs_image_retrieve",
        responses={
            (200, "image/png"): OpenApiTypes.BINARY,
            401: schema.detail("no token"),
            404: schema.detail("no such job or image, or the image's bytes are missing from the store"),
            410: schema.detail("the image expired: its job's retention deleted the bytes (the record stays)"),
            503: schema.detail("the object store does not answer; see Retry-After"),
        },
    )
    def get(self, request, job_id, index):
        job = _get_job_or_404(request, job_id)
        image = selectors.job_image(job=job, index=index) if job.status == JobStatus.SUCCEEDED else None
        if image is None:
            raise Http404("no such image")
        try:
            png = selectors.image_png(image=image)
        except selectors.ImageExpired as error:
            return Response({"detail": str(error)}, status=status.HTTP_410_GONE)
        except store.ObjectMissing as error:  # lost, not late: a 503 would ask the client to try again
            raise Http404("the image's bytes are missing from the store") from error
        except store.StoreUnavailable as error:
            return _store_down(error)
        response = HttpResponse(png, content_type="image/png")
        response["Content-Disposition"] = f'inline; filename="{job.id}-{index}.png"'
        return response


class JobInputView(APIView):
    @extend_schema(
        summary="An input image of a job (init_image, or mask), as fitted to the job's size, as PNG",
        operation_id="v1_jobs_input_retrieve",
        parameters=[OpenApiParameter("name", str, OpenApiParameter.PATH, enum=["init_image", "mask"])],
        responses={
            (200, "image/png"): OpenApiTypes.BINARY,
            401: schema.detail("no token"),
            404: schema.detail("no such job or input, or the input's bytes are missing from the store"),
            503: schema.detail("the object store does not answer; see Retry-After"),
        },
    )
    def get(self, request, job_id, name):
        job = _get_job_or_404(request, job_id)
        stored = job.init_image if name == "init_image" else job.mask_image if name == "mask" else None
        if not stored:
            raise Http404("no such input")
        try:
            response = HttpResponse(store.read(stored.name), content_type="image/png")
        except store.ObjectMissing as error:
            raise Http404("the input's bytes are missing from the store") from error
        except store.StoreUnavailable as error:
            return _store_down(error)
        response["Content-Disposition"] = f'inline; filename="{job.id}-{name}.png"'
        return response


class UploadCreateView(APIView):
    parser_classes = [MultiPartParser]

    @extend_schema(
        summary="Upload an input image once (PNG, JPEG or WebP) to reference from jobs as {\"upload\": id}",
        description="The image is checked without decoding more pixels than UPLOAD_MAX_PIXELS, its EXIF "
        "orientation applied, and stored as PNG under its SHA-256. It belongs to you (another user's id is a 404) "
        "and can be referenced until `expires_at` (UPLOAD_RETENTION).",
        request={"multipart/form-data": schema.UploadRequest},
        responses={
            201: UploadSerializer,
            400: schema.BAD_REQUEST,
            401: schema.detail("no token"),
            413: schema.detail("request body too large"),
            415: schema.detail("the body is not multipart/form-data"),
            503: schema.detail("the object store does not answer; see Retry-After"),
        },
    )
    def post(self, request):
        file = request.FILES.get("file")
        if file is None:
            raise ValidationError({"file": ["a multipart field `file` with the image is required."]})
        if file.size > settings.JOB_MAX_IMAGE_BODY_BYTES:
            return _too_large(request, settings.JOB_MAX_IMAGE_BODY_BYTES, "(JOB_MAX_IMAGE_BODY_BYTES)")
        try:
            upload = services.upload_create(owner=request.user, data=file.read())
        except DjangoValidationError as error:
            raise ValidationError(error.message_dict) from error
        except store.StoreUnavailable as error:
            return _store_down(error)
        return Response(UploadSerializer(upload).data, status=status.HTTP_201_CREATED)


class ModelsView(APIView):
    @extend_schema(
        summary="Models, their defaults, and the request limits",
        responses={200: schema.ModelsAnswer, 401: schema.detail("no token")},
    )
    def get(self, request):
        models = []
        served = selectors.models_served()
        for name in catalog.model_names(request.user):
            try:
                info = catalog.model_info(name, request.user)
            except catalog.ModelUnavailable as error:
                models.append({"name": name, "ready": False, "detail": str(error)})
                continue
            record = catalog.model_record(name)
            models.append(
                {
                    "name": name,
                    "ready": True,
                    "default": name == settings.DEFAULT_MODEL,
                    "kind": record.kind if record else None,
                    "inpainting": record.inpainting if record else False,
                    "defaults": vars(info.defaults),
                    "limits": catalog.model_limits(name),
                    "size_multiple_of": info.vae_scale_factor,
                    "max_prompt_tokens": info.max_prompt_tokens,
                    "served": served is None or name in served,  # a live worker serves it
                }
            )

        def highest(field: str):  # the table's maximum as this deployment's settings lower it
            return limits.bounds(field, settings)[1]

        answer = {
            "max_pixels": settings.JOB_MAX_PIXELS,
            "max_side": limits.max_side(settings),
            "max_steps": highest("steps"),
            "max_images": highest("num_images"),
            "max_prompt_chars": highest("prompt"),
            "max_guidance_scale": highest("guidance_scale"),
        }
        return Response({"models": models, "limits": answer})


class LorasView(APIView):
    @extend_schema(
        summary="LoRAs a job may apply (`loras: [{name, weight}]`)",
        responses={200: schema.LorasAnswer, 401: schema.detail("no token")},
    )
    def get(self, request):
        loras = [catalog.lora_record(name, request.user) for name in catalog.lora_names(request.user)]
        return Response(
            {
                "loras": [
                    {"name": x.name, "kind": x.base_kind, "format": x.format, "rank": x.rank, "sha256": x.sha256}
                    for x in loras
                ],
                "weight_range": list(LORA_WEIGHT_RANGE),
            }
        )


class SchedulersView(APIView):
    @extend_schema(
        summary="Scheduler names and their diffusers classes",
        responses={200: schema.SchedulersAnswer, 401: schema.detail("no token")},
    )
    def get(self, request):
        return Response(
            {
                "schedulers": [
                    {"name": name, "class": cls, "settings": extra} for name, (cls, extra) in SCHEDULERS.items()
                ]
            }
        )


class HealthView(APIView):
    """Database, broker, object store and workers, each on its own; 503 when the database or broker is down.

    A store that does not answer makes the service degraded, not down: jobs still end, their images held in the
    database until the store takes them.
    """

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        summary="Database, broker, object store and workers, each on its own",
        auth=[],
        responses={200: schema.HealthAnswer, 503: schema.HealthAnswer},
    )
    def get(self, request):
        checks = {"database": _check_database(), "broker": _check_broker(), "storage": store.check()}
        if checks["database"]["ok"]:
            checks["storage"]["held_images"] = selectors.images_held_count()
        checks["workers"] = _check_workers() if checks["database"]["ok"] else {"ok": False, "detail": "database down"}
        healthy = checks["database"]["ok"] and checks["broker"]["ok"]
        whole = healthy and checks["workers"]["ok"] and checks["storage"]["ok"]
        return Response(
            {"status": "ok" if whole else "degraded" if healthy else "down", **checks},
            status=status.HTTP_200_OK if healthy else status.HTTP_503_SERVICE_UNAVAILABLE,
        )


def _check_database() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"ok": True}
    except Exception as error:
        return {"ok": False, "detail": f"{type(error).__name__}: {error}"}


def _check_broker() -> dict:
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return {"ok": True, "transport": conn.transport_cls if isinstance(conn.transport_cls, str) else "custom"}
    except Exception as error:
        return {"ok": False, "detail": f"{type(error).__name__}: {error}"}


def _check_workers() -> dict:
    alive = list(selectors.workers_alive().values("hostname", "last_seen", "models", "queues", "engine"))
    job_workers = [w for w in alive if any(is_jobs_queue(queue) for queue in w["queues"])]
    # Models with queued jobs that no live worker serves: those jobs wait until one starts.
    unserved = selectors.models_waiting_for_a_worker()
    return {
        "ok": bool(job_workers),
        "alive": len(alive),
        "job_workers": len(job_workers),
        "workers": alive,
        "unserved_models": unserved,
    }


@extend_schema_view(
    post=extend_schema(
        summary="username + password → a new token, shown only in this answer",
        description="Each call issues a new key; earlier keys stay valid (the user's newest TOKEN_MAX_PER_USER). "
        "Limited per client address and per username (429 with Retry-After).",
        auth=[],
        responses={
            200: inline_serializer("Token", {"token": serializers.CharField()}),
            400: schema.BAD_REQUEST,
            415: schema.detail("the body is not JSON, form or multipart data"),
            429: schema.detail("too many attempts; see Retry-After"),
        },
    )
)
class TokenView(ObtainAuthToken):
    """username + password → a new token, shown this once (only its digest is stored).

    Throttled per client address and per username. DRF checks throttles before the view runs, so a refused attempt
    costs no password hash: a guesser cannot turn the slow hasher against the server.
    """

    renderer_classes = [JSONRenderer]
    # ObtainAuthToken names DRF's stock JSONParser itself; the API's parser refuses deep nesting with a 400.
    parser_classes = [FormParser, MultiPartParser, SafeJSONParser]
    throttle_classes = [FailOpenScopedRateThrottle, TokenUsernameThrottle]
    throttle_scope = "token"

    def post(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return Response({"token": accounts.token_issue(user=serializer.validated_data["user"])})
