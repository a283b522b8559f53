"""The one place that turns exceptions into OpenAI error envelopes."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ErrorKind, InvalidRequestError, VoxtralError, quote, shorten
from ..protocol import ErrorDetail, ErrorResponse

logger = logging.getLogger(__name__)

STATUS: dict[ErrorKind, tuple[int, str]] = {
    ErrorKind.INVALID_REQUEST: (400, "invalid_request_error"),
    ErrorKind.UNSUPPORTED_MEDIA_TYPE: (415, "invalid_request_error"),
    ErrorKind.PAYLOAD_TOO_LARGE: (413, "invalid_request_error"),
    ErrorKind.MODEL_NOT_FOUND: (404, "invalid_request_error"),
    ErrorKind.MODEL_UNAVAILABLE: (503, "server_error"),
    ErrorKind.CONFLICT: (409, "invalid_request_error"),
    ErrorKind.DOWNLOAD_FAILED: (502, "server_error"),  # the hub (or the way to it) failed
    ErrorKind.STORAGE_FULL: (507, "server_error"),
    ErrorKind.CLIENT_GONE: (499, "invalid_request_error"),  # nginx's "client closed request"; never seen
    ErrorKind.OVERLOADED: (429, "requests"),  # OpenAI's type for a limit on requests (with rate_limit_exceeded)
    ErrorKind.SHUTTING_DOWN: (503, "server_error"),
    ErrorKind.INTERNAL: (500, "server_error"),
    # Access control and slow clients
    ErrorKind.UNAUTHENTICATED: (401, "invalid_request_error"),  # as OpenAI answers a wrong key
    ErrorKind.FORBIDDEN: (403, "invalid_request_error"),
    ErrorKind.REQUEST_TIMEOUT: (408, "invalid_request_error"),
    ErrorKind.TOO_MANY_CONNECTIONS: (503, "server_error"),
    ErrorKind.UPSTREAM_FAILED: (502, "server_error"),  # an upstream model server refused or failed
    ErrorKind.UPSTREAM_TIMEOUT: (504, "server_error"),
}


# The `code` of an error raised as a bare HTTP status (routing, Starlette, middleware) rather than a domain error.
HTTP_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "rate_limit_exceeded",
    500: "internal_error",
    503: "service_unavailable",
}
# Longest `message` and `param` an envelope carries; what quotes client input is shorter (`errors.quote`).
MAX_MESSAGE_CHARS = 1000
MAX_PARAM_CHARS = 100
# pydantic's error types for a list or string past its declared bound, as OpenAI's API names them.
LENGTH_CODES = {"too_long": "array_above_max_length", "string_too_long": "string_above_max_length"}


def envelope(
    status: int, message: str, *, type_: str, param: str | None = None, code: str | None = None
) -> ErrorResponse:
    """`{"error": {message, type, param, code}}`; `code` defaults to the status's (`HTTP_CODES`, else
    `http_<status>`), and message and param are cut to a bounded length. Every error answer is built here:
    responses, stream error events and the answers written below the app (api/connections.py)."""
    return ErrorResponse(
        error=ErrorDetail(
            message=shorten(message, MAX_MESSAGE_CHARS),
            type=type_,
            param=None if param is None else shorten(param, MAX_PARAM_CHARS),
            code=code or HTTP_CODES.get(status, f"http_{status}"),
        )
    )


def domain_envelope(exc: VoxtralError) -> tuple[int, ErrorResponse]:
    """The status and envelope for a domain exception."""
    status, type_ = STATUS[exc.kind]
    return status, envelope(status, exc.message, type_=type_, param=exc.param, code=exc.code)


def error_response(
    status: int, message: str, *, type_: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    """A JSON response holding `envelope(...)`."""
    body = envelope(status, message, type_=type_, param=param, code=code)
    return JSONResponse(body.model_dump(), status_code=status)


def domain_error_response(exc: VoxtralError) -> JSONResponse:
    """The envelope and status for a domain exception, with `Retry-After` where the error knows it."""
    status, body = domain_envelope(exc)
    response = JSONResponse(body.model_dump(), status_code=status)
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def validation_to_domain(exc: ValidationError | RequestValidationError) -> InvalidRequestError:
    """The first validation problem as a 400, naming the field; client input is quoted short (`quote`)."""
    # The most specific problem: a union reports each member's, and the deepest names the actual fault
    # (an unknown content part's type rather than "content should be a string").
    first = max(exc.errors(), key=lambda error: len(error.get("loc", ())))
    kind = first.get("type", "")
    if kind == "json_invalid":
        reason = shorten(str(first.get("ctx", {}).get("error", "")))
        return InvalidRequestError(f"The request body is not valid JSON ({reason}).", code="invalid_json")
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header")]
    if not loc:  # the body as a whole: absent, or not an object
        return InvalidRequestError("The request body must be a JSON object.", code="invalid_body")
    param = shorten(loc[0], MAX_PARAM_CHARS)
    if kind == "missing":  # named by its whole path (messages.0.role), as pydantic's locations go
        path = shorten(".".join(loc), MAX_PARAM_CHARS)
        return InvalidRequestError(
            f"Missing required parameter: '{path}'.", param=param, code="missing_required_parameter"
        )
    if kind == "extra_forbidden":
        return InvalidRequestError(
            f"Unrecognized request argument supplied: {quote(param)}.", param=param, code="unknown_parameter"
        )
    value = first.get("input")
    reason = shorten(str(first.get("msg")))
    return InvalidRequestError(
        f"Invalid value {quote(value)} for '{param}': {reason}.", param=param, code=LENGTH_CODES.get(kind)
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers: domain errors, validation (400, not 422), HTTP errors, and the rest (500)."""

    @app.exception_handler(VoxtralError)
    async def _domain(_: Request, exc: VoxtralError) -> JSONResponse:
        return domain_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return domain_error_response(validation_to_domain(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        response = error_response(exc.status_code, str(exc.detail), type_=type_)
        response.headers.update(exc.headers or {})  # e.g. a 405's Allow
        return response

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        return error_response(
            500, "The server had an error while processing the request.", type_="server_error", code="internal_error"
        )
