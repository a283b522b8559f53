"""Every kind of bad input issue 12 names, in one table, against one server: each gets its status and an OpenAI
envelope with a non-null `code`, and the next good request is served. The sections' own test files go deeper
(tests/test_api_audio_input.py, test_request_errors.py, test_access.py, test_admission.py, ...); this table is
the overview, and property-based tests of the form and JSON parsers close the file."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .audio_cases import referencing_uploads
from .conftest import FIXTURES, running_server

KEY = "sk-local-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
WAV = (FIXTURES / "speech.wav").read_bytes()
MODEL = "voxtral-tiny"


def wav_header(rate: int, channels: int, data_bytes: int) -> bytes:
    """A 16-bit PCM RIFF/WAVE header stating `rate`, `channels` and a data chunk of `data_bytes`."""
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * 2, channels * 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", data_bytes)
    )


@dataclass(frozen=True)
class Case:
    """One bad request: what to send (`kwargs` for httpx.request) and what must come back."""

    method: str
    path: str
    kwargs: dict[str, Any]
    status: int
    code: str
    headers: dict[str, str] = field(default_factory=dict)


def upload(data: bytes, **fields: str) -> dict[str, Any]:
    return {"files": {"file": ("audio.bin", data)}, "data": {"model": MODEL, **fields}}


def chat_audio(data: bytes) -> dict[str, Any]:
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"}}
    return {"json": {"model": MODEL, "messages": [{"role": "user", "content": [part]}]}}


def lotti_audio(data: bytes) -> dict[str, Any]:
    return {
        "json": {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Transcribe."}],
            "audio": base64.b64encode(data).decode(),
        }
    }


TRANSCRIBE, CHAT = "/v1/audio/transcriptions", "/v1/chat/completions"
CONCAT = referencing_uploads()["concat, existing file"]
HLS = referencing_uploads()["HLS playlist, existing file"]
SDP = referencing_uploads()["SDP (RTP on UDP)"]
ONE_HZ = wav_header(1, 1, 21_600) + bytes(21_600)
HALF_WAV = WAV[: len(WAV) // 2]

CASES: dict[str, Case] = {
    # 1. uploads that reach beyond their bytes, on all three audio inputs
    "concat script, transcription": Case("POST", TRANSCRIBE, upload(CONCAT), 400, "invalid_audio"),
    "HLS playlist, translation": Case("POST", "/v1/audio/translations", upload(HLS), 400, "invalid_audio"),
    "SDP description, transcription": Case("POST", TRANSCRIBE, upload(SDP), 400, "invalid_audio"),
    "concat script, chat input_audio": Case("POST", CHAT, chat_audio(CONCAT), 400, "invalid_audio"),
    "HLS playlist, lotti's audio": Case("POST", CHAT, lotti_audio(HLS), 400, "invalid_audio"),
    # 2. real truncation stays refused
    "WAV cut in half": Case("POST", TRANSCRIBE, upload(HALF_WAV), 400, "invalid_audio"),
    # 4. errors that mislead or break
    "JSON body to the multipart endpoint": Case(
        "POST",
        TRANSCRIBE,
        {"json": {"model": MODEL, "file": base64.b64encode(WAV).decode()}},
        415,
        "unsupported_media_type",
    ),
    "stop strings of 100,000 characters": Case(
        "POST",
        CHAT,
        {"json": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": ["x" * 100_000] * 5}},
        400,
        "array_above_max_length",
    ),
    "200,000 stop strings": Case(
        "POST",
        CHAT,
        {"json": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": ["x"] * 200_000}},
        400,
        "request_too_complex",
    ),
    "unknown model": Case("POST", TRANSCRIBE, upload(WAV, model="gpt-5"), 404, "model_not_found"),
    "unknown form field": Case("POST", TRANSCRIBE, upload(WAV, colour="blue"), 400, "unknown_parameter"),
    "word timestamps": Case(
        "POST",
        TRANSCRIBE,
        upload(WAV, **{"timestamp_granularities[]": "word", "response_format": "verbose_json"}),
        400,
        "unsupported_value",
    ),
    "temperature out of range": Case("POST", TRANSCRIBE, upload(WAV, temperature="7"), 400, "invalid_value"),
    # 5. work a few bytes can cause
    "WAV header saying 1 Hz": Case("POST", TRANSCRIBE, upload(ONE_HZ), 400, "invalid_audio"),
    "1,000,000 empty messages": Case(
        "POST",
        CHAT,
        {"content": b'{"model":"voxtral-tiny","messages":[' + b",".join([b"{}"] * 1_000_000) + b"]}"},
        400,
        "request_too_complex",
    ),
    "body over the upload limit": Case("POST", TRANSCRIBE, upload(bytes(5 * 1024 * 1024)), 413, "request_too_large"),
    # 6. access control
    "no API key": Case("POST", TRANSCRIBE, upload(WAV), 401, "invalid_api_key", headers={"Authorization": ""}),
    "wrong API key": Case(
        "GET", "/v1/models", {}, 401, "invalid_api_key", headers={"Authorization": "Bearer sk-wrong"}
    ),
    "foreign Host (DNS rebinding)": Case(
        "GET", "/v1/models", {}, 403, "host_not_allowed", headers={"Host": "evil.test"}
    ),
    "cross-site Origin": Case(
        "POST", "/v1/models/pull", {}, 403, "origin_not_allowed", headers={"Origin": "https://evil.test"}
    ),
}


@pytest.fixture(scope="module")
def guarded_url(tiny_model_dir: Path) -> Iterator[str]:
    """A server with an API key and a 4 MiB upload limit, the rest as defaults."""
    with running_server(model=str(tiny_model_dir), api_key=KEY, max_upload_mb=4) as url:
        yield url


def good_request(base_url: str) -> None:
    response = httpx.post(f"{base_url}{TRANSCRIBE}", headers=AUTH, **upload(WAV), timeout=120)
    assert response.status_code == 200, response.text
    assert isinstance(response.json()["text"], str)


def check_envelope(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    assert len(response.content) < 4096
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and isinstance(error["code"], str) and error["code"]
    if code is not None:
        assert error["code"] == code, error


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_its_error_and_the_server_serves_on(guarded_url: str, name: str) -> None:
    case = CASES[name]
    headers = {k: v for k, v in {**AUTH, **case.headers}.items() if v}
    response = httpx.request(case.method, f"{guarded_url}{case.path}", headers=headers, timeout=60, **case.kwargs)
    check_envelope(response, case.status, case.code)
    good_request(guarded_url)


# ---- property-based: whatever the form or the JSON, a 4xx envelope or a 200, never a 5xx ---------------------

FIELD_NAMES = st.sampled_from(
    [
        "model",
        "language",
        "prompt",
        "response_format",
        "temperature",
        "timestamp_granularities[]",
        "include[]",
        "stream",
        "chunking_strategy",
        "file",
        "x",
        "model[]",
        "",
    ]
)
FIELD_VALUES = st.one_of(
    st.sampled_from(
        [
            "voxtral-tiny",
            "json",
            "srt",
            "verbose_json",
            "true",
            "false",
            "segment",
            "word",
            "logprobs",
            "auto",
            "en",
            "-1",
            "0.5",
            "nan",
            "1e309",
            "",
        ]
    ),
    st.text(max_size=40),
)
FIELDS = st.lists(st.tuples(FIELD_NAMES, FIELD_VALUES), max_size=8)
FILES = st.one_of(st.just(WAV), st.binary(max_size=256), st.just(CONCAT), st.just(ONE_HZ), st.just(b""))
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def answered_without_server_error(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text[:500]
    if response.status_code != 200:
        check_envelope(response, response.status_code)


@PROPERTY
@given(fields=FIELDS, file=FILES, with_file=st.booleans())
def test_any_multipart_form_is_answered_without_a_server_error(
    guarded_url: str, fields: list[tuple[str, str]], file: bytes, with_file: bool
) -> None:
    # Without a file part httpx sends the fields urlencoded: that must be refused cleanly too.
    files = {"file": ("audio", file)} if with_file else None
    data = dict((name, value) for name, value in fields if name != "file")
    response = httpx.post(f"{guarded_url}{TRANSCRIBE}", headers=AUTH, data=data or None, files=files, timeout=120)
    answered_without_server_error(response)


JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system", "tool", "x"]),
        "content": JSON_VALUES | st.text(max_size=20),
    }
)
CHAT_BODIES = st.fixed_dictionaries(
    # max_tokens is always there: a random-weight model without a cap would talk until its context is full.
    {
        "model": st.sampled_from([MODEL, "whisper-1", ""]),
        "messages": st.lists(MESSAGE, max_size=3),
        "max_tokens": st.integers(-2, 4),
    },
    optional={
        "temperature": JSON_LEAVES,
        "stream": JSON_LEAVES,
        "stop": JSON_VALUES,
        "logprobs": JSON_LEAVES,
        "top_logprobs": JSON_LEAVES,
        "audio": st.one_of(st.text(max_size=12), st.just(base64.b64encode(WAV).decode())),
        "n": JSON_LEAVES,
        "extra": JSON_VALUES,
    },
)


@PROPERTY
@given(body=CHAT_BODIES | JSON_VALUES.filter(lambda v: not isinstance(v, dict)))
def test_any_json_chat_body_is_answered_without_a_server_error(guarded_url: str, body: Any) -> None:
    response = httpx.post(
        f"{guarded_url}{CHAT}",
        headers={**AUTH, "Content-Type": "application/json"},
        content=json.dumps(body),
        timeout=120,
    )
    answered_without_server_error(response)
