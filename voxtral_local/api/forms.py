"""Multipart parsing as the OpenAI SDK sends it: `key[]` arrays, `"true"`/`"false"` booleans."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from ..config import Settings
from ..errors import InvalidRequestError, ModelNotFoundError
from ..protocol import TranscriptionCreateParams
from .errors import validation_to_domain

LIST_FIELDS = frozenset({"timestamp_granularities"})


def parse_transcription_form(form: FormData, settings: Settings) -> tuple[UploadFile, TranscriptionCreateParams]:
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
            raise InvalidRequestError(f"'{key}' must be a text field, not a file.", param=key)
        if key in LIST_FIELDS:
            fields.setdefault(key, []).append(value)
        elif key in fields:
            raise InvalidRequestError(f"'{key}' was given more than once.", param=key)
        else:
            fields[key] = value
    try:
        params = TranscriptionCreateParams.model_validate(fields)
    except ValidationError as exc:
        raise validation_to_domain(exc) from exc
    if upload is None:
        raise InvalidRequestError(
            "Missing required parameter: 'file'.", param="file", code="missing_required_parameter"
        )
    if params.model not in settings.accepted_model_names:
        raise ModelNotFoundError(params.model, settings.model_name)
    _check_supported(params)
    return upload, params


def _check_supported(params: TranscriptionCreateParams) -> None:
    if "word" in params.timestamp_granularities:
        raise InvalidRequestError(
            "timestamp_granularities 'word' is not supported: Voxtral produces no word timestamps. "
            "Use 'segment' (segments are the server's audio chunks).",
            param="timestamp_granularities",
            code="unsupported_value",
        )
    if params.timestamp_granularities and params.response_format not in ("verbose_json", "srt", "vtt"):
        raise InvalidRequestError(
            "timestamp_granularities needs response_format 'verbose_json' (or 'srt'/'vtt').",
            param="timestamp_granularities",
            code="unsupported_value",
        )
    if params.stream:
        raise InvalidRequestError(
            "stream=true is not supported by this server yet.", param="stream", code="unsupported_value"
        )
