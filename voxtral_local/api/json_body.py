"""JSON request bodies parsed and validated off the event loop, and their OpenAPI declaration."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from ..errors import InvalidRequestError
from .errors import validation_to_domain
from .workers import run_in_worker

M = TypeVar("M", bound=BaseModel)

# Most JSON containers and list/object items a body may hold, counted as its '{', '[' and ',' bytes (those
# inside strings too; base64 audio has none). Parsing and validating hold the GIL, so a worker thread alone
# would not keep the event loop free: this bound keeps each parse to milliseconds and its memory small. A
# chat within Voxtral's 32k-token context holds a few thousand; 1,000,000 empty messages hold 2,000,000.
MAX_JSON_ITEMS = 100_000


def parse_json(body: bytes, model: type[M]) -> M:
    """`body` (JSON text, whatever the Content-Type says) validated as `model`; InvalidRequestError (400)
    otherwise. Blocking: a body of more than MAX_JSON_ITEMS items is refused unparsed; pydantic's parser
    (jiter) bounds nesting depth; list bounds are checked before items (see `protocol`)."""
    if not body.strip():
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_body")
    items = body.count(b",") + body.count(b"{") + body.count(b"[")
    if items > MAX_JSON_ITEMS:
        raise InvalidRequestError(
            f"The request body holds {items} JSON items (counted as its commas, braces and brackets), more than "
            f"the {MAX_JSON_ITEMS} a request may; lists are bounded too: see the README's limits.",
            code="request_too_complex",
        )
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise validation_to_domain(exc) from exc


async def read_json(request: Request, model: type[M], *, default: M | None = None) -> M:
    """The request's body as `model`, parsed and validated in a worker thread: a large body (the body limit
    allows 100 MiB) never holds the event loop, so other requests and /health go on meanwhile. An empty body
    is `default` where one is given, else a 400."""
    body = await request.body()
    if default is not None and not body.strip():
        return default
    return await run_in_worker(parse_json, body, model)


def openapi_body(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """`openapi_extra` declaring a JSON body of `model`'s schema (`required` or optional), for a route that
    reads the body itself; the schema's `$defs` are inlined (the models are not recursive)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return {"requestBody": {"required": required, "content": {"application/json": {"schema": inline(schema)}}}}
