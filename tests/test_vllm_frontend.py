"""VOXTRAL_BACKEND=vllm end to end: this server as the front of two upstreams (instances of this very server with
the tiny model on loopback ports), through the real OpenAI SDK and httpx: chunks spread over both, segments,
streaming, the formats, chat, logprobs, the model list and its errors."""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI

from voxtral_local.audio.decode import SAMPLE_RATE

from .conftest import FIXTURES, running_server
from .test_chunking import speech_with_gaps
from .vllm_helpers import CAP, MODEL, assert_envelope, audio_message, sdk, upstream_states, wav

# ---- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstreams(tiny_model_dir: Path) -> Iterator[tuple[str, str]]:
    """Two upstreams: this server with the tiny model, served as `voxtral-tiny`."""
    with (
        running_server(model=str(tiny_model_dir), **CAP) as up1,
        running_server(model=str(tiny_model_dir), **CAP) as up2,
    ):
        yield up1, up2


@pytest.fixture(scope="module")
def front(upstreams: tuple[str, str]) -> Iterator[str]:
    """The front: VOXTRAL_BACKEND=vllm over both upstreams (one given with `/v1`, one without)."""
    up1, up2 = upstreams
    with running_server(backend="vllm", vllm_urls=f"{up1},{up2}/v1", model=MODEL, **CAP) as url:
        yield url


@pytest.fixture(scope="module")
def front_client(front: str) -> OpenAI:
    return sdk(front)


@pytest.fixture(scope="module")
def three_chunks(speech: np.ndarray) -> tuple[str, bytes, str]:
    """About 65 s of speech with short pauses: three chunks."""
    audio, _ = speech_with_gaps(speech, minutes=65 / 60)
    return wav(audio)


# ---- spreading, segments, streaming, formats ---------------------------------------------------------------


def test_five_minutes_spread_over_two_upstreams(
    front: str, front_client: OpenAI, upstreams: tuple[str, str], speech: np.ndarray
) -> None:
    audio, _ = speech_with_gaps(speech, minutes=5)
    duration = len(audio) / SAMPLE_RATE
    before = upstream_states(front)
    result = front_client.audio.transcriptions.create(
        model=MODEL, file=wav(audio), response_format="verbose_json", temperature=0
    )
    after = upstream_states(front)
    sent = {url: after[url]["requests"] - before[url]["requests"] for url in upstreams}
    assert all(n >= 1 for n in sent.values()), sent  # both upstreams took chunks
    assert sum(sent.values()) >= 10  # one request per 30 s chunk
    assert all(u["in_flight"] == 0 and u["state"] == "up" for u in after.values())
    segments = result.segments
    assert segments is not None and len(segments) >= 10
    assert segments[0].start == 0
    assert segments[-1].end == pytest.approx(duration, abs=0.01)
    assert result.duration == pytest.approx(duration, abs=0.01)
    for previous, segment in itertools.pairwise(segments):
        assert segment.start == previous.end  # the real chunk offsets, contiguous
        assert 0 < segment.end - segment.start <= 30.0 + 1e-6
    assert result.text == " ".join(s.text.strip() for s in segments if s.text.strip())


def test_streamed_transcription_is_the_plain_one(front_client: OpenAI, three_chunks: tuple[str, bytes, str]) -> None:
    plain = front_client.audio.transcriptions.create(model=MODEL, file=three_chunks, temperature=0)
    events = list(front_client.audio.transcriptions.create(model=MODEL, file=three_chunks, temperature=0, stream=True))
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    done = [e for e in events if e.type == "transcript.text.done"]
    assert len(done) == 1 and events[-1] is done[0]
    assert len(deltas) > 3 and "".join(deltas) == done[0].text
    assert done[0].text == plain.text and plain.text
    usage = done[0].usage
    assert usage is not None and usage.output_tokens > 0 and usage.input_tokens >= 3 * 375


def test_a_streamed_transcription_reports_each_chunk_as_it_ends(
    front: str, three_chunks: tuple[str, bytes, str]
) -> None:
    """Each chunk's end reaches the client when its upstream ends it, not all at the end: the `: progress`
    comments count up chunk by chunk before the done event (the rows end with the backend's end token)."""
    data = {"model": MODEL, "stream": "true", "temperature": "0"}
    done_seconds = []
    with httpx.stream(
        "POST", f"{front}/v1/audio/transcriptions", files={"file": three_chunks}, data=data, timeout=120
    ) as answer:
        assert answer.status_code == 200
        for line in answer.iter_lines():
            if line.startswith(": progress "):
                done_seconds.append(float(line.split()[2]))
            elif '"transcript.text.done"' in line:
                break
    assert len(set(done_seconds)) >= 3, done_seconds  # one step per chunk of the three
    assert done_seconds == sorted(done_seconds) and done_seconds[0] < done_seconds[-1]


@pytest.mark.parametrize(
    "response_format",
    [pytest.param("json", marks=pytest.mark.slow), "text", "srt", "vtt", "verbose_json"],  # json: as streaming's
)
def test_formats(front: str, three_chunks: tuple[str, bytes, str], response_format: str) -> None:
    data = {"model": MODEL, "response_format": response_format, "temperature": "0"}
    answer = httpx.post(f"{front}/v1/audio/transcriptions", files={"file": three_chunks}, data=data, timeout=120)
    assert answer.status_code == 200, answer.text
    kind = answer.headers["content-type"]
    if response_format in ("json", "verbose_json"):
        assert kind.startswith("application/json")
        body = answer.json()
        assert body["text"]
        if response_format == "verbose_json":
            assert len(body["segments"]) == 3 and body["segments"][0]["start"] == 0
            assert body["segments"][-1]["end"] == pytest.approx(body["duration"], abs=0.01)
            assert body["language"] and body["duration"] > 60
    elif response_format == "text":
        assert kind.startswith("text/plain") and answer.text.strip()
    else:
        assert kind.startswith("text/plain" if response_format == "srt" else "text/vtt")
        assert answer.text.count(" --> ") == 3
        assert answer.text.startswith(
            "1\n00:00:00,000 --> " if response_format == "srt" else "WEBVTT\n\n00:00:00.000 -->"
        )


# ---- chat ------------------------------------------------------------------------------------------------


def test_chat_plain_and_streamed(front_client: OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": MODEL, "messages": [audio_message()], "max_tokens": 12, "temperature": 0}
    plain = front_client.chat.completions.create(**kwargs)
    assert plain.object == "chat.completion" and plain.model == MODEL
    assert plain.choices[0].message.content and plain.choices[0].finish_reason == "length"
    assert plain.usage is not None and plain.usage.completion_tokens == 12 and plain.usage.prompt_tokens > 375
    chunks = list(front_client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


def test_chat_logprobs_with_top_logprobs(front_client: OpenAI) -> None:
    reply = front_client.chat.completions.create(
        model=MODEL, messages=[audio_message()], max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None and len(logprobs.content) == 6
    assert "".join(e.token for e in logprobs.content) == reply.choices[0].message.content
    for entry in logprobs.content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.bytes == list(entry.token.encode())


def test_translation(front_client: OpenAI, three_chunks: tuple[str, bytes, str]) -> None:
    result = front_client.audio.translations.create(model=MODEL, file=three_chunks, response_format="verbose_json")
    assert result.text and result.segments is not None and len(result.segments) == 3


def test_lotti_audio_extension(front: str) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Transcribe this audio."}],
        "temperature": 0.0,
        "max_tokens": 8,
        "audio": base64.b64encode((FIXTURES / "speech.wav").read_bytes()).decode(),
        "stream": False,
    }
    answer = httpx.post(f"{front}/v1/chat/completions", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]


def test_transcription_logprobs_through_an_openai_kind_upstream(
    front_client: OpenAI, upstreams: tuple[str, str], three_chunks: tuple[str, bytes, str]
) -> None:
    result = front_client.audio.transcriptions.create(model=MODEL, file=three_chunks, include=["logprobs"])
    direct = sdk(upstreams[0]).audio.transcriptions.create(model=MODEL, file=three_chunks, include=["logprobs"])
    assert result.logprobs and direct.logprobs and result.text == direct.text
    assert [(e.token, e.bytes) for e in result.logprobs] == [(e.token, e.bytes) for e in direct.logprobs]
    assert [e.logprob for e in result.logprobs] == pytest.approx([e.logprob for e in direct.logprobs], abs=1e-2)


# ---- models and their errors -------------------------------------------------------------------------------


def test_models_list_backend_and_upstreams(front: str, upstreams: tuple[str, str]) -> None:
    listed = {m["id"]: m for m in httpx.get(f"{front}/v1/models", timeout=10).json()["data"]}
    model = listed[MODEL]
    assert model["backend"] == "vllm" and sorted(model["upstreams"]) == sorted(f"{u}/v1" for u in upstreams)
    assert listed["whisper-1"]["alias_of"] == MODEL
    states = upstream_states(front)
    assert set(states) == set(upstreams)
    assert all(u["state"] == "up" and u["models"] == [MODEL] and u["kind"] == "openai" for u in states.values())


def test_a_model_no_upstream_lists_is_not_found(front_client: OpenAI, three_chunks: tuple[str, bytes, str]) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        front_client.audio.transcriptions.create(model="voxtral-nowhere", file=three_chunks)
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_a_remote_model_is_neither_pulled_nor_deleted(front: str) -> None:
    pulled = httpx.post(f"{front}/v1/models/pull", json={"model": MODEL}, timeout=10)
    assert_envelope(pulled, 409, "model_is_remote")
    deleted = httpx.delete(f"{front}/v1/models/{MODEL}", timeout=10)
    assert_envelope(deleted, 409, "model_is_remote")
    unloaded = httpx.delete(f"{front}/api/ps/{MODEL}", timeout=10)
    assert_envelope(unloaded, 409, "model_is_remote")
    assert httpx.get(f"{front}/health", timeout=10).json()["model_available"] is True
