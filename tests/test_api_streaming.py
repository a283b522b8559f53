"""Streamed transcriptions, errors after the stream started, and cancellation on disconnect."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI
from openai.types.audio import TranscriptionTextDeltaEvent, TranscriptionTextDoneEvent

from voxtral_local.backends.transformers import TransformersBackend
from voxtral_local.testing.audio_files import encode

from .conftest import FIXTURES, backend_of, running_server
from .spies import spy_forward
from .test_chunking import speech_with_gaps

MODEL = "voxtral-tiny"


def stream_events(client: OpenAI, path: Path | tuple[str, bytes, str], **kwargs: Any) -> list[Any]:
    file = path if isinstance(path, tuple) else open(path, "rb")  # noqa: SIM115
    events = list(client.audio.transcriptions.create(model=MODEL, file=file, stream=True, **kwargs))
    return events


def test_sdk_iterates_typed_delta_and_done_events(client: OpenAI) -> None:
    events = stream_events(client, FIXTURES / "speech.mp3")
    deltas, done = events[:-1], events[-1]
    assert len(deltas) > 5  # token by token, not one event at the end
    assert all(e.type == "transcript.text.delta" and e.delta for e in deltas)
    assert done.type == "transcript.text.done"
    assert done.text == "".join(e.delta for e in deltas)
    with open(FIXTURES / "speech.mp3", "rb") as f:
        assert done.text == client.audio.transcriptions.create(model=MODEL, file=f).text
    assert done.usage.type == "tokens"
    assert done.usage.input_token_details.audio_tokens == 375
    assert done.usage.input_tokens > 375 and done.usage.output_tokens > 0
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens


def test_sse_framing_on_the_raw_bytes(base_url: str) -> None:
    files = {"file": ("speech.wav", (FIXTURES / "speech.wav").read_bytes(), "audio/wav")}
    with httpx.stream(
        "POST", f"{base_url}/v1/audio/transcriptions", files=files, data={"model": MODEL, "stream": "true"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(response.iter_raw())
    assert raw.endswith(b"\n\n")
    blocks = raw.decode().split("\n\n")[:-1]
    events = [block for block in blocks if not block.startswith(":")]
    for event in events:
        assert event.startswith("data: ") and "\n" not in event
        json.loads(event[len("data: ") :])
    assert json.loads(events[-1][6:])["type"] == "transcript.text.done"
    comments = [block for block in blocks if block.startswith(":")]
    assert comments and all(c.startswith(": progress ") and "\n" not in c for c in comments)


def progress_of(raw: str) -> list[tuple[float, float | None]]:
    """The `: progress <done> <total>` comment lines of a raw SSE stream, in order."""
    lines = [line.split() for line in raw.splitlines() if line.startswith(": progress ")]
    return [(float(done), None if total == "?" else float(total)) for _, _, done, total in lines]


def test_progress_comments_come_in_order_and_the_sdk_ignores_them(
    client: OpenAI, base_url: str, long_mp3: bytes
) -> None:
    """A 3-minute upload (seven chunks): comments report the seconds done as chunks finish, never more than
    the total, ending at the whole length; the SDK's stream of the same request is the same delta and done
    events as without them."""
    files = {"file": ("long.mp3", long_mp3, "audio/mpeg")}
    with httpx.stream(
        "POST", f"{base_url}/v1/audio/transcriptions", files=files, data={"model": MODEL, "stream": "true"}, timeout=300
    ) as response:
        assert response.status_code == 200
        raw = b"".join(response.iter_raw()).decode()
    progress = progress_of(raw)
    assert len(progress) >= 7
    dones = [done for done, _ in progress]
    assert dones == sorted(dones) and dones[0] > 0
    assert all(total is None or done <= total for done, total in progress)
    totals = [total for _, total in progress if total is not None]
    assert totals and all(total == totals[0] for total in totals)  # known once the whole upload is decoded
    assert dones[-1] == totals[0] == pytest.approx(180, abs=2)
    assert raw.index(": progress") < raw.index('"transcript.text.done"')
    events = list(client.audio.transcriptions.create(model=MODEL, file=("long.mp3", long_mp3), stream=True))
    deltas, done = events[:-1], events[-1]
    assert all(isinstance(e, TranscriptionTextDeltaEvent) for e in deltas)
    assert isinstance(done, TranscriptionTextDoneEvent)
    assert done.text == "".join(e.delta for e in deltas if isinstance(e, TranscriptionTextDeltaEvent))
    raw_events = [json.loads(b[6:]) for b in raw.split("\n\n") if b.startswith("data: ")]
    assert done.text == raw_events[-1]["text"]  # the same transcript as the stream read raw


def test_segments_in_the_done_event_with_segment_granularity(client: OpenAI) -> None:
    """With timestamp_granularities=["segment"] the done event carries the segments (times and text, as
    verbose_json gives them), so a client can write subtitles from the one streamed transcription; without
    it the done event has none."""
    events = stream_events(client, FIXTURES / "speech.wav", timestamp_granularities=["segment"])
    done = events[-1]
    assert isinstance(done, TranscriptionTextDoneEvent)
    with open(FIXTURES / "speech.wav", "rb") as f:
        verbose = client.audio.transcriptions.create(
            model=MODEL, file=f, response_format="verbose_json", timestamp_granularities=["segment"]
        )
    assert verbose.segments
    expected = [{"id": s.id, "start": s.start, "end": s.end, "text": s.text} for s in verbose.segments]
    assert getattr(done, "segments", None) == expected
    assert " ".join(str(s["text"]) for s in expected) == done.text
    plain = stream_events(client, FIXTURES / "speech.wav")[-1]
    assert getattr(plain, "segments", None) is None


@contextmanager
def counted_forward(engine: TransformersBackend, fail_after: int | None = None) -> Iterator[list[int]]:
    """Count the forward passes the engine's model takes (optionally fail on one); restore afterwards."""
    engine.load()
    calls = [0]

    def count(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls[0] += 1
        if fail_after is not None and calls[0] > fail_after:
            raise RuntimeError("injected fault: the accelerator fell over")

    with spy_forward(engine.model, count):
        yield calls


@pytest.fixture(scope="module")
def long_mp3(speech: np.ndarray) -> bytes:
    audio, _ = speech_with_gaps(speech, minutes=3)
    return encode(audio, "mp3")


@pytest.fixture(scope="module")
def small_batch_url(tiny_model_dir: Path) -> Iterator[str]:
    """Two chunks per generate() call, so a long file takes several batches."""
    with running_server(model=str(tiny_model_dir), batch_size=2) as url:
        yield url


def test_first_delta_arrives_while_later_chunks_are_still_generating(small_batch_url: str, long_mp3: bytes) -> None:
    engine = backend_of(small_batch_url)
    client = OpenAI(base_url=f"{small_batch_url}/v1", api_key="x", max_retries=0)
    with counted_forward(engine) as calls:
        stream = client.audio.transcriptions.create(model=MODEL, file=("long.mp3", long_mp3, "audio/mpeg"), stream=True)
        iterator = iter(stream)
        first = next(iterator)
        steps_at_first_delta = calls[0]
        busy_at_first_delta = engine.busy
        rest = list(iterator)
    assert isinstance(first, TranscriptionTextDeltaEvent)
    assert busy_at_first_delta  # generation was still running
    assert steps_at_first_delta < calls[0] / 4  # 7 chunks in 4 batches: the first delta came in the first
    done = rest[-1]
    assert isinstance(done, TranscriptionTextDoneEvent)
    deltas = [e for e in rest[:-1] if isinstance(e, TranscriptionTextDeltaEvent)]
    assert len(deltas) == len(rest) - 1
    assert done.text == first.delta + "".join(e.delta for e in deltas)
    non_streamed = client.audio.transcriptions.create(model=MODEL, file=("long.mp3", long_mp3, "audio/mpeg"))
    assert done.text == non_streamed.text


def test_an_error_after_the_stream_started_is_an_error_event(small_batch_url: str, long_mp3: bytes) -> None:
    engine = backend_of(small_batch_url)
    client = OpenAI(base_url=f"{small_batch_url}/v1", api_key="x", max_retries=0)
    received: list[str] = []
    with counted_forward(engine, fail_after=40), pytest.raises(openai.APIError) as info:
        for event in client.audio.transcriptions.create(
            model=MODEL, file=("long.mp3", long_mp3, "audio/mpeg"), stream=True
        ):
            assert isinstance(event, TranscriptionTextDeltaEvent)
            received.append(event.delta)
    assert received  # the stream had started
    assert "error while generating" in str(info.value)
    assert "injected fault" not in "".join(received)
    # the server stays healthy and serves the next request
    with open(FIXTURES / "speech.wav", "rb") as f:
        assert client.audio.transcriptions.create(model=MODEL, file=f).text


def wait_until_idle(engine: TransformersBackend, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while engine.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not engine.busy


def test_disconnect_mid_stream_stops_generation(small_batch_url: str, long_mp3: bytes) -> None:
    engine = backend_of(small_batch_url)
    client = OpenAI(base_url=f"{small_batch_url}/v1", api_key="x", max_retries=0)
    with counted_forward(engine) as calls:
        full = sum(
            1
            for _ in client.audio.transcriptions.create(
                model=MODEL, file=("a.mp3", long_mp3, "audio/mpeg"), stream=True
            )
        )
        total_steps = calls[0]
        calls[0] = 0
        stream = client.audio.transcriptions.create(model=MODEL, file=("a.mp3", long_mp3, "audio/mpeg"), stream=True)
        next(iter(stream))
        stream.close()  # the client goes away
        wait_until_idle(engine)
        steps = calls[0]
    assert full > 10
    assert steps < total_steps / 4  # stopped within the first of four batches, a few steps after the disconnect
    with open(FIXTURES / "speech.wav", "rb") as f:
        assert client.audio.transcriptions.create(model=MODEL, file=f).text  # served at once


def test_disconnect_mid_request_stops_generation(small_batch_url: str, long_mp3: bytes) -> None:
    engine = backend_of(small_batch_url)
    request = httpx.Request(
        "POST",
        f"{small_batch_url}/v1/audio/transcriptions",
        files={"file": ("a.mp3", long_mp3, "audio/mpeg")},
        data={"model": MODEL},
    )
    body = request.read()
    head = f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
    head += f"Content-Type: {request.headers['content-type']}\r\n\r\n"
    parsed = urlparse(small_batch_url)
    with counted_forward(engine) as calls:
        sock = socket.create_connection((parsed.hostname, parsed.port))
        sock.sendall(head.encode() + body)
        deadline = time.monotonic() + 30
        while calls[0] < 5 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert engine.busy
        sock.close()  # the client goes away while its (non-streamed) request is generating
        at_close = calls[0]
        wait_until_idle(engine)
        after = calls[0] - at_close
    assert after < 60  # a 3-minute file needs ~1,500 steps; it stopped within the current batch's few steps


def test_stream_with_a_subtitle_format_is_400(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info, open(FIXTURES / "speech.wav", "rb") as f:
        client.audio.transcriptions.create(model=MODEL, file=f, stream=True, response_format="srt")
    assert info.value.response.json()["error"]["param"] == "stream"


def test_stream_errors_before_the_first_event_are_plain_http_errors(base_url: str) -> None:
    response = httpx.post(
        f"{base_url}/v1/audio/transcriptions",
        files={"file": ("x.wav", b"not audio at all" * 10)},
        data={"model": MODEL, "stream": "true"},
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "invalid_audio"


def test_threads_are_not_leaked_by_cancelled_streams(small_batch_url: str, long_mp3: bytes) -> None:
    before = threading.active_count()
    client = OpenAI(base_url=f"{small_batch_url}/v1", api_key="x", max_retries=0)
    for _ in range(3):
        stream = client.audio.transcriptions.create(model=MODEL, file=("a.mp3", long_mp3, "audio/mpeg"), stream=True)
        next(iter(stream))
        stream.close()
    wait_until_idle(backend_of(small_batch_url))
    assert threading.active_count() <= before + 3  # the worker pool may grow, but nothing keeps generating
