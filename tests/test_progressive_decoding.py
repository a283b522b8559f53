"""A streamed long upload starts from its decoded head; the rest is decoded while the first chunk decodes."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI
from openai.types.audio import TranscriptionTextDeltaEvent

from voxtral_local.audio.chunking import split_audio
from voxtral_local.audio.decode import SAMPLE_RATE, decode_audio, decode_head
from voxtral_local.errors import AudioDecodeError, AudioTooLongError
from voxtral_local.services.transcription import PartialUpload, TranscriptionService
from voxtral_local.testing.audio_files import encode

from .conftest import APPS, FIXTURES, backend_of, loaded_backend, request_for
from .spies import spy_forward
from .test_api_streaming import wait_until_idle
from .test_audio import long_speech
from .test_chunking import speech_with_gaps

MODEL = "voxtral-tiny"


@pytest.mark.parametrize(("extension", "exact"), [("wav", True), ("flac", True), ("mp3", False), ("m4a", False)])
def test_the_head_is_the_start_of_the_whole_decode(speech: np.ndarray, extension: str, exact: bool) -> None:
    data = encode(long_speech(speech, 100), extension)
    head, complete = decode_head(data, seconds=60, max_seconds=600)
    whole = decode_audio(data, max_seconds=600)
    assert not complete and whole.shape[0] > 90 * SAMPLE_RATE
    assert abs(head.shape[0] / SAMPLE_RATE - 60) < 0.1
    inner = head[: 55 * SAMPLE_RATE]  # a resampler's last few milliseconds depend on what follows
    if exact:
        assert np.array_equal(inner, whole[: inner.shape[0]])
    else:
        assert np.abs(inner - whole[: inner.shape[0]]).max() < 1e-4


@pytest.mark.parametrize("extension", ["wav", "mp3", "ogg"])
def test_a_short_file_is_decoded_whole(extension: str) -> None:
    data = (FIXTURES / f"speech.{extension}").read_bytes()
    head, complete = decode_head(data, seconds=60, max_seconds=600)
    assert complete and np.array_equal(head, decode_audio(data, max_seconds=600))


@pytest.mark.parametrize("extension", ["ogg", "opus"])
def test_a_file_whose_header_states_no_length_is_decoded_whole(speech: np.ndarray, extension: str) -> None:
    """It could be a duration bomb: the limit must hold before any of it reaches the model."""
    data = encode(long_speech(speech, 100), extension)
    head, complete = decode_head(data, seconds=31, max_seconds=600)
    assert complete and np.array_equal(head, decode_audio(data, max_seconds=600))
    with pytest.raises(AudioTooLongError):
        decode_head(data, seconds=31, max_seconds=80)


@pytest.mark.parametrize("extension", ["flac", "m4a"])
def test_a_header_over_the_limit_is_refused_from_the_head(speech: np.ndarray, extension: str) -> None:
    data = encode(long_speech(speech, 100), extension)
    with pytest.raises(AudioTooLongError):
        decode_head(data, seconds=60, max_seconds=80)


def test_a_truncated_file_shows_in_the_whole_decode_only(speech: np.ndarray) -> None:
    data = encode(long_speech(speech, 150), "flac")
    cut = data[: len(data) * 2 // 3]
    head, complete = decode_head(cut, seconds=60, max_seconds=600)
    assert not complete and head.shape[0] == 60 * SAMPLE_RATE
    with pytest.raises(AudioDecodeError, match="truncated"):
        decode_audio(cut, max_seconds=600)


def test_a_streamed_long_upload_gives_the_same_transcript_as_a_plain_one(
    service: TranscriptionService, speech: np.ndarray
) -> None:
    audio, _ = speech_with_gaps(speech, minutes=3)
    data = encode(audio, "wav")
    start = service.decode_start(data)
    assert isinstance(start, PartialUpload)
    plain = service.transcribe(request_for(service, data, language="en"))
    deltas: list[str] = []
    streamed = service.transcribe(request_for(service, start, language="en", on_delta=deltas.append))
    assert "".join(deltas) == streamed.text == plain.text
    assert streamed.duration == plain.duration
    spans = [[(s.start, s.end, s.tokens) for s in r.segments] for r in (streamed, plain)]
    assert spans[0] == spans[1]
    assert (streamed.prompt_tokens, streamed.completion_tokens) == (plain.prompt_tokens, plain.completion_tokens)


def hold_the_whole_decode(
    service: TranscriptionService, monkeypatch: pytest.MonkeyPatch, until: threading.Event
) -> None:
    """Make the service's decoding of the whole upload wait for `until` (failing after a minute)."""
    whole_decode = service.decode

    def held(data: bytes, cancel: threading.Event | None = None) -> np.ndarray:
        assert until.wait(timeout=60), "the model waited for the whole upload to be decoded"
        return whole_decode(data, cancel)

    monkeypatch.setattr(service, "decode", held)


def test_the_first_words_do_not_wait_for_the_rest_of_the_upload(
    service: TranscriptionService, speech: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    audio, _ = speech_with_gaps(speech, minutes=3)
    start = service.decode_start(encode(audio, "mp3"))
    assert isinstance(start, PartialUpload)
    first_words = threading.Event()
    hold_the_whole_decode(service, monkeypatch, until=first_words)
    deltas: list[str] = []

    def on_delta(delta: str) -> None:
        deltas.append(delta)
        first_words.set()

    result = service.transcribe(request_for(service, start, language=None, on_delta=on_delta))
    assert deltas and "".join(deltas) == result.text
    assert result.segments[-1].end == pytest.approx(result.duration, abs=1e-3)
    assert len(result.segments) == len(split_audio(decode_audio(start.data, max_seconds=600), max_chunk_s=30))


def test_rows_added_while_decoding_give_the_tokens_of_one_batch(
    service: TranscriptionService, speech: np.ndarray
) -> None:
    engine = loaded_backend(service.models)
    audio, _ = speech_with_gaps(speech, minutes=3)
    chunks = [c.samples for c in split_audio(audio, max_chunk_s=30)]
    at_once = [o.token_ids for o in engine.transcribe(chunks, language="en")]
    announced: list[list[int]] = []
    in_parts = engine.transcribe(
        chunks[:1],
        language="en",
        more=iter([chunks[1:3], chunks[3:]]),
        on_rows=lambda caps: announced.append(list(caps)),
    )
    assert [o.token_ids for o in in_parts] == at_once
    assert [len(caps) for caps in announced] == [1, 2, len(chunks) - 3]


def test_a_failure_while_adding_rows_ends_that_request_only(service: TranscriptionService, speech: np.ndarray) -> None:
    engine = loaded_backend(service.models)
    chunks = [c.samples for c in split_audio(speech_with_gaps(speech, minutes=2)[0], max_chunk_s=30)]

    def rest() -> Iterator[list[np.ndarray]]:
        yield chunks[1:2]
        raise AudioDecodeError("The uploaded file is truncated: found out while decoding the rest.")

    with pytest.raises(AudioDecodeError, match="found out while decoding"):
        engine.transcribe(chunks[:1], language=None, more=rest())
    wait_until_idle(engine)  # its rows left the batch
    assert engine.transcribe(chunks[:2], language=None)[1].token_ids is not None


def test_a_fault_found_after_the_stream_started_is_an_error_event(base_url: str, speech: np.ndarray) -> None:
    flac = encode(long_speech(speech, 150), "flac")
    truncated = flac[: len(flac) * 2 // 3]  # the first minute decodes; the end is missing
    client = OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0, timeout=120)
    with pytest.raises(openai.BadRequestError) as plain:
        client.audio.transcriptions.create(model=MODEL, file=("cut.flac", truncated, "audio/flac"))
    assert plain.value.response.json()["error"]["code"] == "invalid_audio"
    with pytest.raises(openai.APIError, match="truncated"):
        for event in client.audio.transcriptions.create(
            model=MODEL, file=("cut.flac", truncated, "audio/flac"), stream=True
        ):
            assert isinstance(event, TranscriptionTextDeltaEvent)
    files = {"file": ("cut.flac", truncated, "audio/flac")}
    with httpx.stream(
        "POST", f"{base_url}/v1/audio/transcriptions", files=files, data={"model": MODEL, "stream": "true"}
    ) as response:
        assert response.status_code == 200  # the stream started from the first minute
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[len("data: ") :]) for line in response.iter_lines() if line]
    assert all(e["type"] == "transcript.text.delta" for e in events[:-1])  # words, if any came first
    assert events[-1]["error"]["code"] == "invalid_audio" and "truncated" in events[-1]["error"]["message"]
    wait_until_idle(backend_of(base_url))
    with open(FIXTURES / "speech.wav", "rb") as f:
        assert client.audio.transcriptions.create(model=MODEL, file=f).text  # the server serves on


def test_a_streamed_upload_over_the_limit_by_its_header_is_a_400(tiny_model_dir: Path, speech: np.ndarray) -> None:
    from .conftest import running_server

    with running_server(model=str(tiny_model_dir), max_audio_minutes=1) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)
        with pytest.raises(openai.BadRequestError) as info:
            client.audio.transcriptions.create(
                model=MODEL, file=("long.flac", encode(long_speech(speech, 100), "flac"), "audio/flac"), stream=True
            )
    assert info.value.response.json()["error"]["code"] == "audio_too_long"


@pytest.mark.slow  # the streamed request's early start is in the default loop
def test_a_plain_request_also_starts_before_the_whole_upload_is_decoded(
    base_url: str, speech: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    service: TranscriptionService = APPS[base_url].state.transcription
    loaded_backend(service.models).load()
    first_pass = threading.Event()
    hold_the_whole_decode(service, monkeypatch, until=first_pass)
    audio, _ = speech_with_gaps(speech, minutes=3)
    mp3 = encode(audio, "mp3")
    client = OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0, timeout=120)
    with spy_forward(loaded_backend(service.models).model, lambda args, kwargs: first_pass.set()):
        result = client.audio.transcriptions.create(
            model=MODEL, file=("a.mp3", mp3, "audio/mpeg"), response_format="verbose_json"
        )
    assert result.duration == pytest.approx(audio.shape[0] / SAMPLE_RATE, abs=0.1)
    assert result.segments and result.segments[-1].end == pytest.approx(result.duration, abs=1e-3)
