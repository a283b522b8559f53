"""The vLLM backend's pure parts: the upstreams' stream shapes (vLLM's `transcription.chunk` and
`chat.completion.chunk`, OpenAI's `transcript.text.*`), model lists and form fields. Streams are replayed
byte for byte through httpx's transport API."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import numpy as np
import pytest

from voxtral_local.backends.base import Sampling
from voxtral_local.backends.vllm.exchanges import (
    Delta,
    Finished,
    Token,
    UpstreamFault,
    UpstreamRejected,
    parse_event,
    stream_chat,
    stream_transcription,
    transcription_form,
)
from voxtral_local.backends.vllm.upstreams import Upstream, parse_model_list
from voxtral_local.models.catalog import VOXTRAL_MINI

# What vLLM 0.10 streams for a transcription (`stream=true`, `stream_include_usage=true`).
VLLM_TRANSCRIPTION = [
    {"id": "trsc-1", "object": "transcription.chunk", "created": 1, "model": "m",
     "choices": [{"delta": {"content": " Hello"}, "finish_reason": None, "stop_reason": None}]},
    {"id": "trsc-1", "object": "transcription.chunk", "created": 1, "model": "m",
     "choices": [{"delta": {"content": " world"}, "finish_reason": None, "stop_reason": None}]},
    {"id": "trsc-1", "object": "transcription.chunk", "created": 1, "model": "m",
     "choices": [{"delta": {"content": "."}, "finish_reason": "stop", "stop_reason": None}]},
    {"id": "trsc-1", "object": "transcription.chunk", "created": 1, "model": "m", "choices": [],
     "usage": {"prompt_tokens": 390, "completion_tokens": 3, "total_tokens": 393}},
]  # fmt: skip
VLLM_CHAT = [
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]},
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None,
                  "logprobs": {"content": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105],
                                            "top_logprobs": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105]},
                                                             {"token": "Ho", "logprob": -2.0,
                                                              "bytes": [72, 111]}]}]}}]},
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}]},
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
     "usage": {"prompt_tokens": 400, "completion_tokens": 1, "total_tokens": 401}},
]  # fmt: skip


def sse(payloads: list[Any], *, done: bool = True) -> bytes:
    lines = [f"data: {json.dumps(p)}\n\n" for p in payloads] + (["data: [DONE]\n\n"] if done else [])
    return "".join(lines).encode()


def replay(body: bytes, status: int = 200, content_type: str = "text/event-stream") -> httpx.AsyncClient:
    """A client whose every request is answered with `body` (what an upstream once sent)."""
    return httpx.AsyncClient(
        transport=httpx.MockTransport(
            lambda _: httpx.Response(status, content=body, headers={"content-type": content_type})
        )
    )


def collect(client: httpx.AsyncClient, kind: str = "chat") -> list[Any]:
    upstream = Upstream("http://upstream.test/v1", state="up", flavor="vllm")

    async def run() -> list[Any]:
        async with client:
            if kind == "chat":
                events = stream_chat(client, upstream, model="m", conversation=[], sampling=Sampling(), cap=8)
            else:
                samples = np.zeros(1600, dtype=np.float32)
                events = stream_transcription(
                    client, upstream, model="m", samples=samples, language="en", sampling=Sampling(), cap=8
                )
            return [event async for event in events]

    return asyncio.run(run())


# ---- parse_event -------------------------------------------------------------------------------------------


def test_vllm_transcription_chunks() -> None:
    events = [e for payload in VLLM_TRANSCRIPTION for e in parse_event(payload)]
    assert events == [
        Delta(" Hello", [Token(b" Hello")]),
        Delta(" world", [Token(b" world")]),
        Delta(".", [Token(b".")]),
        Finished(None, "stop"),
        Finished(None, None, prompt_tokens=390, completion_tokens=3),
    ]


def test_vllm_chat_chunks_with_logprobs() -> None:
    assert parse_event(VLLM_CHAT[0]) == []  # the role-only first chunk says nothing
    assert parse_event(VLLM_CHAT[1]) == [Delta("Hi", [Token(b"Hi", -0.25, ((b"Hi", -0.25), (b"Ho", -2.0)))])]
    assert parse_event(VLLM_CHAT[2]) == [Finished(None, "length")]
    assert parse_event(VLLM_CHAT[3]) == [Finished(None, None, 400, 1)]


def test_logprob_entries_without_bytes_use_the_token_text() -> None:
    payload = {"choices": [{"delta": {"content": "é"}, "logprobs": {"content": [{"token": "é", "logprob": -1.5}]}}]}
    assert parse_event(payload) == [Delta("é", [Token("é".encode(), -1.5)])]


def test_openai_transcript_events_with_logprobs() -> None:
    delta = {
        "type": "transcript.text.delta",
        "delta": " Hello",
        "logprobs": [{"token": " Hel", "logprob": -0.5, "bytes": [32, 72, 101, 108]}, {"token": "lo", "logprob": -0.1}],
    }
    assert parse_event(delta) == [Delta(" Hello", [Token(b" Hel", -0.5), Token(b"lo", -0.1)])]
    assert parse_event({"type": "transcript.text.delta", "delta": " plain"}) == [Delta(" plain", [Token(b" plain")])]
    done = {
        "type": "transcript.text.done",
        "text": " Hello",
        "usage": {
            "type": "tokens",
            "input_tokens": 400,
            "output_tokens": 2,
            "input_token_details": {"audio_tokens": 375},
        },
    }
    assert parse_event(done) == [Finished(" Hello", "stop", 400, 2, 375)]
    truncated = {"type": "transcript.text.done", "text": "x", "truncated_segments": [0]}
    assert parse_event(truncated) == [Finished("x", "length")]


@pytest.mark.parametrize(
    "payload",
    [{"error": {"message": "CUDA out of memory", "type": "server_error"}}, {"error": "engine dead"}],
)
def test_error_events_are_faults_that_leave_the_upstream_up(payload: dict[str, Any]) -> None:
    with pytest.raises(UpstreamFault) as caught:
        parse_event(payload)
    assert caught.value.down is False and "failed while answering" in caught.value.message


@pytest.mark.parametrize("kind", ["invalid_request_error", "BadRequestError"])
def test_an_error_event_about_the_request_is_a_refusal(kind: str) -> None:
    error = {"message": "too long", "type": kind, "param": "messages", "code": "context_length_exceeded"}
    with pytest.raises(UpstreamRejected) as caught:
        parse_event({"error": error})
    assert (caught.value.status, caught.value.message, caught.value.param, caught.value.code) == (
        400,
        "too long",
        "messages",
        "context_length_exceeded",
    )


@pytest.mark.parametrize("payload", [{"object": "something.else"}, ["a", "list"], "text", 3])
def test_unknown_shapes_are_faults(payload: Any) -> None:
    with pytest.raises(UpstreamFault):
        parse_event(payload)


# ---- whole streams -----------------------------------------------------------------------------------------


def test_a_replayed_vllm_stream_ends_at_done() -> None:
    body = sse(VLLM_CHAT) + b"data: {this is never read\n\n"
    events = collect(replay(body))
    assert events == [
        Delta("Hi", [Token(b"Hi", -0.25, ((b"Hi", -0.25), (b"Ho", -2.0)))]),
        Finished(None, "length"),
        Finished(None, None, 400, 1),
    ]


def test_comments_and_event_lines_are_skipped() -> None:
    body = b": progress 0.5\n\nevent: message\n" + sse(VLLM_TRANSCRIPTION)
    events = collect(replay(body), kind="transcription")
    assert [e.text for e in events if isinstance(e, Delta)] == [" Hello", " world", "."]


def test_a_stream_cut_before_its_end_is_a_fault() -> None:
    with pytest.raises(UpstreamFault, match="ended before"):
        collect(replay(sse(VLLM_TRANSCRIPTION[:2], done=False)), kind="transcription")


def test_an_event_that_is_not_json_is_a_fault() -> None:
    with pytest.raises(UpstreamFault, match="malformed"):
        collect(replay(b"data: {oops\n\n"))


@pytest.mark.parametrize(
    "payload",
    [
        {"choices": "x"},
        {"choices": [1]},
        {"choices": [{"delta": "x"}]},
        {"choices": [{"delta": {"content": 5}}]},
        {"choices": [{"delta": {"content": "a"}, "logprobs": {"content": [1, 2]}}]},
        {"choices": [{"delta": {"content": "a"}, "logprobs": {"content": [{"token": "a", "logprob": "x"}]}}]},
        {"choices": [{"delta": {"content": "a"}, "logprobs": {"content": [{"token": "a", "logprob": None}]}}]},
        {
            "choices": [
                {"delta": {"content": "a"}, "logprobs": {"content": [{"token": "a", "logprob": -1, "top_logprobs": 5}]}}
            ]
        },
        {"choices": [], "usage": [1]},
        {"choices": [], "usage": "x"},
        {"type": "transcript.text.done", "text": "x", "usage": [1]},
        {"type": "transcript.text.done", "text": "x", "usage": {"input_token_details": "x"}},
        {"type": "transcript.text.delta", "delta": 5},
    ],
)
def test_malformed_events_are_faults_not_crashes(payload: Any) -> None:
    """Fields of the wrong type in an upstream's event: the upstream is at fault (the chunk is retried
    elsewhere), never an internal error of this server."""
    with pytest.raises(UpstreamFault, match="malformed"):
        collect(replay(sse([payload])))


def test_deeply_nested_json_is_a_fault() -> None:
    with pytest.raises(UpstreamFault, match="malformed"):
        collect(replay(b"data: " + b"[" * 100_000 + b"]" * 100_000 + b"\n\n"))


def test_an_answer_that_is_not_a_stream_is_a_fault() -> None:
    with pytest.raises(UpstreamFault, match="application/json"):
        collect(replay(b'{"text": "hi"}', content_type="application/json"))


def test_a_4xx_is_the_requests_own_fault() -> None:
    body = json.dumps({"error": {"message": "too long", "type": "invalid_request_error", "param": "messages",
                                 "code": "context_length_exceeded"}}).encode()  # fmt: skip
    with pytest.raises(UpstreamRejected) as caught:
        collect(replay(body, status=400, content_type="application/json"))
    rejected = caught.value
    assert (rejected.status, rejected.message, rejected.param, rejected.code) == (
        400,
        "too long",
        "messages",
        "context_length_exceeded",
    )


@pytest.mark.parametrize(("status", "down"), [(500, True), (404, True), (429, False), (503, False)])
def test_server_errors_are_faults(status: int, down: bool) -> None:
    with pytest.raises(UpstreamFault) as caught:
        collect(replay(b'{"error": {"message": "no"}}', status=status, content_type="application/json"))
    assert caught.value.down is down and f"HTTP {status}" in caught.value.message


def test_a_refused_connection_is_a_fault() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(UpstreamFault, match="connection failed") as caught:
        collect(httpx.AsyncClient(transport=httpx.MockTransport(refuse)))
    assert caught.value.down and not caught.value.timeout


# ---- model lists -------------------------------------------------------------------------------------------


def test_vllm_model_list() -> None:
    body = {
        "object": "list",
        "data": [
            {"id": VOXTRAL_MINI, "object": "model", "owned_by": "vllm", "max_model_len": 32768, "root": VOXTRAL_MINI},
            {"id": "lora-x", "object": "model", "owned_by": "vllm", "max_model_len": True},
        ],
    }
    models, context, flavor = parse_model_list(body)
    assert models == {VOXTRAL_MINI, "lora-x"} and context == {VOXTRAL_MINI: 32768} and flavor == "vllm"


def test_this_servers_model_list_skips_aliases_and_junk() -> None:
    body = {
        "object": "list",
        "data": [
            {"id": "voxtral-tiny", "owned_by": "local"},
            {"id": "whisper-1", "owned_by": "local", "alias_of": "voxtral-tiny"},
            "junk",
            {"id": 7},
            {"id": ""},
            {"id": "x" * 1000},
            {"no": "id"},
        ],
    }
    assert parse_model_list(body) == (frozenset({"voxtral-tiny"}), {}, "openai")


@pytest.mark.parametrize("body", [[], {"data": {}}, {"object": "list"}, "models", None])
def test_anything_but_a_list_is_refused(body: Any) -> None:
    with pytest.raises(ValueError):
        parse_model_list(body)


# ---- form fields -------------------------------------------------------------------------------------------


def test_transcription_form_for_vllm() -> None:
    sampling = Sampling(temperature=0.2, top_p=0.9, seed=7)
    form = transcription_form("m", "fr", sampling, 120, "vllm")
    assert form == {
        "model": "m",
        "response_format": "json",
        "stream": "true",
        "temperature": "0.2",
        "language": "fr",
        "stream_include_usage": "true",
        "max_completion_tokens": "120",
        "seed": "7",
        "top_p": "0.9",
    }


def test_transcription_form_for_openai_kind_has_no_vllm_fields() -> None:
    form = transcription_form("m", None, Sampling(top_p=0.9, seed=7, logprobs=True), 120, "openai")
    assert form == {
        "model": "m",
        "response_format": "json",
        "stream": "true",
        "temperature": "0.0",
        "include[]": ["logprobs"],
    }
