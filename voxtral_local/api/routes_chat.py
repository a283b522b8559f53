"""`POST /v1/chat/completions`: audio understanding, and lotti's transcription through `audio`."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from ..protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionCreateParams,
    ChatCompletionMessage,
    Choice,
    ChoiceDelta,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionUsage,
)
from ..responses.transcription import TokenBytes
from ..services.chat import ChatResult, PreparedChat, logprob_content
from ..services.streaming import TextDelta
from . import sse
from .background import Delta, Done, inflight_of, run_until_disconnect, stream_deltas
from .deps import ChatServiceDep, SettingsDep
from .forms import check_model
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
async def create_chat_completion(request: Request, settings: SettingsDep, chat: ChatServiceDep) -> Response:
    """OpenAI chat completions; `input_audio` parts, or lotti's top-level `audio` + `language`. The JSON body
    (a `ChatCompletionCreateParams`) is parsed in a worker thread."""
    params = await read_json(request, ChatCompletionCreateParams)
    check_model(params.model, settings)
    prepared = await run_until_disconnect(request, lambda cancel: chat.prepare(params, cancel))
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    # Unknown fields are accepted (as OpenAI's clients send many), and named, so that none goes unnoticed.
    headers = ignored_fields_header(params.ignored_fields)
    if params.stream:

        def work(emit: Callable[[str], None], cancel: threading.Event) -> ChatResult:
            return chat.run(prepared, on_delta=emit, cancel=cancel)

        events = _chunks(work, prepared, completion_id, created, chat.engine.token_bytes, inflight_of(request))
        return StreamingResponse(events, media_type="text/event-stream", headers={**sse.STREAM_HEADERS, **headers})
    result = await run_until_disconnect(request, lambda cancel: chat.run(prepared, cancel=cancel))
    logprobs = None
    if params.logprobs:
        content = logprob_content(result.token_ids, result.logprobs, result.top, chat.engine.token_bytes)
        logprobs = ChoiceLogprobs(content=content)
    choice = Choice(
        message=ChatCompletionMessage(content=result.text), finish_reason=result.finish_reason, logprobs=logprobs
    )
    body = ChatCompletion(id=completion_id, created=created, model=params.model, choices=[choice], usage=_usage(result))
    return JSONResponse(body.model_dump(), headers=headers)


def _usage(result: ChatResult) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
    )


async def _chunks(
    work: Callable[[Callable[[str], None], threading.Event], ChatResult],
    prepared: PreparedChat,
    completion_id: str,
    created: int,
    token_bytes: TokenBytes,
    inflight: InFlight,
) -> AsyncIterator[str]:
    params = prepared.params
    include_usage = bool(params.stream_options and params.stream_options.include_usage)

    def chunk(
        delta: ChoiceDelta,
        finish_reason: Literal["stop", "length"] | None = None,
        logprobs: ChoiceLogprobs | None = None,
    ) -> str:
        body = ChatCompletionChunk(
            id=completion_id,
            created=created,
            model=params.model,
            choices=[ChunkChoice(delta=delta, finish_reason=finish_reason, logprobs=logprobs)],
        ).model_dump(mode="json")
        body["choices"][0]["delta"] = delta.model_dump(exclude_none=True)  # no `"role": null` after the first
        if include_usage:
            body["usage"] = None  # as OpenAI: null on every chunk but the last
        return sse.event(body)

    yield chunk(ChoiceDelta(role="assistant", content=""))
    streamed = 0  # tokens whose logprobs went out with a delta
    async for item in stream_deltas(work, inflight):
        if isinstance(item, Delta):
            logprobs = None
            if params.logprobs and isinstance(item.text, TextDelta):  # the tokens this delta first shows
                text = item.text
                logprobs = ChoiceLogprobs(content=logprob_content(text.token_ids, text.logprobs, text.top, token_bytes))
                streamed += len(text.token_ids)
            yield chunk(ChoiceDelta(content=item.text), logprobs=logprobs)
        elif isinstance(item, Done):
            result: ChatResult = item.result
            rest = None  # tokens that showed no text (a trailing space, a special token) go with the last chunk
            if params.logprobs and len(result.token_ids) > streamed:
                content = logprob_content(
                    result.token_ids[streamed:], result.logprobs[streamed:], result.top[streamed:], token_bytes
                )
                rest = ChoiceLogprobs(content=content)
            yield chunk(ChoiceDelta(), result.finish_reason, rest)
            if include_usage:
                usage = ChatCompletionChunk(
                    id=completion_id, created=created, model=params.model, choices=[], usage=_usage(result)
                )
                yield sse.event(usage.model_dump(mode="json"))
            yield sse.DONE
        else:
            yield sse.error_event(item.error)
