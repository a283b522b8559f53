"""What the OpenAPI schema (`GET /openapi.json`) declares beyond FastAPI's defaults, so that it tells the truth:
the multipart bodies the audio routes parse themselves, every error status a route can answer (with the OpenAI
error envelope), and no 422 (validation errors are 400 here)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from ..protocol import ErrorResponse

# Why each status is answered; the routes name which of them apply to them.
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Invalid request: a bad or unknown field, undecodable audio, a value out of range.",
    401: "Missing or wrong `Authorization: Bearer` key (only when VOXTRAL_API_KEY is set).",
    403: "The Host or Origin header is not allowed (VOXTRAL_ALLOWED_HOSTS, VOXTRAL_CORS_ORIGINS).",
    404: "The model (or route) does not exist on this server.",
    405: "The method is not allowed on this path.",
    408: "The request body did not arrive in time.",
    409: "The model is not in a state that allows this (already loaded, a local directory, a pull running).",
    413: "The request body is larger than VOXTRAL_MAX_UPLOAD_MB.",
    415: "The body's content type is not the one this endpoint takes.",
    429: "The server is at capacity (VOXTRAL_MAX_QUEUE); retry after the `Retry-After` header's seconds.",
    502: "The Hugging Face Hub (or the way to it) failed; or the upstream model servers (VOXTRAL_VLLM_URLS) "
    "refused or failed the request, also on the retry.",
    503: "The model cannot be loaded or used right now (or no upstream model server that serves it is up), or "
    "the server is shutting down.",
    504: "The upstream model servers (VOXTRAL_VLLM_URLS) stayed silent past VOXTRAL_VLLM_TIMEOUT_S, also on the retry.",
    507: "No disk space for the download.",
}
# Answered by middleware on every route, whatever the route itself does.
COMMON_ERRORS = (401, 403)
# Model work: everything that reads a body and may wait for the model (the audio routes add 415).
MODEL_WORK_ERRORS = (400, 404, 408, 413, 429, 502, 503, 504, *COMMON_ERRORS)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route decorator: each status with its description and the OpenAI error envelope."""
    return {status: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


def multipart_body(params: type[BaseModel], *, list_fields: frozenset[str]) -> dict[str, Any]:
    """`openapi_extra=` declaring a multipart/form-data body: an uploaded `file` plus `params`' fields, array
    fields named `key[]` as the OpenAI SDK sends them (OpenAI's own spec names them so too)."""
    schema = params.model_json_schema()
    properties: dict[str, Any] = {"file": {"type": "string", "format": "binary", "description": "The audio file."}}
    for name, field in schema["properties"].items():
        properties[f"{name}[]" if name in list_fields else name] = field
    required = ["file", *schema.get("required", [])]
    body = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": body}}}}


def install_openapi(app: FastAPI) -> None:
    """Make `app.openapi()` build FastAPI's schema once, then drop the 422 answers FastAPI adds to every route
    with parameters (this server answers validation errors with 400) and the schemas only they used."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            schemas = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
