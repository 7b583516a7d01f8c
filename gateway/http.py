"""Under ``/api/``, every answer is JSON in the one error shape, whoever produced it.

The API's own endpoints raise ``errors.ApiError``; but some answers come from below them:
Django's resolver (404 for a path no endpoint has), django-ninja (405 for a method an
endpoint does not take), the request-size guard, a host Django refuses. This middleware
turns any non-JSON error answer under ``/api/`` into the error body of its status, keeping
the headers that matter (``Allow``), so a client parses one shape everywhere.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase, JsonResponse

from gateway import errors

API_PREFIX = "/api/"


def error_response(error: errors.ApiError) -> JsonResponse:
    response = JsonResponse(error.body(), status=error.status)
    for name, value in error.headers.items():
        response[name] = value
    return response


def is_json(response: HttpResponseBase) -> bool:
    content_type = response.get("Content-Type", "").split(";")[0].strip().lower()
    return content_type == "application/json" or content_type.endswith("+json")


def error_for(request: HttpRequest, response: HttpResponseBase) -> errors.ApiError:
    """The API error that stands for a bare HTTP error answer."""
    status = response.status_code
    if status == 404:
        return errors.not_found(request.path)
    if status == 405:
        allowed = [m.strip() for m in response.get("Allow", "").split(",") if m.strip()]
        return errors.method_not_allowed(request.method or "", sorted(allowed))
    if status == 413:
        return errors.body_too_large(settings.API_MAX_BODY_BYTES)
    if status == 401:
        return errors.not_authenticated()
    if status >= 500:
        return errors.internal_error()
    return errors.ApiError(
        status=status,
        code="invalid_request",
        message=f"The request was refused (HTTP {status}).",
        suggestion="Check the request against /api/v1/openapi.json.",
    )


class ApiJsonErrorsMiddleware:
    """Outermost middleware: sees the answers of every layer below it, including Django's
    own error pages."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        if (
            not request.path.startswith(API_PREFIX)
            or response.status_code < 400
            or is_json(response)
        ):
            return response
        replaced = error_response(error_for(request, response))
        for header in ("Vary", "WWW-Authenticate"):
            if header in response:
                replaced[header] = response[header]
        return replaced


def json_body_problem(request: HttpRequest) -> errors.ApiError | None:
    """415 unless the request says its body is JSON (``application/json`` or ``+json``)."""
    content_type = (request.content_type or "").strip().lower()
    if content_type == "application/json" or content_type.endswith("+json"):
        return None
    if not content_type and not request.headers.get("Content-Length", "").strip("0"):
        return None  # no body at all: the JSON check says what is missing
    return errors.unsupported_media_type(content_type)
