"""A request holds its model from its preparation to the end of its work: with VOXTRAL_MODEL_TTL=0 each request
loads the model once and it is unloaded after; a client that leaves mid-stream, a request that never runs, or
one dropped without a word let the model go (an unload then returns at once)."""

from __future__ import annotations

import base64
import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from openai import OpenAI

from voxtral_local.api.app import model_registry
from voxtral_local.backends.transformers import TransformersBackend
from voxtral_local.config import Settings
from voxtral_local.errors import GenerationCancelledError
from voxtral_local.models.registry import ModelRegistry
from voxtral_local.protocol import ChatCompletionCreateParams
from voxtral_local.services.chat import ChatService
from voxtral_local.services.transcription import TranscriptionService
from voxtral_local.testing.audio_files import encode

from .conftest import APPS, FIXTURES, running_server
from .spies import counted_builds, spy_forward
from .test_chunking import speech_with_gaps

MODEL = "voxtral-tiny"
WAV = (FIXTURES / "speech.wav").read_bytes()


def registry(url: str) -> ModelRegistry:
    models: ModelRegistry = APPS[url].state.models
    return models


def loaded(url: str) -> list[str]:
    return list(httpx.get(f"{url}/api/ps", timeout=30).json()["models"])


def wait_until(check: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def ttl0(tiny_model_dir: Path) -> Iterator[str]:
    with running_server(model=str(tiny_model_dir), model_ttl=0) as url:
        yield url


def unloaded(url: str) -> bool:
    return loaded(url) == [] and registry(url).slot(MODEL).users == 0


def test_ttl_zero_chat_loads_once_and_unloads_after(ttl0: str) -> None:
    client = OpenAI(base_url=f"{ttl0}/v1", api_key="x", max_retries=0, timeout=120)
    with counted_builds(registry(ttl0)) as calls:
        reply = client.chat.completions.create(model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "Hi"}])
        assert reply.choices[0].message.content is not None
        wait_until(lambda: unloaded(ttl0))
    assert calls == [MODEL]


def test_ttl_zero_streamed_chat_loads_once_and_unloads_after(ttl0: str) -> None:
    client = OpenAI(base_url=f"{ttl0}/v1", api_key="x", max_retries=0, timeout=120)
    part: Any = {"type": "input_audio", "input_audio": {"data": base64.b64encode(WAV).decode(), "format": "wav"}}
    with counted_builds(registry(ttl0)) as calls:
        chunks = list(
            client.chat.completions.create(
                model=MODEL, max_tokens=3, stream=True, messages=[{"role": "user", "content": [part]}]
            )
        )
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        wait_until(lambda: unloaded(ttl0))
    assert calls == [MODEL]


def test_ttl_zero_streamed_transcription_loads_once_and_unloads_after(ttl0: str) -> None:
    client = OpenAI(base_url=f"{ttl0}/v1", api_key="x", max_retries=0, timeout=120)
    with counted_builds(registry(ttl0)) as calls:
        events = list(client.audio.transcriptions.create(model=MODEL, file=("speech.wav", WAV), stream=True))
        assert events[-1].type == "transcript.text.done"
        wait_until(lambda: unloaded(ttl0))
    assert calls == [MODEL]


@pytest.fixture(scope="module")
def long_mp3(speech: np.ndarray) -> bytes:
    audio, _ = speech_with_gaps(speech, minutes=3)
    return encode(audio, "mp3")


@contextmanager
def slowed(backend: TransformersBackend) -> Iterator[None]:
    """Each forward pass of the model takes 20 ms longer, so that a stream is still generating when its client
    leaves."""
    with spy_forward(backend.model, lambda args, kwargs: time.sleep(0.02)):
        yield


def chat_stream(url: str) -> httpx.Request:
    body = {"model": MODEL, "stream": True, "max_tokens": 2000, "messages": [{"role": "user", "content": "Hi"}]}
    return httpx.Request("POST", f"{url}/v1/chat/completions", json=body)


def transcription_stream(url: str, audio: bytes) -> httpx.Request:
    files = {"file": ("long.mp3", audio, "audio/mpeg")}
    return httpx.Request("POST", f"{url}/v1/audio/transcriptions", files=files, data={"model": MODEL, "stream": "true"})


@pytest.mark.parametrize("kind", ["transcription", "chat"])
def test_a_client_leaving_mid_stream_lets_the_model_go(tiny_model_dir: Path, long_mp3: bytes, kind: str) -> None:
    with running_server(model=str(tiny_model_dir), model_ttl=-1, batch_size=2) as url:
        models = registry(url)
        with models.use(MODEL) as backend:
            assert isinstance(backend, TransformersBackend)
        with slowed(backend), httpx.Client(timeout=60) as client:
            request = transcription_stream(url, long_mp3) if kind == "transcription" else chat_stream(url)
            response = client.send(request, stream=True)
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))  # the stream has begun
            wait_until(lambda: backend.busy)  # and is generating
            assert models.slot(MODEL).users == 1
            response.close()  # the client goes away mid-stream
            started = time.monotonic()
            unload = httpx.delete(f"{url}/api/ps/{MODEL}", timeout=60)
            assert time.monotonic() - started < 10, "the unload waited for a hold nobody let go"
        assert unload.status_code == 204 and loaded(url) == []
        assert models.slot(MODEL).users == 0


@pytest.fixture(scope="module")
def chat_service(tiny_model_dir: Path) -> Iterator[ChatService]:
    settings = Settings(_env_file=None, model=str(tiny_model_dir), model_ttl=-1)
    models = model_registry(settings)
    yield ChatService(settings, models, TranscriptionService(settings, models))
    models.close()


def hello() -> ChatCompletionCreateParams:
    return ChatCompletionCreateParams.model_validate(
        {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
    )


def test_a_prepared_chat_that_never_runs_lets_the_model_go_when_closed(chat_service: ChatService) -> None:
    models = chat_service.models
    prepared = chat_service.prepare(hello())
    assert models.slot(MODEL).users == 1 and models.slot(MODEL).backend is not None
    prepared.close()
    prepared.close()  # twice is harmless
    assert models.slot(MODEL).users == 0
    with pytest.raises(GenerationCancelledError):
        chat_service.run(prepared)  # the request ended before its work began
    assert models.slot(MODEL).users == 0
    assert models.unload(MODEL)


def test_a_prepared_chat_dropped_without_a_word_lets_the_model_go(chat_service: ChatService) -> None:
    models = chat_service.models
    chat_service.prepare(hello())  # dropped at once: neither run nor closed
    gc.collect()
    assert models.slot(MODEL).users == 0


def test_a_run_chat_lets_the_model_go_and_closing_after_is_harmless(chat_service: ChatService) -> None:
    models = chat_service.models
    prepared = chat_service.prepare(hello())
    assert chat_service.run(prepared).completion_tokens <= 2
    assert models.slot(MODEL).users == 0
    prepared.close()
    assert models.slot(MODEL).users == 0
