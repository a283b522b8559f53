"""`POST /v1/audio/transcriptions`."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..formatting import render
from ..languages import normalize_language
from .deps import SettingsDep, TranscriptionServiceDep
from .forms import parse_transcription_form

router = APIRouter()

# Most form fields a request may carry; the SDK sends fewer than ten.
MAX_FORM_FIELDS = 64


@router.post("/v1/audio/transcriptions", response_model=None)
async def create_transcription(request: Request, settings: SettingsDep, service: TranscriptionServiceDep) -> Response:
    """Transcribe an uploaded file (multipart, as `client.audio.transcriptions.create` sends it)."""
    async with request.form(max_files=2, max_fields=MAX_FORM_FIELDS) as form:
        upload, params = parse_transcription_form(form, settings)
        language = normalize_language(params.language)
        data = await upload.read()
    result = await run_in_threadpool(service.transcribe, data, language=language, temperature=params.temperature)
    body, media_type = render(result, params.response_format)
    headers: dict[str, str] = {}
    if result.truncated_segments:
        headers["X-Voxtral-Truncated-Segments"] = ",".join(str(i) for i in result.truncated_segments)
    if params.prompt:
        headers["X-Voxtral-Ignored-Fields"] = "prompt"
    if isinstance(body, dict):
        return JSONResponse(body, headers=headers)
    return Response(body, media_type=media_type, headers=headers)
