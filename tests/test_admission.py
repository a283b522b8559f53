"""Admission: model requests beyond VOXTRAL_MAX_QUEUE get a 429 at once; admitted ones all complete.

Places are held cheaply by requests whose upload stops half-way (a slow client): admission happens when the
headers arrive, so such a request counts without any decoding, and the server has nothing else to do.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI

from voxtral_local.testing.audio_files import encode

from .conftest import APPS, FIXTURES, running_server

MODEL = "voxtral-tiny"
SPEECH = FIXTURES / "speech.mp3"


class HeldRequest:
    """A POST whose body stops half-way until `release()`; its response lands in `response`."""

    def __init__(self, url: str, **body: Any) -> None:
        request = httpx.Request("POST", url, **body)
        content = request.read()
        self._released = threading.Event()
        self.response: httpx.Response | None = None
        self.headers_sent = threading.Event()

        def chunks() -> Iterator[bytes]:
            self.headers_sent.set()  # httpx asks for the body once the headers are written
            yield content[: len(content) // 2]
            self._released.wait(120)
            yield content[len(content) // 2 :]

        def send() -> None:
            headers = {"content-type": request.headers["content-type"]}
            self.response = httpx.post(url, content=chunks(), headers=headers, timeout=120)

        self._thread = threading.Thread(target=send, daemon=True)
        self._thread.start()
        # A probe sent before the server has read these headers could take the place this request is meant to
        # hold: wait until they are on the wire, and give the server a moment to read them.
        assert self.headers_sent.wait(30)
        time.sleep(0.2)

    def release(self) -> httpx.Response:
        self._released.set()
        self._thread.join(120)
        assert self.response is not None
        return self.response


def wait_until(condition: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def audio_message() -> Any:
    return {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": b64(SPEECH), "format": "mp3"}}]}


# Every kind of model work, as a client sends it.
KINDS: dict[str, Callable[[OpenAI], Any]] = {
    "transcription": lambda c: c.audio.transcriptions.create(model=MODEL, file=SPEECH.open("rb")),
    "streamed transcription": lambda c: c.audio.transcriptions.create(model=MODEL, file=SPEECH.open("rb"), stream=True),
    "translation": lambda c: c.audio.translations.create(model=MODEL, file=SPEECH.open("rb")),
    "chat with audio": lambda c: c.chat.completions.create(model=MODEL, messages=[audio_message()], max_tokens=4),
    "text chat": lambda c: c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=4
    ),
    "lotti's audio, streamed": lambda c: c.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Transcribe."}],
        stream=True,
        extra_body={"audio": b64(FIXTURES / "speech.m4a")},
    ),
}


@pytest.fixture(scope="module")
def queue_of_two(tiny_model_dir: Path) -> Iterator[str]:
    with running_server(model=str(tiny_model_dir), max_queue=2) as url:
        yield url


def test_beyond_the_queue_every_kind_of_model_request_is_refused_at_once(queue_of_two: str) -> None:
    url = queue_of_two
    admission = APPS[url].state.admission
    files = {"file": ("speech.mp3", SPEECH.read_bytes(), "audio/mpeg")}
    held = [
        HeldRequest(f"{url}/v1/audio/transcriptions", files=files, data={"model": MODEL}),
        HeldRequest(
            f"{url}/v1/chat/completions",
            json={"model": MODEL, "messages": [audio_message()], "max_tokens": 4},
        ),
    ]
    wait_until(lambda: admission.admitted == 2)
    client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=30)
    for kind, call in KINDS.items():
        started = time.monotonic()
        with pytest.raises(openai.RateLimitError) as info:
            call(client)
        assert time.monotonic() - started < 5, kind  # refused, not queued (a robustness bound)
        error = info.value
        assert (error.status_code, error.code, error.type) == (429, "rate_limit_exceeded", "requests"), kind
        assert 1 <= int(error.response.headers["retry-after"]) <= 30
        assert "VOXTRAL_MAX_QUEUE" in error.message
    # A large upload is refused without being read, and the connection serves the next request.
    with httpx.Client(base_url=url, timeout=30) as raw:
        big = {"file": ("big.wav", os.urandom(20 * 1024 * 1024), "audio/wav")}
        refused = raw.post("/v1/audio/transcriptions", files=big, data={"model": MODEL})
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
        # Routes that run no model are never refused.
        assert raw.get("/health").json()["status"] == "healthy"
        assert raw.get("/v1/models").status_code == 200
    # Nothing admitted is lost: both held requests complete once their bodies arrive.
    transcription, chat = (request.release() for request in held)
    assert transcription.status_code == 200 and isinstance(transcription.json()["text"], str)
    assert chat.status_code == 200 and chat.json()["object"] == "chat.completion"
    # Their places are free again.
    wait_until(lambda: admission.admitted == 0)
    assert client.audio.transcriptions.create(model=MODEL, file=SPEECH.open("rb")).text


@pytest.fixture(scope="module")
def long_mp3(speech: np.ndarray) -> bytes:
    """About 90 s of speech: three chunks."""
    return encode(np.tile(speech, 14), "mp3")


def test_a_stream_holds_its_place_until_its_last_event(tiny_model_dir: Path, long_mp3: bytes) -> None:
    with running_server(model=str(tiny_model_dir), max_queue=1) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)
        stream = client.audio.transcriptions.create(model=MODEL, file=("long.mp3", long_mp3), stream=True)
        events = iter(stream)
        assert next(events).type == "transcript.text.delta"
        with pytest.raises(openai.RateLimitError):
            client.audio.transcriptions.create(model=MODEL, file=SPEECH.open("rb"))
        assert [e.type for e in events][-1] == "transcript.text.done"
        wait_until(lambda: APPS[url].state.admission.admitted == 0)
        assert client.audio.transcriptions.create(model=MODEL, file=SPEECH.open("rb")).text


def test_a_short_stream_starts_while_many_long_requests_run(base_url: str, long_mp3: bytes) -> None:
    """More long streams than asyncio's default executor has threads (min(32, CPUs + 4)), plus long plain
    requests: a short stream and a short request sent then are served before any long one has finished."""
    streams = min(32, (os.cpu_count() or 1) + 4) + 1
    done: dict[str, float] = {}
    first_event: dict[str, float] = {}
    lock = threading.Lock()

    def note(table: dict[str, float], name: str) -> None:
        with lock:
            table.setdefault(name, time.monotonic())

    def stream(name: str, data: bytes) -> None:
        files = {"file": ("a.mp3", data, "audio/mpeg")}
        with httpx.stream(
            "POST", f"{base_url}/v1/audio/transcriptions", files=files, data={"model": MODEL, "stream": "true"},
            timeout=600,
        ) as response:  # fmt: skip
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: "):
                    note(first_event, name)
        note(done, name)

    def plain(name: str, data: bytes) -> None:
        files = {"file": ("a.mp3", data, "audio/mpeg")}
        response = httpx.post(f"{base_url}/v1/audio/transcriptions", files=files, data={"model": MODEL}, timeout=600)
        assert response.status_code == 200
        note(done, name)

    threads = [threading.Thread(target=stream, args=(f"long stream {i}", long_mp3)) for i in range(streams)]
    threads += [threading.Thread(target=plain, args=(f"long request {i}", long_mp3)) for i in range(2)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(first_event) == streams, seconds=300)  # every long stream is running
    health_started = time.monotonic()
    assert httpx.get(f"{base_url}/health", timeout=30).status_code == 200
    health_s = time.monotonic() - health_started
    short = SPEECH.read_bytes()
    sent = time.monotonic()
    shorts = [threading.Thread(target=stream, args=("short stream", short))]
    shorts += [threading.Thread(target=plain, args=("short request", short))]
    for thread in shorts:
        thread.start()
    for thread in shorts + threads:
        thread.join(600)
    assert len(done) == streams + 4  # every request completed (with 200, asserted in its thread)
    first_long_done = min(t for name, t in done.items() if name.startswith("long"))
    waited = first_event["short stream"] - sent
    assert first_event["short stream"] < first_long_done, f"the short stream waited {waited:.1f} s"
    assert done["short request"] < first_long_done
    assert health_s < 5  # a robustness bound: /health shares no pool with request work
