"""`POST /v1/chat/completions`: audio understanding, and lotti's transcription through `audio`."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from ..protocol import ChatCompletion, ChatCompletionCreateParams
from ..responses.chat import ChunkStream, chat_completion
from ..services.chat import ChatResult
from . import sse
from .background import (
    ClosingStreamingResponse,
    Delta,
    DeltaWork,
    Done,
    Emit,
    Failed,
    inflight_of,
    run_until_disconnect,
    stream_deltas,
)
from .deps import ChatServiceDep, ModelsDep
from .forms import served_model
from .ignored_fields import ignored_fields_header
from .json_body import openapi_body, read_json
from .openapi import MODEL_WORK_ERRORS, error_responses
from .workers import InFlight

router = APIRouter()


@router.post(
    "/v1/chat/completions",
    response_model=None,
    responses={
        200: {
            "model": ChatCompletion,
            "description": "The reply; with `stream`, `chat.completion.chunk` server-sent events.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **error_responses(*MODEL_WORK_ERRORS),
    },
    openapi_extra=openapi_body(ChatCompletionCreateParams),
)
async def create_chat_completion(request: Request, models: ModelsDep, chat: ChatServiceDep) -> Response:
    """OpenAI chat completions; `input_audio` parts, or lotti's top-level `audio` + `language`. The JSON body
    (a `ChatCompletionCreateParams`) is parsed in a worker thread."""
    params = await read_json(request, ChatCompletionCreateParams)
    served_model(models, params.model)
    # The model is checked before any audio is decoded, then loaded and held until `run` ends (or the
    # response ends, if `run` never starts).
    prepared = await run_until_disconnect(request, lambda cancel: chat.prepare(params, cancel))
    try:
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        # Unknown fields are accepted (as OpenAI's clients send many), and named, so that none goes unnoticed.
        headers = ignored_fields_header(params.ignored_fields)
        if params.stream:
            include_usage = bool(params.stream_options and params.stream_options.include_usage)
            stream = ChunkStream(completion_id, created, params.model, include_usage, bool(params.logprobs))

            def work(emit: Emit, cancel: threading.Event) -> ChatResult:
                return chat.run(prepared, on_delta=emit, cancel=cancel)

            events = _events(work, stream, inflight_of(request))
            return ClosingStreamingResponse(
                events,
                media_type="text/event-stream",
                headers={**sse.STREAM_HEADERS, **headers},
                on_close=prepared.close,
            )
        result = await run_until_disconnect(request, lambda cancel: chat.run(prepared, cancel=cancel))
    except BaseException:
        prepared.close()
        raise
    body = chat_completion(
        result, completion_id=completion_id, created=created, model=params.model, logprobs=bool(params.logprobs)
    )
    return JSONResponse(body, headers=headers)


async def _events(work: DeltaWork[ChatResult], stream: ChunkStream, inflight: InFlight) -> AsyncIterator[str]:
    """The stream's events: the role chunk, a chunk per delta, the last chunks and `[DONE]`; an error event if
    the work fails."""
    yield sse.event(stream.role())
    streamed = 0  # tokens whose logprobs went out with a delta
    async for item in stream_deltas(work, inflight):
        if isinstance(item, Delta):
            chunk, tokens = stream.text(item.text)
            streamed += tokens
            yield sse.event(chunk)
        elif isinstance(item, Done):
            for chunk in stream.end(item.result, streamed):
                yield sse.event(chunk)
            yield sse.DONE
        elif isinstance(item, Failed):
            yield sse.error_event(item.error)
