"""OpenAI's error envelope, `{"error": {"message", "type", "param", "code"}}`, for every answer under /v1/.

The official clients read `error.message` into their exceptions and pick the exception class by status code
(400 BadRequestError, 401 AuthenticationError, 404 NotFoundError, 429 RateLimitError, 5xx InternalServerError).
They retry 408, 409, 429 and 5xx unless the answer says `x-should-retry: false`.
"""

import logging

from django.http import JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

logger = logging.getLogger(__name__)

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class OpenAIError(exceptions.APIException):
    """An answer in OpenAI's envelope; raised anywhere in a /v1/ view."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int = status.HTTP_400_BAD_REQUEST,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status_code = status_code
        self.body = envelope(message, type=type, param=param, code=code)
        self.headers = headers or {}


def envelope(message: str, *, type: str = INVALID_REQUEST, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# DRF's own exceptions, as OpenAI answers the same situations.
_DRF = {
    exceptions.NotAuthenticated: (INVALID_REQUEST, "invalid_api_key"),
    exceptions.AuthenticationFailed: (INVALID_REQUEST, "invalid_api_key"),
    exceptions.PermissionDenied: (INVALID_REQUEST, "permission_denied"),
    exceptions.NotFound: (INVALID_REQUEST, None),
    exceptions.MethodNotAllowed: (INVALID_REQUEST, "method_not_allowed"),
    exceptions.Throttled: ("requests", "rate_limit_exceeded"),
    exceptions.ParseError: (INVALID_REQUEST, "invalid_json"),
    exceptions.UnsupportedMediaType: (INVALID_REQUEST, "unsupported_media_type"),
    exceptions.NotAcceptable: (INVALID_REQUEST, "not_acceptable"),
}


def handle(exc, context) -> Response:
    """The /v1/ views' exception handler: every error, expected or not, in the envelope."""
    if isinstance(exc, OpenAIError):
        return Response(exc.body, status=exc.status_code, headers=exc.headers)
    response = exception_handler(exc, context)  # DRF's: its status codes, and headers such as Retry-After
    if response is None:
        logger.exception("unexpected error in an OpenAI route", exc_info=exc)
        return Response(
            envelope("The server had an error while processing your request.", type=SERVER_ERROR),
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    type_, code = next(((t, c) for cls, (t, c) in _DRF.items() if isinstance(exc, cls)), (INVALID_REQUEST, None))
    detail = response.data.get("detail", response.data) if isinstance(response.data, dict) else response.data
    response.data = envelope(str(detail), type=type_, code=code)
    return response


def not_found(request, *args, **kwargs) -> JsonResponse:
    """Any other path under /v1/: OpenAI's 404 for an unknown URL."""
    message = f"Invalid URL ({request.method} {request.path})"
    return JsonResponse(envelope(message), status=status.HTTP_404_NOT_FOUND)
