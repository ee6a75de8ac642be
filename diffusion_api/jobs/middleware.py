import json

from django.conf import settings
from django.http import HttpResponse

from diffusion_api.logs import job_id_var

# Routes whose bodies may carry images: up to JOB_MAX_IMAGE_BODY_BYTES here; the jobs view then holds a body with
# no image in it to JOB_MAX_BODY_BYTES.
IMAGE_BODY_PATHS = ("/api/v1/uploads/", "/api/v1/jobs/")


class BodySizeLimitMiddleware:
    """Refuse API request bodies over JOB_MAX_BODY_BYTES (JOB_MAX_IMAGE_BODY_BYTES on the routes that take images)
    with a 413 before anything reads them."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith("/api/"):
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            takes_images = request.path in IMAGE_BODY_PATHS
            limit = settings.JOB_MAX_IMAGE_BODY_BYTES if takes_images else settings.JOB_MAX_BODY_BYTES
            if length > limit:
                body = {"detail": f"request body is {length} bytes; at most {limit} allowed"}
                return HttpResponse(json.dumps(body), status=413, content_type="application/json")
        return self.get_response(request)


class JobLogContextMiddleware:
    """Requests about one job (detail, cancel, image) log with its id."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        if "job_id" in view_kwargs:
            job_id_var.set(str(view_kwargs["job_id"]))  # one request a thread: the next request sets its own
        else:
            job_id_var.set("")
        return None
