"""One INFO line per model request (transcription, translation, chat): model, audio seconds, chunks, tokens,
wall time (from the request's start, decoding included) and RTFx; a failed request logs one line with its
error code."""

from __future__ import annotations

import base64
import logging
import re
from typing import Any

import openai
import pytest
from openai import OpenAI
from openai.types.audio import TranscriptionTextDoneEvent

from .conftest import FIXTURES

LINE = re.compile(
    r"^(?P<kind>\w+) model=(?P<model>\S+) audio=(?P<audio>[\d.]+s|-) chunks=(?P<chunks>\d+) "
    r"prompt_tokens=(?P<prompt>\d+) completion_tokens=(?P<completion>\d+) wall=(?P<wall>[\d.]+)s "
    r"rtfx=(?P<rtfx>[\d.]+|-)$"
)


FAILED = re.compile(r"^(?P<kind>\w+) model=(?P<model>\S+) error=(?P<code>\w+) wall=(?P<wall>[\d.]+)s$")


def request_lines(caplog: pytest.LogCaptureFixture, line: re.Pattern[str] = LINE) -> list[dict[str, str]]:
    lines = [r.getMessage() for r in caplog.records if r.name == "voxtral_local.requests" and r.levelno == logging.INFO]
    matches = [line.match(text) for text in lines]
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


def test_a_failed_request_logs_one_line_with_its_code(client: OpenAI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="voxtral_local.requests")
    junk = b"not audio at all" * 10
    with pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(model="whisper-1", file=("x.wav", junk))
    with pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(model="voxtral-tiny", file=("x.wav", junk), stream=True)
    with pytest.raises(openai.BadRequestError):
        client.audio.translations.create(model="voxtral-tiny", file=("x.wav", junk))
    part: Any = {"type": "input_audio", "input_audio": {"data": base64.b64encode(junk).decode(), "format": "wav"}}
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="voxtral-tiny", messages=[{"role": "user", "content": [part]}])
    lines = request_lines(caplog, FAILED)
    assert [line["kind"] for line in lines] == ["transcription", "transcription", "translation", "chat"]
    assert all(line["model"] == "voxtral-tiny" and line["code"] == "invalid_audio" for line in lines)
