"""One upstream request each: a chunk's transcription (`POST /v1/audio/transcriptions`, streamed) or a chat reply
(`POST /v1/chat/completions` with `input_audio` parts, streamed), read as it arrives.

Both are always streamed (`stream=true`), so that tokens reach the client as the upstream generates them,
VOXTRAL_VLLM_TIMEOUT_S bounds each silence rather than the whole answer, and closing the connection (a cancelled
request) stops the upstream's generation. Two streaming shapes are read: OpenAI's `transcript.text.delta`/`.done`
events (this server's own kind, and OpenAI's API) and vLLM's `transcription.chunk` objects (the same shape as chat
completion chunks); chat is `chat.completion.chunk` everywhere. vLLM's own form fields (`stream_include_usage`,
`max_completion_tokens`, `seed`, `top_p`) go only to an upstream that says it is vLLM; OpenAI's API refuses fields
it does not know.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from ...audio.encode import wav_bytes
from ...errors import shorten
from ..base import Conversation, Sampling
from .upstreams import STALE_CONNECTION, Flavor, Upstream, describe_http_error

MAX_ERROR_BODY = 4096  # bytes of an upstream's error answer read for its message
REQUEST_ERROR_TYPES = ("invalid_request_error", "BadRequestError")  # OpenAI's and vLLM's error types for a 400


@dataclass(frozen=True)
class Token:
    """A piece of generated text: one token's bytes with its logprob and alternatives when the upstream gives
    them, else a delta's text with logprob 0."""

    piece: bytes
    logprob: float = 0.0
    top: tuple[tuple[bytes, float], ...] = ()


@dataclass(frozen=True)
class Delta:
    """A piece of the answer: its text as the upstream says it, and its tokens (one per logprob entry when the
    upstream reports logprobs, else the text as one piece)."""

    text: str
    tokens: list[Token]


@dataclass(frozen=True)
class Finished:
    """The end of an upstream's answer: its final text (when it says it), why it stopped, and its usage."""

    text: str | None
    finish_reason: str | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    audio_tokens: int | None = None


Event = Delta | Finished
MALFORMED = (AttributeError, TypeError, ValueError, KeyError, IndexError, RecursionError)  # from a bad event's shape


class UpstreamFault(Exception):
    """The upstream failed (refused, silent, broke off, answered an error status other than 400 and 422, or
    answered nonsense): try another. `timeout` when it stayed silent; `down` when it should be skipped until a
    health check sees it."""

    def __init__(self, message: str, *, timeout: bool = False, down: bool = True) -> None:
        super().__init__(message)
        self.message, self.timeout, self.down = message, timeout, down


class UpstreamRejected(Exception):
    """The upstream refused the request itself (400 or 422): no other upstream would take it either."""

    def __init__(self, status: int, message: str, param: str | None, code: str | None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def transcription_form(
    model: str, language: str | None, sampling: Sampling, cap: int | None, flavor: Flavor
) -> dict[str, str | list[str]]:
    """The form fields of a chunk's streamed transcription request (the file goes separately)."""
    form: dict[str, str | list[str]] = {
        "model": model,
        "response_format": "json",
        "stream": "true",
        "temperature": repr(float(sampling.temperature)),
    }
    if language is not None:
        form["language"] = language
    if flavor == "vllm":
        form["stream_include_usage"] = "true"
        if cap is not None:
            form["max_completion_tokens"] = str(cap)
        if sampling.seed is not None:
            form["seed"] = str(sampling.seed)
        if sampling.top_p != 1.0:
            form["top_p"] = repr(sampling.top_p)
    elif sampling.logprobs:
        form["include[]"] = ["logprobs"]
    return form


def chat_body(model: str, conversation: Conversation, sampling: Sampling, cap: int) -> dict[str, Any]:
    """The JSON body of a streamed chat completion: the conversation with its audio as `input_audio` WAV parts."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [_message(m) for m in conversation],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": cap,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
    }
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if sampling.logprobs or sampling.top_logprobs:
        body["logprobs"] = True
        body["top_logprobs"] = sampling.top_logprobs
    return body


def _message(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if not isinstance(content, list):
        return dict(message)
    parts = []
    for part in content:
        if "samples" in part:  # `base.audio_part`
            data = base64.b64encode(wav_bytes(part["samples"])).decode("ascii")
            parts.append({"type": "input_audio", "input_audio": {"data": data, "format": "wav"}})
        else:
            parts.append(part)
    return {**message, "content": parts}


async def stream_transcription(
    client: httpx.AsyncClient,
    upstream: Upstream,
    *,
    model: str,
    samples: np.ndarray,
    language: str | None,
    sampling: Sampling,
    cap: int | None,
) -> AsyncGenerator[Event, None]:
    """A chunk's transcription from `upstream`, as it streams: lists of tokens, then one `Finished`. Raises
    UpstreamFault (try another upstream) or UpstreamRejected (the request itself was refused)."""
    form = transcription_form(model, language, sampling, cap, upstream.flavor)
    files = {"file": ("chunk.wav", wav_bytes(samples), "audio/wav")}
    request = client.build_request("POST", f"{upstream.url}/audio/transcriptions", data=form, files=files)
    async for event in _events(client, request):
        yield event


async def stream_chat(
    client: httpx.AsyncClient,
    upstream: Upstream,
    *,
    model: str,
    conversation: Conversation,
    sampling: Sampling,
    cap: int,
) -> AsyncGenerator[Event, None]:
    """A chat reply from `upstream`, as it streams; raises as `stream_transcription`."""
    body = chat_body(model, conversation, sampling, cap)
    request = client.build_request("POST", f"{upstream.url}/chat/completions", json=body)
    async for event in _events(client, request):
        yield event


async def _events(client: httpx.AsyncClient, request: httpx.Request) -> AsyncGenerator[Event, None]:
    finished = False
    try:
        try:
            response = await client.send(request, stream=True)
        except STALE_CONNECTION:  # a pooled connection the upstream had closed: once more, on a new one
            response = await client.send(request, stream=True)
    except httpx.HTTPError as exc:
        raise UpstreamFault(describe_http_error(exc), timeout=isinstance(exc, httpx.TimeoutException)) from exc
    try:
        if response.status_code >= 400:
            raise await _refusal(response)
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            raise UpstreamFault(f"answered {response.headers.get('content-type') or 'no content type'}, not a stream")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue  # comments (`: progress`), `event:` lines, blank lines
            data = line[5:].strip()
            if data == "[DONE]":
                break
            try:
                events = parse_event(json.loads(data))
            except MALFORMED as exc:  # not JSON, nested too deep, or a field of the wrong type
                raise UpstreamFault(f"sent a malformed event: {shorten(data, 80)!r}") from exc
            for event in events:
                finished = finished or isinstance(event, Finished)
                yield event
    except httpx.HTTPError as exc:
        raise UpstreamFault(describe_http_error(exc), timeout=isinstance(exc, httpx.TimeoutException)) from exc
    finally:
        await response.aclose()
    if not finished:
        raise UpstreamFault("the stream ended before the answer did")


async def _refusal(response: httpx.Response) -> Exception:
    """The exception for an upstream's error answer: UpstreamRejected for the request's own fault, else
    UpstreamFault."""
    body = b""
    async for part in response.aiter_bytes():
        body += part
        if len(body) >= MAX_ERROR_BODY:
            break
    message, param, code = f"HTTP {response.status_code}", None, None
    try:
        error = json.loads(body).get("error")
        if isinstance(error, dict):
            message = str(error.get("message") or message)
            param = error.get("param") if isinstance(error.get("param"), str) else None
            code = error.get("code") if isinstance(error.get("code"), str) else None
        elif isinstance(error, str):
            message = error
    except (ValueError, AttributeError):
        pass
    status = response.status_code
    if status in (400, 422):  # the request itself (a prompt too long for the model, a value it refuses)
        return UpstreamRejected(status, message, param, code)
    # Anything else is the upstream's or its configuration's: 404 it no longer serves the model, 401/403 it
    # refuses VOXTRAL_VLLM_API_KEY, 429 it is full, 5xx it failed. Skipped until a health check: 404 and 5xx
    # but 503 (a full or stopping server is alive).
    down = status == 404 or (status >= 500 and status != 503)
    return UpstreamFault(f"HTTP {status}: {shorten(message, 200)}", down=down)


def parse_event(payload: Any) -> list[Event]:
    """The tokens and end of one streamed event in any shape this module reads; UpstreamRejected for an error
    event about the request itself (`invalid_request_error`), UpstreamFault for another error event or an
    unknown shape."""
    if not isinstance(payload, dict):
        raise UpstreamFault("sent an event that is not a JSON object")
    if "error" in payload:
        error = payload["error"]
        message = error.get("message") if isinstance(error, dict) else error
        if isinstance(error, dict) and error.get("type") in REQUEST_ERROR_TYPES:
            # the request's own fault, told after the stream started (this server's kind checks a chat's
            # context there): no other upstream would take it either
            param, code = error.get("param"), error.get("code")
            raise UpstreamRejected(
                400, str(message), param if isinstance(param, str) else None, code if isinstance(code, str) else None
            )
        raise UpstreamFault(f"failed while answering: {shorten(str(message), 200)}", down=False)
    kind = payload.get("type")
    if kind == "transcript.text.delta":
        return [_delta(payload.get("delta"), payload.get("logprobs"))]
    if kind == "transcript.text.done":
        usage = _dict(payload.get("usage"))
        details = _dict(usage.get("input_token_details"))
        truncated = bool(payload.get("truncated_segments"))
        return [
            Finished(
                text=_str(payload.get("text")),
                finish_reason="length" if truncated else "stop",
                prompt_tokens=_int(usage.get("input_tokens")),
                completion_tokens=_int(usage.get("output_tokens")),
                audio_tokens=_int(details.get("audio_tokens")),
            )
        ]
    if "choices" in payload:  # chat.completion.chunk, vLLM's transcription.chunk
        return _choice_events(payload)
    raise UpstreamFault(f"sent an event of an unknown shape: {shorten(json.dumps(payload), 120)}")


def _choice_events(payload: dict[str, Any]) -> list[Event]:
    events: list[Event] = []
    usage = _dict(payload.get("usage"))
    choices = payload.get("choices") or []
    if not isinstance(choices, list):
        raise TypeError("choices is not a list")
    if choices:
        choice = _dict(choices[0], strict=True)
        delta = _dict(choice.get("delta"), strict=True)
        content = _dict(choice.get("logprobs"), strict=True).get("content")
        text = delta.get("content")
        if text or content:
            events.append(_delta(text, content))
        if choice.get("finish_reason"):
            events.append(Finished(None, _str(choice["finish_reason"])))
    if usage:
        events.append(
            Finished(None, None, _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")), None)
        )
    return events


def _delta(text: Any, logprobs: Any) -> Delta:
    """A delta: its text, and its tokens, one per logprob entry when the upstream sent them, else the text as
    one piece. TypeError/ValueError for fields of the wrong type."""
    text = _str(text)
    if isinstance(logprobs, list) and logprobs:
        tokens = [
            Token(_piece(entry), _float(entry.get("logprob")), tuple(_alternatives(entry.get("top_logprobs"))))
            for entry in logprobs
        ]
        return Delta(text, tokens)
    return Delta(text, [Token(text.encode("utf-8"))] if text else [])


def _alternatives(top: Any) -> list[tuple[bytes, float]]:
    if top is None:
        return []
    if not isinstance(top, list):
        raise TypeError("top_logprobs is not a list")
    return [(_piece(alt), _float(alt.get("logprob"))) for alt in top]


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"a logprob of {type(value).__name__}")
    return float(value)


def _str(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"text of {type(value).__name__}")
    return value


def _dict(value: Any, strict: bool = False) -> dict[str, Any]:
    """`value` when it is an object; {} for null (or for anything else unless `strict`: usage `[]`)."""
    if isinstance(value, dict):
        return value
    if value is None or (not strict and not value):
        return {}
    raise TypeError(f"an object expected, {type(value).__name__} found")


def _piece(entry: Any) -> bytes:
    if not isinstance(entry, dict):
        raise TypeError("a logprob entry is not an object")
    raw = entry.get("bytes")
    if isinstance(raw, list) and all(isinstance(b, int) and 0 <= b < 256 for b in raw):
        return bytes(raw)
    return str(entry.get("token", "")).encode("utf-8")


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
