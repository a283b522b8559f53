"""Errors that say what is wrong, stay small, always carry a code, and never break the server."""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import httpx
import pytest
from openai import OpenAI

from .conftest import FIXTURES

MODEL = "voxtral-tiny"
WAV = (FIXTURES / "speech.wav").read_bytes()
HUGE = "x" * 300_000
JSON = {"Content-Type": "application/json"}
BIG_INT = "<a 5000-digit integer>"
TEXT_CHAT: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def envelope(response: httpx.Response) -> dict[str, Any]:
    """The error of an OpenAI envelope, checked: four fields, a non-null string code, a bounded body."""
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert body["error"]["param"] is None or len(body["error"]["param"]) <= 100
    assert len(response.content) < 2048, response.content[:300]
    return dict(body["error"])


def still_serves(base_url: str) -> None:
    response = httpx.post(f"{base_url}/v1/chat/completions", json=TEXT_CHAT, timeout=60)
    assert response.status_code == 200, response.text


# ---- a JSON body where the audio endpoints take multipart ------------------------------------------------


@pytest.mark.parametrize("path", ["transcriptions", "translations"])
@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (json.dumps({"model": MODEL, "file": base64.b64encode(WAV).decode()}).encode(),
         {"Content-Type": "application/json"}),
        (b"model=voxtral-tiny", {"Content-Type": "text/plain"}),
        (WAV, {"Content-Type": "audio/wav"}),
        (WAV, {}),
    ],
)  # fmt: skip
def test_a_body_that_is_not_a_form_is_415(base_url: str, path: str, content: bytes, headers: dict[str, str]) -> None:
    response = httpx.post(f"{base_url}/v1/audio/{path}", content=content, headers=headers, timeout=60)
    assert response.status_code == 415, response.text
    error = envelope(response)
    assert error["code"] == "unsupported_media_type" and error["param"] == "file"
    assert "multipart/form-data" in error["message"] and "Missing required parameter" not in error["message"]


def test_a_urlencoded_form_gets_told_the_file_is_missing(base_url: str) -> None:
    response = httpx.post(f"{base_url}/v1/audio/transcriptions", data={"model": MODEL}, timeout=60)
    assert response.status_code == 400
    assert envelope(response)["code"] == "missing_required_parameter"
    files = {"file": ("speech.wav", WAV, "audio/wav")}
    assert httpx.post(f"{base_url}/v1/audio/transcriptions", files=files, data={"model": MODEL}).status_code == 200


# ---- unknown chat fields in X-Voxtral-Ignored-Fields ------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "header"),
    [
        ({"user": "u", "名前": 1}, "user,+1 more"),
        ({"naïve": 1, "seed_": 2}, "seed_,+1 more"),  # Latin-1, but not a header token
        ({"a\r\nX-Injected: 1": 1, "b": 2}, "b,+1 more"),
        ({"nul\x00": 1, "c": 2}, "c,+1 more"),
        ({"with space": 1, "quote\"": 1, "ok.name~1": 1}, "ok.name~1,+2 more"),
        ({"n" * 65: 1, "short": 1}, "short,+1 more"),
        ({f"field{i:05d}": i for i in range(20_000)}, None),
    ],
)  # fmt: skip
def test_ignored_field_names_never_break_the_response(base_url: str, extra: dict[str, Any], header: str | None) -> None:
    for stream in (False, True):
        body = {**TEXT_CHAT, **extra, "stream": stream}
        with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=60) as response:
            assert response.status_code == 200
            value = response.headers["x-voxtral-ignored-fields"]
            assert "x-injected" not in response.headers
            response.read()
        if header is not None:
            assert value == header
        else:  # 20,000 names: the first 32, then how many more
            names = value.split(",")
            assert names[:32] == [f"field{i:05d}" for i in range(32)]
            assert names[32:] == ["+19968 more"] and len(value) < 1100
    still_serves(base_url)


# ---- huge values in errors, and a code on every envelope -----------------------------------------------


def chat_part(part: dict[str, Any]) -> dict[str, Any]:
    return {**TEXT_CHAT, "messages": [{"role": "user", "content": [part]}]}


CHAT_CASES = [
    ({**TEXT_CHAT, "stop": ["s"] * 200_000}, 400, None, "request_too_complex"),
    ({**TEXT_CHAT, "stop": ["s"] * 5_000}, 400, "stop", "array_above_max_length"),
    ({**TEXT_CHAT, "stop": [HUGE]}, 200, None, None),  # a long stop string is allowed, and not echoed
    (chat_part({"type": "audio_url", "audio_url": {"url": "data:audio/wav;base64," + HUGE}}), 400, "messages",
     "invalid_value"),
    (chat_part({"type": "text", "text": 12345, "pad": HUGE}), 400, "messages", "invalid_value"),
    ({**TEXT_CHAT, "model": HUGE}, 404, "model", "model_not_found"),
    ({**TEXT_CHAT, "temperature": HUGE}, 400, "temperature", "invalid_value"),
    ({**TEXT_CHAT, "max_tokens": [1] * 50_000}, 400, "max_tokens", "invalid_value"),
    ({**TEXT_CHAT, "some_future_option": [[1] * 10] * 20_000}, 400, None, "request_too_complex"),
    ({**TEXT_CHAT, "seed": BIG_INT}, 400, None, "invalid_json"),  # past what the JSON parser takes
    ({**TEXT_CHAT, "messages": [{"role": HUGE, "content": "hi"}]}, 400, "messages", "invalid_value"),
    ({**TEXT_CHAT, "language": HUGE}, 400, "language", "invalid_value"),
    ({**TEXT_CHAT, "audio": base64.b64encode(WAV).decode(), "language": HUGE}, 400, "language", "invalid_value"),
    ({**TEXT_CHAT, "stream_options": {"include_usage": HUGE}}, 400, "stream_options", "invalid_value"),
    ({"messages": TEXT_CHAT["messages"]}, 400, "model", "missing_required_parameter"),
    ({**TEXT_CHAT, "messages": [{}] * 3}, 400, "messages", "missing_required_parameter"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "param", "code"), CHAT_CASES)
def test_chat_errors_quote_little_of_huge_input(
    base_url: str, body: dict[str, Any], status: int, param: str | None, code: str | None
) -> None:
    content = json.dumps(body).replace(f'"{BIG_INT}"', "9" * 5000).encode()  # a 5000-digit number
    response = httpx.post(f"{base_url}/v1/chat/completions", content=content, headers=JSON, timeout=60)
    assert response.status_code == status, response.text[:500]
    if status != 200:
        error = envelope(response)
        assert (error["param"], error["code"]) == (param, code)
        assert HUGE[:200] not in error["message"]


def test_missing_nested_fields_are_named_by_path(base_url: str) -> None:
    body = {**TEXT_CHAT, "messages": [{"content": "hi"}]}
    error = envelope(httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60))
    assert error["message"] == "Missing required parameter: 'messages.0.role'."


FORM_CASES = [
    ({"model": HUGE}, 404, "model", "model_not_found"),
    ({"model": MODEL, "language": HUGE}, 400, "language", "invalid_value"),
    ({"model": MODEL, "response_format": HUGE}, 400, "response_format", "invalid_value"),
    ({"model": MODEL, "temperature": HUGE}, 400, "temperature", "invalid_value"),
    ({"model": MODEL, "f" * 500: "1"}, 400, "f" * 500, "unknown_parameter"),  # 10,000: the multipart parser's 400
    ({"model": MODEL, "timestamp_granularities[]": HUGE}, 400, "timestamp_granularities", "invalid_value"),
]


@pytest.mark.parametrize(("data", "status", "param", "code"), FORM_CASES)
@pytest.mark.parametrize("path", ["transcriptions", "translations"])
def test_form_errors_quote_little_of_huge_input(
    base_url: str, path: str, data: dict[str, str], status: int, param: str, code: str
) -> None:
    if path == "translations" and set(data) & {"language", "timestamp_granularities[]"}:
        param, code = next(iter(set(data) - {"model"})).removesuffix("[]"), "unknown_parameter"
    files = {"file": ("speech.wav", WAV, "audio/wav")}
    response = httpx.post(f"{base_url}/v1/audio/{path}", files=files, data=data, timeout=60)
    assert response.status_code == status, response.text[:500]
    error = envelope(response)
    assert (error["param"][:90], error["code"]) == (param[:90], code)
    assert HUGE[:200] not in error["message"]


def test_http_errors_of_every_kind_carry_a_code(base_url: str) -> None:
    too_many_fields = "&".join(f"f{i}=1" for i in range(200))  # Starlette's form limit: a bare HTTP 400
    response = httpx.post(
        f"{base_url}/v1/audio/transcriptions",
        content=too_many_fields.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400 and envelope(response)["code"] == "bad_request"
    assert envelope(httpx.get(f"{base_url}/no/such/route"))["code"] == "not_found"
    assert envelope(httpx.delete(f"{base_url}/v1/chat/completions"))["code"] == "method_not_allowed"
    pull = httpx.post(f"{base_url}/v1/models/pull", json={"model_name": HUGE, "model": "other"})
    assert pull.status_code in (400, 404) and HUGE[:200] not in envelope(pull)["message"]
    still_serves(base_url)


# ---- list bounds, and big bodies off the event loop ------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({**TEXT_CHAT, "messages": [{}] * 1_000_000}, None, "request_too_complex"),
        ({**TEXT_CHAT, "messages": [{"role": "user", "content": "hi"}] * 2049}, "messages", "array_above_max_length"),
        ({**TEXT_CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * 257}]}, "messages",
         "array_above_max_length"),
        ({**TEXT_CHAT, "stop": ["a", "b", "c", "d", "e"]}, "stop", "array_above_max_length"),
    ],
)  # fmt: skip
def test_oversized_lists_are_refused_naming_the_field(
    base_url: str, body: dict[str, Any], param: str | None, code: str
) -> None:
    started = time.monotonic()
    content = json.dumps(body).encode()
    response = httpx.post(f"{base_url}/v1/chat/completions", content=content, headers=JSON, timeout=120)
    assert response.status_code == 400
    error = envelope(response)
    assert (error["param"], error["code"]) == (param, code)
    assert time.monotonic() - started < 30  # a robustness bound, not a speed claim


def test_deep_nesting_is_invalid_json_not_a_crash(base_url: str) -> None:
    body = json.dumps(TEXT_CHAT)[:-1].encode() + b', "x": ' + b"[" * 90_000 + b"]" * 90_000 + b"}"
    response = httpx.post(f"{base_url}/v1/chat/completions", content=body, headers=JSON, timeout=60)
    assert response.status_code == 400 and envelope(response)["code"] == "invalid_json"
    still_serves(base_url)


def test_the_largest_allowed_lists_are_accepted(base_url: str) -> None:
    body = {
        **TEXT_CHAT,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * 256}] * 8,
        "stop": ["w", "x", "y", "z"],
    }
    assert httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=120).status_code == 200


def test_health_answers_while_big_bodies_arrive(base_url: str) -> None:
    """Bodies of a million empty messages and of 2,048 messages × 256 parts, sent over and over: /health keeps
    answering meanwhile (loose bound; parsed and validated on the event loop, the second held it for ~25 s)."""
    bodies = [
        json.dumps({**TEXT_CHAT, "messages": [{}] * 1_000_000}).encode(),
        json.dumps({**TEXT_CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * 256}]
                    * 2048}).encode(),
    ]  # fmt: skip
    statuses: list[int] = []
    stop = threading.Event()

    def send() -> None:
        while not stop.is_set() and len(statuses) < 6:
            for body in bodies:
                response = httpx.post(f"{base_url}/v1/chat/completions", content=body, headers=JSON, timeout=120)
                statuses.append(response.status_code)

    sender = threading.Thread(target=send)
    sender.start()
    slowest = 0.0
    try:
        while sender.is_alive():
            started = time.monotonic()
            assert httpx.get(f"{base_url}/health", timeout=30).status_code == 200
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.02)
    finally:
        stop.set()
        sender.join()
    assert statuses and set(statuses) == {400}
    assert slowest < 3  # loose: parsing never holds the event loop for long


def test_sdk_sees_the_envelope(client: OpenAI) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], stop=["a"] * 10)
    assert raised.value.code == "array_above_max_length" and raised.value.param == "stop"
