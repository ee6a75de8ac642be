"""Errors in A1111's shapes.

- Validation (FastAPI's): 422 `{"detail": [{"loc": ["body", field, …], "msg": …, "type": …}]}`.
- Everything else (A1111's exception handler): `{"error": <type>, "detail": …, "body": "", "errors": …}` with the
  status code of the error (401, 404, 413, 429, 500, 503 …; 202 when a job outlasts the wait); 429 and 503 carry
  Retry-After.
"""

from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response

from diffusion_api.a1111.mapping import A1111Invalid


def invalid(errors: dict) -> Response:
    """422 with one entry per A1111 field (a dotted name is a nested location, "" the body itself)."""
    detail = []
    for name, messages in errors.items():
        loc = ["body", *name.split(".")] if name else ["body"]
        for message in messages if isinstance(messages, list | tuple) else [messages]:
            detail.append({"loc": loc, "msg": str(message), "type": "value_error"})
    return Response({"detail": detail}, status=status.HTTP_422_UNPROCESSABLE_ENTITY)


def error(code: int, kind: str, detail: str, headers: dict | None = None) -> Response:
    body = {"error": kind, "detail": detail, "body": "", "errors": f"{code}: {detail}"}
    return Response(body, status=code, headers=headers)


def handle(exc, context):
    """The views' exception handler (APIView.get_exception_handler)."""
    if isinstance(exc, A1111Invalid):
        return invalid(exc.errors)
    if isinstance(exc, exceptions.ValidationError):
        return invalid(exc.detail if isinstance(exc.detail, dict) else {"": exc.detail})
    if isinstance(exc, exceptions.ParseError):
        return invalid({"": [str(exc.detail)]})
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        headers = {"WWW-Authenticate": 'Basic realm="sdapi"'}
        return error(status.HTTP_401_UNAUTHORIZED, "HTTPException", str(exc.detail), headers)
    if isinstance(exc, exceptions.Throttled):
        wait = int(exc.wait or 1)
        return error(status.HTTP_429_TOO_MANY_REQUESTS, "HTTPException", str(exc.detail), {"Retry-After": str(wait)})
    if isinstance(exc, Http404):
        return error(status.HTTP_404_NOT_FOUND, "HTTPException", str(exc) or "Not Found")
    if isinstance(exc, exceptions.APIException):
        return error(exc.status_code, "HTTPException", str(exc.detail))
    return None  # a real bug: Django's 500
