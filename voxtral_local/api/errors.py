"""The one place that turns exceptions into OpenAI error envelopes."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ErrorKind, InvalidRequestError, VoxtralError
from ..protocol import ErrorDetail, ErrorResponse

logger = logging.getLogger(__name__)

STATUS: dict[ErrorKind, tuple[int, str]] = {
    ErrorKind.INVALID_REQUEST: (400, "invalid_request_error"),
    ErrorKind.PAYLOAD_TOO_LARGE: (413, "invalid_request_error"),
    ErrorKind.MODEL_NOT_FOUND: (404, "invalid_request_error"),
    ErrorKind.MODEL_UNAVAILABLE: (503, "server_error"),
    ErrorKind.DOWNLOAD_FAILED: (502, "server_error"),  # the hub (or the way to it) failed
    ErrorKind.STORAGE_FULL: (507, "server_error"),
    ErrorKind.CLIENT_GONE: (499, "invalid_request_error"),  # nginx's "client closed request"; never seen
    ErrorKind.INTERNAL: (500, "server_error"),
    # Access control and slow clients
    ErrorKind.UNAUTHENTICATED: (401, "invalid_request_error"),  # as OpenAI answers a wrong key
    ErrorKind.FORBIDDEN: (403, "invalid_request_error"),
    ErrorKind.REQUEST_TIMEOUT: (408, "invalid_request_error"),
    ErrorKind.TOO_MANY_CONNECTIONS: (503, "server_error"),
}


def error_response(
    status: int, message: str, *, type_: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    """A JSON response holding `{"error": {message, type, param, code}}`."""
    body = ErrorResponse(error=ErrorDetail(message=message, type=type_, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status)


def domain_error_response(exc: VoxtralError) -> JSONResponse:
    """The envelope and status for a domain exception."""
    status, type_ = STATUS[exc.kind]
    return error_response(status, exc.message, type_=type_, param=exc.param, code=exc.code)


def validation_to_domain(exc: ValidationError | RequestValidationError) -> InvalidRequestError:
    """The first validation problem as a 400, naming the field."""
    first = exc.errors()[0]
    kind = first.get("type", "")
    if kind == "json_invalid":
        reason = first.get("ctx", {}).get("error", "")
        return InvalidRequestError(f"The request body is not valid JSON ({reason}).", code="invalid_json")
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header")]
    if not loc:  # the body as a whole: absent, or not an object
        return InvalidRequestError("The request body must be a JSON object.", code="invalid_body")
    param = loc[0]
    if kind == "missing":
        return InvalidRequestError(
            f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
        )
    if kind == "extra_forbidden":
        return InvalidRequestError(
            f"Unrecognized request argument supplied: '{param}'.", param=param, code="unknown_parameter"
        )
    value = first.get("input")
    return InvalidRequestError(f"Invalid value {value!r} for '{param}': {first.get('msg')}.", param=param)


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
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        response = error_response(exc.status_code, str(exc.detail), type_=type_, code=code)
        response.headers.update(exc.headers or {})  # e.g. a 405's Allow
        return response

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        return error_response(500, "The server had an error while processing the request.", type_="server_error")
