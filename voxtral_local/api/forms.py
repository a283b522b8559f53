"""Multipart parsing as the OpenAI SDK sends it: `key[]` arrays, `"true"`/`"false"` booleans."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from ..config import Settings
from ..errors import InvalidRequestError, UnsupportedMediaTypeError, quote, shorten
from ..models.catalog import ServedModel
from ..models.registry import ModelRegistry
from ..protocol import TranscriptionCreateParams
from .errors import validation_to_domain

LIST_FIELDS = frozenset({"timestamp_granularities", "include"})
P = TypeVar("P", bound=BaseModel)


# Most form fields a request may carry; the SDK sends fewer than ten.
MAX_FORM_FIELDS = 64
# The bodies an audio endpoint parses; anything else (JSON, text, none) is a 415 before the body is read.
FORM_TYPES = (b"multipart/form-data", b"application/x-www-form-urlencoded")


@asynccontextmanager
async def audio_form(request: Request, settings: Settings) -> AsyncIterator[FormData]:
    """The request's form, parsed as the body arrives, with the uploaded file kept in memory; a body of
    another type is UnsupportedMediaTypeError (415).

    Starlette spools a file part past 1 MiB to a temporary file, one write per ~64 KiB piece through a
    worker thread, and the route would read it all back at once; the body limit bounds what memory holds."""
    content_type, _ = parse_options_header(request.headers.get("Content-Type"))
    if content_type not in FORM_TYPES:
        sent = quote(content_type.decode("latin-1")) if content_type else "none"
        raise UnsupportedMediaTypeError(
            "This endpoint takes multipart/form-data, as the OpenAI SDK and `curl -F` send it: the audio as the "
            f"'file' part, the other parameters as form fields (the request's Content-Type is {sent}).",
            param="file",
        )
    if content_type != b"multipart/form-data":
        async with request.form(max_files=2, max_fields=MAX_FORM_FIELDS) as form:
            yield form
        return
    try:
        async with aclosing(request.stream()) as stream:
            parser = MultiPartParser(request.headers, stream, max_files=2, max_fields=MAX_FORM_FIELDS)
            parser.spool_max_size = settings.max_upload_bytes
            form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidRequestError(f"The multipart body could not be parsed: {shorten(exc.message)}") from exc
    try:
        yield form
    finally:
        await form.close()


def upload_bytes(upload: UploadFile) -> bytes:
    """An uploaded file's content; kept in memory by `audio_form`, it is handed over without a copy."""
    spooled = getattr(upload.file, "_file", None)
    if isinstance(spooled, io.BytesIO):
        return spooled.getvalue()  # CPython shares the buffer rather than copying it
    upload.file.seek(0)
    return upload.file.read()


def served_model(models: ModelRegistry, name: str) -> ServedModel:
    """The served model a request's `model` field names (an id, an alias or a configured source): the one
    place every route resolves it. ModelNotFoundError (404) for any other name."""
    return models.resolve(name)


def parse_audio_form(form: FormData, models: ModelRegistry, params_type: type[P]) -> tuple[UploadFile, P]:
    """The uploaded file and validated parameters; InvalidRequestError/ModelNotFoundError otherwise."""
    upload: UploadFile | None = None
    fields: dict[str, Any] = {}
    for raw_key, value in form.multi_items():
        key = raw_key[:-2] if raw_key.endswith("[]") else raw_key
        if key == "file":
            if not isinstance(value, UploadFile):
                raise InvalidRequestError("'file' must be an uploaded file, not a text field.", param="file")
            if upload is not None:
                raise InvalidRequestError("Only one 'file' may be uploaded per request.", param="file")
            upload = value
            continue
        if isinstance(value, UploadFile):
            raise InvalidRequestError(f"{quote(key)} must be a text field, not a file.", param=key)
        if key in LIST_FIELDS:
            fields.setdefault(key, []).append(value)
        elif key in fields:
            raise InvalidRequestError(f"{quote(key)} was given more than once.", param=key)
        else:
            fields[key] = value
    try:
        params = params_type.model_validate(fields)
    except ValidationError as exc:
        raise validation_to_domain(exc) from exc
    if upload is None:
        raise InvalidRequestError(
            "Missing required parameter: 'file'.", param="file", code="missing_required_parameter"
        )
    served_model(models, getattr(params, "model"))  # noqa: B009 - every audio params model has one
    return upload, params


def check_transcription_options(params: TranscriptionCreateParams) -> None:
    """Reject what Voxtral cannot do, saying why."""
    if "word" in params.timestamp_granularities:
        raise InvalidRequestError(
            "timestamp_granularities 'word' is not supported: Voxtral produces no word timestamps. "
            "Use 'segment' (segments are the server's audio chunks).",
            param="timestamp_granularities",
            code="unsupported_value",
        )
    if (
        params.timestamp_granularities
        and params.response_format not in ("verbose_json", "srt", "vtt")
        and not params.stream
    ):
        raise InvalidRequestError(
            "timestamp_granularities needs response_format 'verbose_json' (or 'srt'/'vtt'), or stream=true.",
            param="timestamp_granularities",
            code="unsupported_value",
        )
    if "logprobs" in params.include and params.response_format != "json":
        raise InvalidRequestError(
            "include[]=logprobs needs response_format 'json' (as OpenAI's API).",
            param="include",
            code="unsupported_value",
        )
    if params.stream and params.response_format not in ("json", "text"):
        raise InvalidRequestError(
            "stream=true streams text: use response_format 'json' or 'text'.",
            param="stream",
            code="unsupported_value",
        )
