import json

from django.conf import settings
from django.http import HttpResponse


class BodySizeLimitMiddleware:
    """Refuse API request bodies over JOB_MAX_BODY_BYTES with a 413 before anything reads them."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith("/api/"):
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if length > settings.JOB_MAX_BODY_BYTES:
                body = {"detail": f"request body is {length} bytes; at most {settings.JOB_MAX_BODY_BYTES} allowed"}
                return HttpResponse(json.dumps(body), status=413, content_type="application/json")
        return self.get_response(request)
