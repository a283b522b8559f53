"""`POST /v1/audio/transcriptions` end to end: real uvicorn, the OpenAI SDK, the tiny real model."""

from __future__ import annotations

import itertools
import re

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI
from openai.types.audio import Transcription, TranscriptionVerbose

from voxtral_local.audio.decode import SAMPLE_RATE
from voxtral_local.testing.audio_files import encode

from .conftest import APPS, FIXTURES, FORMATS, request_for
from .test_chunking import speech_with_gaps

MODEL = "voxtral-tiny"
SRT_CUE = re.compile(r"(\d+)\n(\d\d:\d\d:\d\d,\d{3}) --> (\d\d:\d\d:\d\d,\d{3})\n(.+)")


def error_of(exc: openai.APIStatusError) -> dict[str, object]:
    body = exc.response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


@pytest.mark.parametrize("extension", FORMATS)
def test_every_format_transcribes_through_the_sdk(client: OpenAI, extension: str) -> None:
    with open(FIXTURES / f"speech.{extension}", "rb") as f:
        result = client.audio.transcriptions.create(model=MODEL, file=f)
    assert isinstance(result, Transcription)
    assert result.text.strip()
    assert result.usage is not None and result.usage.type == "duration" and result.usage.seconds == 7


def test_json_body_shape_and_truncation_report(base_url: str) -> None:
    files = {"file": ("speech.mp3", (FIXTURES / "speech.mp3").read_bytes(), "audio/mpeg")}
    response = httpx.post(f"{base_url}/v1/audio/transcriptions", files=files, data={"model": MODEL}, timeout=60)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"text", "usage", "truncated_segments"}
    # random weights never emit end-of-sequence: the cap is hit, and the response says so
    assert body["truncated_segments"] == [0]
    assert response.headers["x-voxtral-truncated-segments"] == "0"


def test_text_format(client: OpenAI) -> None:
    with open(FIXTURES / "speech.wav", "rb") as f:
        text = client.audio.transcriptions.create(model=MODEL, file=f, response_format="text")
    with open(FIXTURES / "speech.wav", "rb") as f:
        as_json = client.audio.transcriptions.create(model=MODEL, file=f)
    assert isinstance(text, str)
    assert text.strip() == as_json.text


def test_verbose_json_has_every_segment_field(client: OpenAI) -> None:
    with open(FIXTURES / "speech.m4a", "rb") as f:
        result = client.audio.transcriptions.create(
            model=MODEL, file=f, response_format="verbose_json", timestamp_granularities=["segment"], language="en"
        )
    assert isinstance(result, TranscriptionVerbose)
    assert result.language == "english"
    assert result.duration == pytest.approx(6.6, abs=0.2)
    assert result.segments is not None and len(result.segments) == 1
    segment = result.segments[0]
    assert segment.model_dump().keys() >= {
        "id", "seek", "start", "end", "text", "tokens", "temperature",
        "avg_logprob", "compression_ratio", "no_speech_prob",
    }  # fmt: skip
    assert (segment.id, segment.seek, segment.start) == (0, 0, 0.0)
    assert segment.end == result.duration
    assert segment.text == result.text
    assert segment.tokens and all(isinstance(t, int) for t in segment.tokens)
    assert segment.temperature == 0.0
    assert segment.avg_logprob < 0 and segment.compression_ratio > 0 and 0 <= segment.no_speech_prob <= 1


def test_srt_and_vtt(client: OpenAI) -> None:
    with open(FIXTURES / "speech.flac", "rb") as f:
        srt = client.audio.transcriptions.create(model=MODEL, file=f, response_format="srt")
    with open(FIXTURES / "speech.flac", "rb") as f:
        vtt = client.audio.transcriptions.create(model=MODEL, file=f, response_format="vtt")
    assert isinstance(srt, str) and isinstance(vtt, str)
    cue = SRT_CUE.match(srt)
    assert cue is not None
    assert cue.group(1) == "1" and cue.group(2) == "00:00:00,000" and cue.group(3).startswith("00:00:06")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:06.")
    assert cue.group(4) in vtt


def test_long_file_is_chunked_into_monotonic_segments(client: OpenAI, speech: np.ndarray) -> None:
    audio, gaps = speech_with_gaps(speech, minutes=4)
    mp3 = encode(audio, "mp3")
    result = client.audio.transcriptions.create(
        model=MODEL, file=("long.mp3", mp3, "audio/mpeg"), response_format="verbose_json"
    )
    assert result.segments is not None
    segments = result.segments
    assert len(segments) >= 8
    assert [s.id for s in segments] == list(range(len(segments)))
    assert segments[0].start == 0.0
    for before, after in itertools.pairwise(segments):
        assert after.start == pytest.approx(before.end, abs=1e-3)
        assert before.end - before.start <= 30.0
        assert any(lo - 0.05 <= after.start <= hi + 0.05 for lo, hi in gaps)
    assert segments[-1].end == pytest.approx(result.duration, abs=1e-3)
    assert result.duration == pytest.approx(audio.shape[0] / SAMPLE_RATE, abs=0.1)
    assert result.text == " ".join(s.text for s in segments if s.text)


def test_alias_model_name_is_accepted(client: OpenAI) -> None:
    with open(FIXTURES / "speech.wav", "rb") as f:
        assert client.audio.transcriptions.create(model="whisper-1", file=f).text


def test_prompt_is_accepted_and_reported_as_unused(client: OpenAI) -> None:
    with open(FIXTURES / "speech.wav", "rb") as f:
        raw = client.audio.transcriptions.with_raw_response.create(model=MODEL, file=f, prompt="Voxtral, lotti")
    assert raw.headers["x-voxtral-ignored-fields"] == "prompt"
    assert raw.parse().text


@pytest.mark.parametrize(
    ("kwargs", "param", "code", "message"),
    [
        ({"language": "xx"}, "language", "invalid_value", "ISO 639-1"),
        ({"language": "english"}, "language", "invalid_value", "ISO 639-1"),
        ({"response_format": "verbose_json", "timestamp_granularities": ["word"]}, "timestamp_granularities",
         "unsupported_value", "no word timestamps"),
        ({"timestamp_granularities": ["segment"]}, "timestamp_granularities", "unsupported_value", "stream=true"),
        ({"response_format": "docx"}, "response_format", "invalid_value", "docx"),
        ({"temperature": 3.5}, "temperature", "invalid_value", "temperature"),
        ({"extra_body": {"beam_size": "5"}}, "beam_size", "unknown_parameter", "Unrecognized"),
    ],
)  # fmt: skip
def test_bad_parameters_get_400_with_the_param_named(
    client: OpenAI, kwargs: dict[str, object], param: str, code: str, message: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info, open(FIXTURES / "speech.wav", "rb") as f:
        client.audio.transcriptions.create(model=MODEL, file=f, **kwargs)  # type: ignore[call-overload]
    error = error_of(info.value)
    assert info.value.status_code == 400
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert message in str(error["message"])


def test_unknown_model_is_404(client: OpenAI) -> None:
    """A name that is neither a served model nor an alias (gpt-4o-transcribe is one: the default model)."""
    with pytest.raises(openai.NotFoundError) as info, open(FIXTURES / "speech.wav", "rb") as f:
        client.audio.transcriptions.create(model="whisper-large-v3", file=f)
    error = error_of(info.value)
    assert (error["param"], error["code"]) == ("model", "model_not_found")
    assert "voxtral-tiny" in str(error["message"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"%PDF-1.4 this is a document, not audio" * 50, "not a decodable audio file"),
        ((FIXTURES / "speech.flac").read_bytes()[:60000], "truncated"),
        ((FIXTURES / "speech.wav").read_bytes()[:100000], "truncated"),
    ],
)
def test_bad_audio_is_400_and_never_reaches_the_model(base_url: str, content: bytes, message: str) -> None:
    response = httpx.post(
        f"{base_url}/v1/audio/transcriptions", files={"file": ("x.bin", content)}, data={"model": MODEL}, timeout=60
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("file", "invalid_audio")
    assert message in error["message"]


@pytest.mark.parametrize(
    ("data", "files", "param", "code"),
    [
        ({"model": MODEL}, None, "file", "missing_required_parameter"),
        ({}, {"file": ("a.wav", b"RIFF")}, "model", "missing_required_parameter"),
        ({"model": MODEL, "file": "not a file"}, None, "file", "invalid_value"),
    ],
)
def test_missing_or_misplaced_fields(
    base_url: str, data: dict[str, str], files: dict[str, tuple[str, bytes]] | None, param: str, code: str
) -> None:
    response = httpx.post(f"{base_url}/v1/audio/transcriptions", data=data, files=files, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)


def test_granularities_without_brackets_and_string_booleans(base_url: str) -> None:
    response = httpx.post(
        f"{base_url}/v1/audio/transcriptions",
        files={"file": ("s.wav", (FIXTURES / "speech.wav").read_bytes(), "audio/wav")},
        data={"model": MODEL, "response_format": "verbose_json", "timestamp_granularities": "segment",
              "stream": "false", "temperature": "0"},
        timeout=60,
    )  # fmt: skip
    assert response.status_code == 200
    assert response.json()["segments"][0]["start"] == 0.0


def test_json_body_instead_of_multipart_is_415(base_url: str) -> None:
    response = httpx.post(f"{base_url}/v1/audio/transcriptions", json={"model": MODEL}, timeout=60)
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


def test_server_stays_healthy_after_errors(base_url: str, client: OpenAI) -> None:
    for _ in range(3):
        httpx.post(f"{base_url}/v1/audio/transcriptions", files={"file": ("x", b"junk")}, data={"model": MODEL})
    assert httpx.get(f"{base_url}/health").json()["status"] == "healthy"
    with open(FIXTURES / "speech.ogg", "rb") as f:
        assert client.audio.transcriptions.create(model=MODEL, file=f).text


def test_unknown_route_and_method_use_the_error_envelope(base_url: str) -> None:
    missing = httpx.get(f"{base_url}/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = httpx.get(f"{base_url}/v1/audio/transcriptions")
    assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "invalid_request_error"
    assert wrong.headers["allow"] == "POST"


def test_a_multi_megabyte_upload_gives_the_transcript_of_its_bytes(
    base_url: str, client: OpenAI, speech: np.ndarray
) -> None:
    audio, _ = speech_with_gaps(speech, minutes=2)
    wav = encode(audio, "wav")
    assert len(wav) > 3 * 2**20  # past the 1 MiB that Starlette would spool to disk
    result = client.audio.transcriptions.create(model=MODEL, file=("long.wav", wav, "audio/wav"))
    service = APPS[base_url].state.transcription
    assert result.text == service.transcribe(request_for(service, wav, language=None)).text


@pytest.mark.parametrize(
    ("files", "fields", "message"),
    [
        (3, 1, "Too many files"),
        (1, 70, "Too many fields"),
    ],
)
def test_a_form_over_the_part_limits_is_400(base_url: str, files: int, fields: int, message: str) -> None:
    wav = (FIXTURES / "speech.wav").read_bytes()
    response = httpx.post(
        f"{base_url}/v1/audio/transcriptions",
        files=[("file", (f"{i}.wav", wav, "audio/wav")) for i in range(files)],
        data={"model": MODEL, **{f"extra{i}": "x" for i in range(fields - 1)}},
        timeout=60,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and message in error["message"]
    assert httpx.get(f"{base_url}/health").json()["status"] == "healthy"
