"""One INFO line per model request (transcription, translation, chat): model, audio seconds, chunks, tokens,
wall time and RTFx."""

from __future__ import annotations

import base64
import logging
import re
from typing import Any

import pytest
from openai import OpenAI
from openai.types.audio import TranscriptionTextDoneEvent

from .conftest import FIXTURES

LINE = re.compile(
    r"^(?P<kind>\w+) model=(?P<model>\S+) audio=(?P<audio>[\d.]+s|-) chunks=(?P<chunks>\d+) "
    r"prompt_tokens=(?P<prompt>\d+) completion_tokens=(?P<completion>\d+) wall=(?P<wall>[\d.]+)s "
    r"rtfx=(?P<rtfx>[\d.]+|-)$"
)


def request_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, str]]:
    lines = [r.getMessage() for r in caplog.records if r.name == "voxtral_local.requests" and r.levelno == logging.INFO]
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    return [m.groupdict() for m in matches if m]


def test_each_model_request_logs_one_line(client: OpenAI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="voxtral_local.requests")
    wav = (FIXTURES / "speech.wav").read_bytes()
    client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", wav))  # an alias: the id is logged
    client.audio.translations.create(model="voxtral-tiny", file=("speech.wav", wav))
    part: Any = {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}
    client.chat.completions.create(model="voxtral-tiny", max_tokens=4, messages=[{"role": "user", "content": [part]}])
    client.chat.completions.create(model="voxtral-tiny", max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
    lines = request_lines(caplog)
    assert [line["kind"] for line in lines] == ["transcription", "translation", "chat", "chat"]
    assert {line["model"] for line in lines} == {"voxtral-tiny"}
    transcription, translation, audio_chat, text_chat = lines
    for line in (transcription, translation, audio_chat):
        assert line["audio"] != "-" and float(line["audio"][:-1]) > 1
        assert float(line["rtfx"]) == pytest.approx(float(line["audio"][:-1]) / float(line["wall"]), rel=0.2, abs=0.2)
        assert int(line["prompt"]) >= 375  # one 30 s window of audio tokens
    assert transcription["chunks"] == "1" and int(transcription["completion"]) > 0
    assert int(audio_chat["completion"]) <= 4
    assert text_chat["audio"] == "-" and text_chat["rtfx"] == "-" and 0 < int(text_chat["prompt"]) < 375


def test_a_streamed_transcription_logs_once_it_ends(client: OpenAI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="voxtral_local.requests")
    with open(FIXTURES / "speech.mp3", "rb") as f:
        events = list(client.audio.transcriptions.create(model="voxtral-tiny", file=f, stream=True))
    assert events[-1].type == "transcript.text.done"
    (line,) = request_lines(caplog)
    done = events[-1]
    assert isinstance(done, TranscriptionTextDoneEvent) and done.usage is not None
    assert line["kind"] == "transcription" and int(line["completion"]) == done.usage.output_tokens
