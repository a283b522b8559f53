"""`/v1/chat/completions` with audio (OpenAI SDK), and the lotti Flutter client's exact requests."""

from __future__ import annotations

import base64
import codecs
import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI

from voxtral_local.testing.audio_files import encode, opus_duration_bomb, silence

from .conftest import FIXTURES

MODEL = "voxtral-tiny"


def b64(path: Path | bytes) -> str:
    return base64.b64encode(path if isinstance(path, bytes) else path.read_bytes()).decode()


def audio_message(text: str = "What is said in this recording?", extension: str = "mp3") -> Any:
    return {
        "role": "user",
        "content": [
            {
                "type": "input_audio",
                "input_audio": {"data": b64(FIXTURES / f"speech.{extension}"), "format": extension},
            },
            {"type": "text", "text": text},
        ],
    }


def test_chat_with_input_audio(client: OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=[audio_message()], max_tokens=16, temperature=0)
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert isinstance(completion.created, int) and completion.model == MODEL
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"  # random weights never stop by themselves
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 16
    assert completion.usage.prompt_tokens > 375  # the audio tokens count as prompt
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 16


def test_streamed_chat_chunks_with_usage(client: OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": MODEL, "messages": [audio_message()], "max_tokens": 12, "temperature": 0}
    plain = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) > 2
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain.choices[0].message.content
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(final) == 1 and final[0].choices[0].finish_reason == "length"
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage is not None
    assert plain.usage is not None
    assert usage.usage.model_dump() == plain.usage.model_dump()


def test_raw_chat_stream_framing_and_done(base_url: str) -> None:
    body = {"model": MODEL, "messages": [audio_message()], "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(response.iter_raw()).decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    for event in events[:-2]:
        chunk = json.loads(event.removeprefix("data: "))
        assert chunk["object"] == "chat.completion.chunk"


def test_multi_turn_system_and_several_audio_parts(client: OpenAI) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "You answer briefly."},
        {
            "role": "user",
            "content": [
                {"type": "input_audio", "input_audio": {"data": b64(FIXTURES / "speech.wav"), "format": "wav"}},
                {"type": "input_audio", "input_audio": b64(FIXTURES / "speech.ogg")},  # Mistral's bare form
                {"type": "text", "text": "Are these the same sentence?"},
            ],
        },
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "Summarise it in three words."},
    ]
    completion = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8)
    assert completion.usage is not None and completion.usage.prompt_tokens > 750  # two 30 s windows
    assert completion.choices[0].message.content


def test_text_only_chat_with_a_system_prompt(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hello?"}],
        max_completion_tokens=6,
    )
    assert completion.usage is not None and completion.usage.prompt_tokens < 50
    assert completion.usage.completion_tokens == 6


def test_seed_makes_sampling_repeatable(client: OpenAI) -> None:
    def sample(seed: int) -> str | None:
        out = client.chat.completions.create(
            model=MODEL, messages=[audio_message()], max_tokens=20, temperature=1.5, seed=seed
        )
        return out.choices[0].message.content

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_stop_strings_end_the_reply_before_them(client: OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": MODEL, "messages": [audio_message()], "temperature": 0}
    full = client.chat.completions.create(**kwargs, max_tokens=40).choices[0].message.content
    assert full
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip() and stop in full
    expected = full[: full.index(stop)].strip()
    stopped = client.chat.completions.create(**kwargs, max_tokens=40, stop=[stop, "never-seen-text"])
    assert stopped.choices[0].message.content == expected
    assert stopped.choices[0].finish_reason == "stop"
    streamed = list(client.chat.completions.create(**kwargs, max_tokens=40, stop=stop, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == expected and stop not in text


def test_unknown_fields_are_ignored_and_named(base_url: str) -> None:
    body = {"model": MODEL, "messages": [audio_message()], "max_tokens": 3, "frequency_penalty": 0, "user": "u1",
            "logit_bias": {}, "some_future_option": {"x": 1}}  # fmt: skip
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] is not None
    assert response.headers["x-voxtral-ignored-fields"] == "frequency_penalty,logit_bias,some_future_option,user"
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json={**body, "stream": True}, timeout=60) as streamed:
        assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
        assert streamed.headers["x-voxtral-ignored-fields"] == "frequency_penalty,logit_bias,some_future_option,user"
        assert streamed.read().decode().rstrip().endswith("data: [DONE]")
    known = {"model": MODEL, "messages": [audio_message()], "max_tokens": 3, "temperature": 0.0, "seed": 1}
    assert (
        "x-voxtral-ignored-fields" not in httpx.post(f"{base_url}/v1/chat/completions", json=known, timeout=60).headers
    )


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 404, "model", "model_not_found"),
        ({"model": MODEL}, 400, "messages", "missing_required_parameter"),
        ({"model": MODEL, "messages": []}, 400, "messages", "invalid_value"),
        ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "input_audio",
          "input_audio": {"data": "%%%not base64%%%", "format": "wav"}}]}]}, 400, "messages", "invalid_value"),
        ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "input_audio",
          "input_audio": {"data": base64.b64encode(b"just text").decode(), "format": "wav"}}]}]},
         400, "messages", "invalid_audio"),
        ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url",
          "image_url": {"url": "http://x"}}]}]}, 400, "messages", "invalid_value"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n", "invalid_value"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40000}, 400, "messages",
         "context_length_exceeded"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 5}, 400, "temperature",
         "invalid_value"),
        ({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}, 400, "messages", "invalid_value"),
        ({"model": MODEL, "messages": [{"role": "assistant", "content": [{"type": "input_audio",
          "input_audio": b64(FIXTURES / "speech.wav")}]}, {"role": "user", "content": "hi"}]}, 400,
         "messages[0]", "invalid_value"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "language": "en"}, 400, "language",
         "invalid_value"),
        ([{"model": MODEL}], 400, None, "invalid_body"),
    ],
)  # fmt: skip
def test_bad_chat_requests(base_url: str, body: Any, status: int, param: str | None, code: str) -> None:
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)


def test_invalid_json_or_no_body_is_400(base_url: str) -> None:
    url = f"{base_url}/v1/chat/completions"
    response = httpx.post(url, content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "The request body is not valid JSON (key must be a string at line 1 column 2).",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_json",
    }
    empty = httpx.post(url)
    assert empty.status_code == 400
    assert empty.json()["error"]["message"] == "The request body must be a JSON object."


def test_a_conversation_must_start_with_the_user(base_url: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "assistant", "content": "Hello."}], "max_tokens": 3}
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "messages" and "must start with a user message" in error["message"]
    system_only = {**body, "messages": [{"role": "system", "content": "Be brief."}]}
    assert httpx.post(f"{base_url}/v1/chat/completions", json=system_only, timeout=60).status_code == 200


def test_audio_beyond_forty_minutes_in_one_prompt_is_400(base_url: str) -> None:
    part = {"type": "input_audio", "input_audio": {"data": b64(opus_duration_bomb(hours=0.75)), "format": "ogg"}}
    body = {"model": MODEL, "messages": [{"role": "user", "content": [part]}]}
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "audio_too_long" and "40 minutes" in error["message"]


# ---- the lotti Flutter client -------------------------------------------------------------------------


def lotti_body(audio: bytes, *, stream: bool, language: str | None = None) -> bytes:
    """The JSON lotti's VoxtralInferenceRepository builds, in its key order (Dart's jsonEncode of a map)."""
    body: dict[str, Any] = {
        "model": "mistralai/Voxtral-Mini-3B-2507",
        "messages": [{"role": "user", "content": "Transcribe this audio.\n\nSpeech dictionary: Voxtral, lotti"}],
        "temperature": 0.0,
        "max_tokens": 4096,
        "audio": base64.b64encode(audio).decode(),
        "stream": stream,
    }
    if language is not None:
        body["language"] = language
    return json.dumps(body, separators=(",", ":")).encode()


def lotti_exchange(url: str, body: bytes, *, stream: bool) -> tuple[int, list[bytes]]:
    """Send the request as Dart's http package does and return the status and each network read."""
    parsed = urlparse(url)
    headers = ["POST /v1/chat/completions HTTP/1.1", f"host: {parsed.hostname}:{parsed.port}",
               "user-agent: Dart/3.9 (dart:io)", "accept-encoding: gzip", f"content-length: {len(body)}",
               "content-type: application/json; charset=utf-8"]  # fmt: skip
    if stream:
        headers.insert(3, "accept: text/event-stream")
    with socket.create_connection((parsed.hostname, parsed.port), timeout=120) as sock:
        sock.sendall(("\r\n".join(headers) + "\r\n\r\n").encode() + body)
        reads = []
        while piece := sock.recv(65536):
            reads.append(piece)
            if b"data: [DONE]" in piece or (not stream and b"}}" in piece[-4:]):
                break
    head, _, first = b"".join(reads[:1]).partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, [first, *reads[1:]]


def parse_like_lotti(reads: list[bytes]) -> tuple[str, list[dict[str, Any]]]:
    """lotti's SSE loop: every network read on its own, split on newlines, `data: ` lines parsed alone."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    text, chunks = "", list[dict[str, Any]]()
    for read in reads:
        for line in decoder.decode(read).split("\n"):
            if line.startswith("data: "):
                data = line[6:].strip()
                if data == "[DONE]":
                    return text, chunks
                chunk = json.loads(data)  # lotti drops a line that fails here: an event split across writes
                chunks.append(chunk)
                choice = chunk["choices"][0] if chunk.get("choices") else {}
                text += (choice.get("delta") or {}).get("content") or ""
    raise AssertionError("the stream ended without data: [DONE]")


def dechunk(raw: bytes) -> bytes:
    """Undo HTTP/1.1 chunked transfer coding (what Dart's http client does before lotti sees bytes)."""
    out, rest = b"", raw
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2 :]
    return out


@pytest.fixture(scope="module")
def recording(speech: np.ndarray) -> bytes:
    """A 70 s M4A voice note: three chunks."""
    audio = np.concatenate([speech, silence(0.5)] * 10)[: 70 * 16000]
    return encode(audio, "m4a")


@pytest.fixture(scope="module")
def lotti_url(tiny_model_dir: Path) -> Any:
    from .conftest import running_server

    with running_server(model=str(tiny_model_dir), served_model_name="mistralai/Voxtral-Mini-3B-2507") as url:
        yield url


def test_lotti_streaming_request_replayed_exactly(lotti_url: str, recording: bytes) -> None:
    status, reads = lotti_exchange(lotti_url, lotti_body(recording, stream=True), stream=True)
    assert status == 200
    text, chunks = parse_like_lotti([dechunk(b"".join(reads))])
    for chunk in chunks:
        assert isinstance(chunk["id"], str) and isinstance(chunk["created"], int) and isinstance(chunk["model"], str)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    status, reads = lotti_exchange(lotti_url, lotti_body(recording, stream=False), stream=False)
    body = json.loads(dechunk_or_plain(b"".join(reads)))
    assert status == 200
    assert text == body["choices"][0]["message"]["content"]
    assert isinstance(body["id"], str) and isinstance(body["created"], int) and body["model"]
    # the whole recording was transcribed: three chunks, each an audio window plus the instruction
    usage = body["usage"]
    assert usage["prompt_tokens"] > 3 * 375 and usage["prompt_tokens"] % 3 == 0


def dechunk_or_plain(raw: bytes) -> bytes:
    return raw if raw.startswith(b"{") else dechunk(raw)


def test_lotti_events_each_arrive_in_one_read(lotti_url: str, recording: bytes) -> None:
    """Each SSE event is one write, so a read never ends inside an event (lotti would drop it)."""
    parsed = urlparse(lotti_url)
    body = lotti_body(recording, stream=True)
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n").encode()  # fmt: skip
    with socket.create_connection((parsed.hostname, parsed.port), timeout=120) as sock:
        sock.sendall(head + body)
        raw = b""
        while b"data: [DONE]" not in raw and (piece := sock.recv(65536)):
            raw += piece
    payload = raw.partition(b"\r\n\r\n")[2]
    # chunked framing: each HTTP chunk must hold whole events
    while payload:
        size_line, _, payload = payload.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        piece, payload = payload[:size], payload[size + 2 :]
        assert piece.startswith(b"data: ") and piece.endswith(b"\n\n"), piece[:80]


def test_lotti_with_language_and_an_openai_client_for_the_same_request(lotti_url: str, recording: bytes) -> None:
    client = OpenAI(base_url=f"{lotti_url}/v1", api_key="x", max_retries=0)
    completion = client.chat.completions.create(
        model="mistralai/Voxtral-Mini-3B-2507",
        messages=[{"role": "user", "content": "Transcribe this audio."}],
        max_tokens=4096,
        temperature=0.0,
        extra_body={"audio": base64.b64encode(recording).decode(), "language": "de"},
    )
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "length"  # random weights: each chunk ran to its cap


def test_lotti_asking_for_a_model_this_server_does_not_serve_gets_404(tmp_path: Path, recording: bytes) -> None:
    from .conftest import running_server

    with running_server(model=str(tmp_path / "missing")) as url:
        response = httpx.post(
            f"{url}/v1/chat/completions", content=lotti_body(recording, stream=True),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
    assert response.status_code == 404  # lotti reads 404 as "model not downloaded"
    assert response.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"audio": "@@@"}, "audio"), ({"language": "klingon"}, "language"), ({"stop": ["x"]}, "stop")],
)
def test_lotti_bad_requests(lotti_url: str, recording: bytes, extra: dict[str, Any], param: str) -> None:
    body = json.loads(lotti_body(recording, stream=True)) | extra
    response = httpx.post(f"{lotti_url}/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


# ---- translations -----------------------------------------------------------------------------------


@pytest.mark.parametrize("response_format", ["json", "text", "srt", "vtt", "verbose_json"])
def test_translations_in_every_format(client: OpenAI, response_format: str) -> None:
    with open(FIXTURES / "speech.m4a", "rb") as f:
        result = client.audio.translations.create(model=MODEL, file=f, response_format=response_format)  # type: ignore[call-overload]
    if response_format == "json":
        assert result.text
    elif response_format == "verbose_json":
        assert (result.task, result.language) == ("translate", "english")
        assert result.segments and result.segments[0].end == result.duration
    elif response_format == "vtt":
        assert result.startswith("WEBVTT")
    elif response_format == "srt":
        assert result.startswith("1\n00:00:00,000 --> ")
    else:
        assert isinstance(result, str) and result.strip()


def test_translation_errors(client: OpenAI, base_url: str) -> None:
    with pytest.raises(openai.NotFoundError), open(FIXTURES / "speech.wav", "rb") as f:
        client.audio.translations.create(model="whisper-2", file=f)
    response = httpx.post(
        f"{base_url}/v1/audio/translations",
        files={"file": ("s.wav", (FIXTURES / "speech.wav").read_bytes())},
        data={"model": MODEL, "language": "fr"},
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "unknown_parameter"
    response = httpx.post(f"{base_url}/v1/audio/translations", files={"file": ("x", b"nope")}, data={"model": MODEL})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_audio"
