"""A served model that is not downloaded is a 404 `model_not_downloaded` before any audio is decoded, on every
route that takes audio (transcriptions, streamed or not, translations, chat `input_audio`, lotti's `audio`),
and the failed request is logged in one line with that code."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI

from voxtral_local.services import chat, transcription
from voxtral_local.testing.audio_files import encode, silence

from .conftest import FIXTURES, running_server

MISSING = "voxtral-local-tests/never-downloaded"  # a hub id no cache holds
WAV = (FIXTURES / "speech.wav").read_bytes()


@pytest.fixture(scope="module")
def twenty_minutes() -> bytes:
    """Twenty minutes of silence as MP3: seconds of decoding, had anything decoded it."""
    return encode(silence(20 * 60), "mp3")


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[str]:
    with running_server(model=str(tiny_model_dir), models=MISSING) as url:
        yield url


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the services' decoding functions called from now on (they still decode)."""
    calls: list[str] = []

    def counted(name: str, decode: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return decode(*args, **kwargs)

        return wrapper

    for module, name in [(transcription, "decode_audio"), (transcription, "decode_head"), (chat, "decode_audio")]:
        monkeypatch.setattr(module, name, counted(name, getattr(module, name)))
    return calls


def not_downloaded(error: openai.APIStatusError | httpx.Response) -> bool:
    response = error if isinstance(error, httpx.Response) else error.response
    body = response.json()["error"]
    return response.status_code == 404 and body["code"] == "model_not_downloaded" and MISSING in body["message"]


def test_audio_routes_answer_model_not_downloaded_before_decoding(
    server: str, twenty_minutes: bytes, decodes: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="voxtral_local.requests")
    client = OpenAI(base_url=f"{server}/v1", api_key="x", max_retries=0, timeout=120)
    upload = ("long.mp3", twenty_minutes, "audio/mpeg")
    with pytest.raises(openai.NotFoundError) as info:
        client.audio.translations.create(model=MISSING, file=upload)
    assert not_downloaded(info.value)
    with pytest.raises(openai.NotFoundError) as info:
        client.audio.transcriptions.create(model=MISSING, file=upload)
    assert not_downloaded(info.value)
    with pytest.raises(openai.NotFoundError) as info:
        client.audio.transcriptions.create(model=MISSING, file=upload, stream=True)
    assert not_downloaded(info.value)
    audio = base64.b64encode(twenty_minutes).decode()
    part: Any = {"type": "input_audio", "input_audio": {"data": audio, "format": "mp3"}}
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model=MISSING, messages=[{"role": "user", "content": [part]}])
    assert not_downloaded(info.value)
    lotti = {"model": MISSING, "messages": [{"role": "user", "content": "Transcribe."}], "audio": audio}
    assert not_downloaded(httpx.post(f"{server}/v1/chat/completions", json=lotti, timeout=120))
    assert decodes == [], "audio was decoded for a model that could not run"

    lines = [r.getMessage() for r in caplog.records if r.name == "voxtral_local.requests"]
    kinds = ["translation", "transcription", "transcription", "chat", "chat"]
    assert [line.split(" ", 1)[0] for line in lines] == kinds, lines
    assert all(f"model={MISSING} error=model_not_downloaded wall=" in line for line in lines)

    # the same spies see the decoding of a request to the model that is on disk
    assert client.audio.translations.create(model="voxtral-tiny", file=("speech.wav", WAV)).text is not None
    assert decodes == ["decode_audio"]


def test_a_local_model_whose_directory_is_gone_is_refused_before_decoding(
    tmp_path: Path, decodes: list[str], speech: np.ndarray
) -> None:
    with running_server(model=str(tmp_path / "gone")) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)
        with pytest.raises(openai.InternalServerError) as info:
            client.audio.translations.create(model="gone", file=("speech.mp3", encode(speech, "mp3")))
    error = info.value.response.json()["error"]
    assert info.value.response.status_code == 503 and error["code"] == "model_unavailable"
    assert decodes == []
