"""`POST /v1/audio/transcriptions` (optionally streamed) and `POST /v1/audio/translations`."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from ..languages import normalize_language
from ..protocol import (
    Logprob,
    ResponseFormat,
    StreamedSegment,
    Transcription,
    TranscriptionCreateParams,
    TranscriptionTextDeltaEvent,
    TranscriptionTextDoneEvent,
    TranscriptionVerbose,
    TranslationCreateParams,
)
from ..responses.transcription import Task, bytes_of, render, token_logprobs, token_usage, transcript_logprobs
from ..services.streaming import TextDelta
from ..services.transcription import TranscriptionRequest, TranscriptionResult
from . import sse
from .background import (
    ClosingStreamingResponse,
    Delta,
    DeltaWork,
    Done,
    Emit,
    Progress,
    inflight_of,
    run_until_disconnect,
    stream_deltas,
)
from .deps import ModelsDep, SettingsDep, TranscriptionServiceDep
from .forms import LIST_FIELDS, audio_form, check_transcription_options, parse_audio_form, upload_bytes
from .openapi import MODEL_WORK_ERRORS, error_responses, multipart_body
from .workers import InFlight

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


@router.post(
    "/v1/audio/transcriptions",
    response_model=None,
    responses=AUDIO_RESPONSES,
    openapi_extra=multipart_body(TranscriptionCreateParams, list_fields=LIST_FIELDS),
)
async def create_transcription(
    request: Request, settings: SettingsDep, models: ModelsDep, service: TranscriptionServiceDep
) -> Response:
    """Transcribe an uploaded file (multipart, as `client.audio.transcriptions.create` sends it). With
    `stream`, SSE comment lines `: progress <done> <total>` (seconds of audio; total `?` while unknown) go
    between the events as chunks finish; clients that follow the SSE format ignore them."""
    async with audio_form(request, settings) as form:
        upload, params = parse_audio_form(form, models, TranscriptionCreateParams)
        check_transcription_options(params)
        language = normalize_language(params.language)
        data = upload_bytes(upload)
    headers = {"X-Voxtral-Ignored-Fields": "prompt"} if params.prompt else {}
    logprobs = "logprobs" in params.include
    # The service checks the model before decoding; only the head of a long upload is decoded before its
    # first chunk goes to the model, the rest meanwhile. Decoding stops if the client leaves (or at the
    # shutdown deadline), as generation does.
    asked = TranscriptionRequest(
        model=params.model, audio=data, language=language, temperature=params.temperature, logprobs=logprobs
    )
    if params.stream:
        # Decoded and loaded before the stream starts (a failure is an error status, not a stream error); the
        # model stays held until the work ends, or until the response ends if the work never starts.
        prepared = await run_until_disconnect(request, lambda cancel: service.prepare(replace(asked, cancel=cancel)))
        try:

            def work(emit: Emit, cancel: threading.Event) -> TranscriptionResult:
                on_progress = lambda done, total: emit(Progress(done, total))  # noqa: E731
                return service.transcribe(replace(prepared, on_delta=emit, on_progress=on_progress, cancel=cancel))

            return ClosingStreamingResponse(
                _transcript_events(work, logprobs, inflight_of(request), bool(params.timestamp_granularities)),
                media_type="text/event-stream",
                headers={**sse.STREAM_HEADERS, **headers},
                on_close=prepared.close,
            )
        except BaseException:
            prepared.close()
            raise
    result = await run_until_disconnect(request, lambda cancel: service.transcribe(replace(asked, cancel=cancel)))
    return _rendered(result, params.response_format, "transcribe", headers, _logprobs(result) if logprobs else None)


@router.post(
    "/v1/audio/translations",
    response_model=None,
    responses=AUDIO_RESPONSES,
    openapi_extra=multipart_body(TranslationCreateParams, list_fields=LIST_FIELDS),
)
async def create_translation(
    request: Request, settings: SettingsDep, models: ModelsDep, service: TranscriptionServiceDep
) -> Response:
    """Translate an uploaded file into English text, with Voxtral's chat template chunk by chunk."""
    async with audio_form(request, settings) as form:
        upload, params = parse_audio_form(form, models, TranslationCreateParams)
        data = upload_bytes(upload)
    asked = TranscriptionRequest(model=params.model, audio=data, temperature=params.temperature)
    result = await run_until_disconnect(request, lambda cancel: service.translate(replace(asked, cancel=cancel)))
    headers = {"X-Voxtral-Ignored-Fields": "prompt"} if params.prompt else {}
    return _rendered(result, params.response_format, "translate", headers)


def _logprobs(result: TranscriptionResult) -> list[Logprob]:
    return transcript_logprobs(result, bytes_of(result.pieces))


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


def progress_comment(done: float, total: float | None) -> str:
    """The SSE comment line reporting progress: `: progress <done> <total>` (seconds, total `?` while
    unknown), ended by a blank line like an event (it dispatches nothing)."""
    return f": progress {done:.2f} {'?' if total is None else f'{total:.2f}'}\n\n"


async def _transcript_events(
    work: DeltaWork[TranscriptionResult], logprobs: bool, inflight: InFlight, segments: bool = False
) -> AsyncIterator[str]:
    """Delta events (and progress comments), then the done event; with `logprobs` (include[]=logprobs) each
    event carries the logprobs of the tokens it is the first to show, and the done event those of every
    token; with `segments` (timestamp_granularities[]=segment) the done event carries the segments."""
    sent: list[str] = []
    async for item in stream_deltas(work, inflight):
        if isinstance(item, Delta):
            sent.append(item.text)
            delta_logprobs = None
            if logprobs and isinstance(item.text, TextDelta):
                delta_logprobs = token_logprobs(item.text.token_ids, item.text.logprobs, bytes_of(item.text.pieces))
            yield sse.event(TranscriptionTextDeltaEvent(delta=item.text, logprobs=delta_logprobs))
        elif isinstance(item, Progress):
            yield progress_comment(item.done, item.total)
        elif isinstance(item, Done):
            result: TranscriptionResult = item.result
            done = TranscriptionTextDoneEvent(
                text="".join(sent),
                logprobs=_logprobs(result) if logprobs else None,
                usage=token_usage(result),
                truncated_segments=result.truncated_segments or None,  # headers went out before the cap was hit
                segments=[StreamedSegment(id=s.id, start=s.start, end=s.end, text=s.text) for s in result.segments]
                if segments
                else None,
            )
            yield sse.event(done)
        else:
            yield sse.error_event(item.error)
