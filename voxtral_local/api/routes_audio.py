"""`POST /v1/audio/transcriptions` (optionally streamed) and `POST /v1/audio/translations`."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from ..languages import normalize_language
from ..protocol import (
    Logprob,
    ResponseFormat,
    Transcription,
    TranscriptionCreateParams,
    TranscriptionTextDeltaEvent,
    TranscriptionTextDoneEvent,
    TranscriptionVerbose,
    TranslationCreateParams,
)
from ..responses.transcription import Task, TokenBytes, render, token_logprobs, token_usage, transcript_logprobs
from ..services.streaming import TextDelta
from ..services.transcription import TranscriptionResult
from . import sse
from .background import Delta, Done, inflight_of, run_until_disconnect, stream_deltas
from .deps import SettingsDep, TranscriptionServiceDep
from .forms import LIST_FIELDS, audio_form, check_transcription_options, parse_audio_form, upload_bytes
from .openapi import MODEL_WORK_ERRORS, error_responses, multipart_body
from .workers import InFlight, run_in_worker

router = APIRouter()

# The 200 answer: JSON for `json`/`verbose_json`, text for `text`/`srt`/`vtt`, server-sent events with `stream`.
AUDIO_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": Transcription | TranscriptionVerbose,
        "description": "The transcript, in the requested `response_format`.",
        "content": {"text/plain": {"schema": {"type": "string"}}, "text/event-stream": {"schema": {"type": "string"}}},
    },
    **error_responses(*MODEL_WORK_ERRORS, 415),
}

TRANSLATE_INSTRUCTION = "Translate this audio into English. Reply with the English translation only."


@router.post(
    "/v1/audio/transcriptions",
    response_model=None,
    responses=AUDIO_RESPONSES,
    openapi_extra=multipart_body(TranscriptionCreateParams, list_fields=LIST_FIELDS),
)
async def create_transcription(request: Request, settings: SettingsDep, service: TranscriptionServiceDep) -> Response:
    """Transcribe an uploaded file (multipart, as `client.audio.transcriptions.create` sends it)."""
    async with audio_form(request, settings) as form:
        upload, params = parse_audio_form(form, settings, TranscriptionCreateParams)
        check_transcription_options(params)
        language = normalize_language(params.language)
        data = upload_bytes(upload)
    headers = {"X-Voxtral-Ignored-Fields": "prompt"} if params.prompt else {}
    token_bytes = service.engine.token_bytes if "logprobs" in params.include else None
    # Only the head of a long upload is decoded before its first chunk goes to the model; the rest meanwhile.
    # Decoding stops if the client leaves (or at the shutdown deadline), as generation does.
    audio = await run_until_disconnect(request, lambda cancel: service.decode_start(data, cancel))
    if params.stream:
        await run_in_worker(service.engine.load)  # a load failure is a 503, not a stream error

        def work(emit: Callable[[str], None], cancel: threading.Event) -> TranscriptionResult:
            return service.transcribe(
                audio, language=language, temperature=params.temperature, on_delta=emit, cancel=cancel
            )

        return StreamingResponse(
            _transcript_events(work, token_bytes, inflight_of(request)),
            media_type="text/event-stream",
            headers={**sse.STREAM_HEADERS, **headers},
        )
    result = await run_until_disconnect(
        request,
        lambda cancel: service.transcribe(audio, language=language, temperature=params.temperature, cancel=cancel),
    )
    logprobs = None if token_bytes is None else transcript_logprobs(result, token_bytes)
    return _rendered(result, params.response_format, "transcribe", headers, logprobs)


@router.post(
    "/v1/audio/translations",
    response_model=None,
    responses=AUDIO_RESPONSES,
    openapi_extra=multipart_body(TranslationCreateParams, list_fields=LIST_FIELDS),
)
async def create_translation(request: Request, settings: SettingsDep, service: TranscriptionServiceDep) -> Response:
    """Translate an uploaded file into English text, with Voxtral's chat template chunk by chunk."""
    async with audio_form(request, settings) as form:
        upload, params = parse_audio_form(form, settings, TranslationCreateParams)
        data = upload_bytes(upload)
    samples = await run_until_disconnect(request, lambda cancel: service.decode(data, cancel))
    result = await run_until_disconnect(
        request,
        lambda cancel: service.transcribe(
            samples,
            language=None,
            temperature=params.temperature,
            instruction=TRANSLATE_INSTRUCTION,
            cancel=cancel,
        ),
    )
    headers = {"X-Voxtral-Ignored-Fields": "prompt"} if params.prompt else {}
    return _rendered(result, params.response_format, "translate", headers)


def _rendered(
    result: TranscriptionResult,
    response_format: ResponseFormat,
    task: Task,
    headers: dict[str, str],
    logprobs: list[Logprob] | None = None,
) -> Response:
    body, media_type = render(result, response_format, task, logprobs)
    if result.truncated_segments:
        headers = {**headers, "X-Voxtral-Truncated-Segments": ",".join(str(i) for i in result.truncated_segments)}
    if isinstance(body, dict):
        return JSONResponse(body, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


async def _transcript_events(
    work: Callable[[Callable[[str], None], threading.Event], TranscriptionResult],
    token_bytes: TokenBytes | None,
    inflight: InFlight,
) -> AsyncIterator[str]:
    """Delta events, then the done event; with `token_bytes` (include[]=logprobs) each event carries the
    logprobs of the tokens it is the first to show, and the done event those of every token."""
    sent: list[str] = []
    async for item in stream_deltas(work, inflight):
        if isinstance(item, Delta):
            sent.append(item.text)
            logprobs = None
            if token_bytes is not None and isinstance(item.text, TextDelta):
                logprobs = token_logprobs(item.text.token_ids, item.text.logprobs, token_bytes)
            yield sse.event(TranscriptionTextDeltaEvent(delta=item.text, logprobs=logprobs))
        elif isinstance(item, Done):
            result: TranscriptionResult = item.result
            done_logprobs = None if token_bytes is None else transcript_logprobs(result, token_bytes)
            done = TranscriptionTextDoneEvent(
                text="".join(sent),
                logprobs=done_logprobs,
                usage=token_usage(result),
                truncated_segments=result.truncated_segments or None,  # headers went out before the cap was hit
            )
            yield sse.event(done)
        else:
            yield sse.error_event(item.error)
