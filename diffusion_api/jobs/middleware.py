"""The project's middleware. Each runs in the mode of the chain around it (sync under WSGI, async under ASGI), so an
ASGI request goes through it without a hop to a thread (Django's MiddlewareMixin would hop once per hook)."""

import json

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.http import HttpResponse
from whitenoise.middleware import WhiteNoiseMiddleware

from diffusion_api.logs import job_id_var

# Routes whose bodies may carry images: up to JOB_MAX_IMAGE_BODY_BYTES here; the jobs view then holds a body with
# no image in it to JOB_MAX_BODY_BYTES.
IMAGE_BODY_PATHS = ("/api/v1/uploads/", "/api/v1/jobs/")


class _BothModes:
    """A middleware that runs sync or async, following `get_response`. Subclasses write `_answer(request)`: a response
    that ends the request here, or None to pass it on."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.async_mode:
            return self._acall(request)
        return self._answer(request) or self.get_response(request)

    async def _acall(self, request):
        return self._answer(request) or await self.get_response(request)

    def _answer(self, request):
        return None


class StaticFilesMiddleware(_BothModes, WhiteNoiseMiddleware):
    """WhiteNoise (static files for the admin and the API docs), able to run async: under ASGI a request for anything
    but a static file passes straight on, and only a static file is served from a thread."""

    def __init__(self, get_response):
        WhiteNoiseMiddleware.__init__(self, get_response)
        _BothModes.__init__(self, get_response)

    def _static_file(self, request):
        return self.find_file(request.path_info) if self.autorefresh else self.files.get(request.path_info)

    def _answer(self, request):
        static_file = self._static_file(request)
        return None if static_file is None else self.serve(static_file, request)

    async def _acall(self, request):
        static_file = self._static_file(request)
        if static_file is not None:
            return await sync_to_async(self.serve)(static_file, request)
        return await self.get_response(request)


class BodySizeLimitMiddleware(_BothModes):
    """Refuse API request bodies over JOB_MAX_BODY_BYTES (JOB_MAX_IMAGE_BODY_BYTES on the routes that take images)
    with a 413 before anything reads them."""

    def _answer(self, request):
        if not request.path.startswith("/api/"):
            return None
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        limit = settings.JOB_MAX_IMAGE_BODY_BYTES if request.path in IMAGE_BODY_PATHS else settings.JOB_MAX_BODY_BYTES
        if length > limit:
            body = {"detail": f"request body is {length} bytes; at most {limit} allowed"}
            return HttpResponse(json.dumps(body), status=413, content_type="application/json")
        return None


class JobLogContextMiddleware(_BothModes):
    """Requests about one job (detail, cancel, image) log with its id."""

    def __init__(self, get_response):
        super().__init__(get_response)
        if self.async_mode:  # Django awaits process_view in an async chain; a plain one would cost a thread hop
            self.process_view = self._aprocess_view

    def process_view(self, request, view_func, view_args, view_kwargs):
        # A context variable: each request (thread under WSGI, task under ASGI) sees its own.
        job_id_var.set(str(view_kwargs["job_id"]) if "job_id" in view_kwargs else "")
        return None

    async def _aprocess_view(self, request, view_func, view_args, view_kwargs):
        return JobLogContextMiddleware.process_view(self, request, view_func, view_args, view_kwargs)
