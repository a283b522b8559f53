"""Server-sent events, one complete event per write."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel

from ..errors import VoxtralError
from .errors import domain_envelope, envelope

DONE = "data: [DONE]\n\n"

logger = logging.getLogger(__name__)


def event(payload: BaseModel | dict[str, Any]) -> str:
    """`data: <json>` plus the blank line that ends an event."""
    body = payload.model_dump_json(exclude_none=True) if isinstance(payload, BaseModel) else _json(payload)
    return f"data: {body}\n\n"


def error_event(exc: BaseException) -> str:
    """An error after the stream started: `data: {"error": {...}}`, which the OpenAI SDK raises on."""
    if isinstance(exc, VoxtralError):
        _, body = domain_envelope(exc)
    else:
        logger.error("error while streaming", exc_info=exc)
        body = envelope(500, "The server had an error while generating.", type_="server_error", code="internal_error")
    return f"data: {_json(body.model_dump())}\n\n"


def _json(payload: dict[str, Any]) -> str:
    import json

    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
