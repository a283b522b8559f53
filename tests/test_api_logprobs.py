"""Logprobs through the OpenAI SDK: transcriptions' `include[]=logprobs` and chat's `logprobs`/`top_logprobs`,
plain and streamed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI
from openai.types.audio import TranscriptionTextDeltaEvent, TranscriptionTextDoneEvent

from voxtral_local.testing.audio_files import encode

from .test_api_chat import audio_message
from .test_chunking import speech_with_gaps

MODEL = "voxtral-tiny"


@pytest.fixture(scope="module")
def three_chunks(speech: np.ndarray) -> tuple[str, bytes, str]:
    audio, _ = speech_with_gaps(speech, minutes=70 / 60)
    return ("meeting.mp3", encode(audio, "mp3"), "audio/mpeg")


@pytest.fixture(scope="module")
def token_bytes(tiny_model_dir: Path) -> object:
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    return Tekkenizer.from_file(tiny_model_dir / "tekken.json").id_to_byte_piece


def test_logprobs_cover_every_generated_token_in_order(
    client: OpenAI, three_chunks: tuple[str, bytes, str], token_bytes: object
) -> None:
    result = client.audio.transcriptions.create(model=MODEL, file=three_chunks, include=["logprobs"])
    verbose = client.audio.transcriptions.create(model=MODEL, file=three_chunks, response_format="verbose_json")
    assert result.text == verbose.text and verbose.segments is not None and len(verbose.segments) == 3
    assert result.logprobs is not None
    assert len(result.logprobs) == sum(len(s.tokens) for s in verbose.segments)
    start = 0
    for segment in verbose.segments:
        mine = result.logprobs[start : start + len(segment.tokens)]
        start += len(segment.tokens)
        pieces = [bytes(int(b) for b in lp.bytes or []) for lp in mine]  # the SDK types bytes as floats
        assert pieces == [token_bytes(t) for t in segment.tokens]  # type: ignore[operator]
        assert [lp.token for lp in mine] == [piece.decode("utf-8", "replace") for piece in pieces]
        values = [float(lp.logprob) for lp in mine if lp.logprob is not None]
        assert len(values) == len(mine) and all(v <= 0 for v in values)
        assert np.mean(values) == pytest.approx(segment.avg_logprob, abs=1e-6)
    assert len({lp.logprob for lp in result.logprobs}) > 1


def test_the_raw_body_as_a_plain_client_sends_it(base_url: str, three_chunks: tuple[str, bytes, str]) -> None:
    url, files = f"{base_url}/v1/audio/transcriptions", {"file": three_chunks}
    plain = httpx.post(url, files=files, data={"model": MODEL}, timeout=120)
    assert plain.status_code == 200 and "logprobs" not in plain.json()
    asked = httpx.post(url, files=files, data={"model": MODEL, "include[]": "logprobs"}, timeout=120)
    assert asked.status_code == 200
    entries = asked.json()["logprobs"]
    assert entries and all(set(e) == {"token", "bytes", "logprob"} for e in entries)
    assert all(isinstance(b, int) and 0 <= b < 256 for e in entries for b in e["bytes"])


def test_streamed_deltas_carry_the_logprobs_of_their_tokens(
    client: OpenAI, three_chunks: tuple[str, bytes, str]
) -> None:
    events = list(client.audio.transcriptions.create(model=MODEL, file=three_chunks, stream=True, include=["logprobs"]))
    deltas = [e for e in events[:-1] if isinstance(e, TranscriptionTextDeltaEvent)]
    done = events[-1]
    assert len(deltas) == len(events) - 1 and isinstance(done, TranscriptionTextDoneEvent)
    plain = client.audio.transcriptions.create(model=MODEL, file=three_chunks, include=["logprobs"])
    assert done.text == plain.text
    assert done.logprobs is not None and plain.logprobs is not None
    # the same tokens; their logprobs to float rounding (a stream's rows share the batch at other times)
    assert [lp.token for lp in done.logprobs] == [lp.token for lp in plain.logprobs]
    assert [lp.logprob for lp in done.logprobs] == pytest.approx([lp.logprob for lp in plain.logprobs], abs=1e-4)
    streamed = [(lp.token, lp.bytes, lp.logprob) for d in deltas for lp in d.logprobs or []]
    # each token goes with the first delta that shows its text; only tokens that never show any are left out
    assert len(streamed) > len(deltas) / 2
    whole = iter([(lp.token, lp.bytes, lp.logprob) for lp in done.logprobs])
    assert all(entry in whole for entry in streamed)  # in order, each an entry of the done event
    delta_text = next(d for d in deltas if d.logprobs)
    assert "".join(lp.token or "" for lp in delta_text.logprobs or []).strip() == delta_text.delta.strip()
    without = list(client.audio.transcriptions.create(model=MODEL, file=three_chunks, stream=True))
    kinds = (TranscriptionTextDeltaEvent, TranscriptionTextDoneEvent)
    assert all(isinstance(e, kinds) and e.logprobs is None for e in without)


@pytest.mark.parametrize(
    ("include", "response_format"),
    [(["logprobs"], "text"), (["logprobs"], "verbose_json"), (["logprobs"], "srt"), (["tokens"], "json")],
)
def test_logprobs_only_with_json(client: OpenAI, include: list[str], response_format: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        request: dict[str, Any] = {"include": include, "response_format": response_format}
        client.audio.transcriptions.create(model=MODEL, file=("a.wav", b"RIFF", "audio/wav"), **request)
    error = caught.value.response.json()["error"]
    assert error["param"] == "include" and error["type"] == "invalid_request_error"


CHAT: dict[str, Any] = {"model": MODEL, "messages": [audio_message()], "max_tokens": 12, "temperature": 0.0}


def test_chat_logprobs_with_the_most_likely_alternatives(client: OpenAI) -> None:
    reply = client.chat.completions.create(**CHAT, logprobs=True, top_logprobs=3)
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None and reply.usage is not None
    content = choice.logprobs.content
    assert len(content) == reply.usage.completion_tokens == 12
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        values = [alt.logprob for alt in entry.top_logprobs]
        assert values == sorted(values, reverse=True)
        # greedy: the chosen token is the most likely one
        assert (entry.top_logprobs[0].token, entry.top_logprobs[0].logprob) == (entry.token, entry.logprob)
    text = b"".join(bytes(entry.bytes or []) for entry in content).decode("utf-8", "replace")
    assert text.strip() == choice.message.content
    assert client.chat.completions.create(**CHAT).choices[0].logprobs is None
    without_top = client.chat.completions.create(**CHAT, logprobs=True).choices[0].logprobs
    assert without_top is not None and without_top.content is not None
    assert [e.token for e in without_top.content] == [e.token for e in content]
    assert all(e.top_logprobs == [] for e in without_top.content)


def test_streamed_chat_chunks_carry_their_tokens_logprobs(client: OpenAI) -> None:
    plain = client.chat.completions.create(**CHAT, logprobs=True, top_logprobs=2).choices[0].logprobs
    chunks = list(client.chat.completions.create(**CHAT, logprobs=True, top_logprobs=2, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content or []]
    assert plain is not None and plain.content is not None
    assert [(e.token, [a.token for a in e.top_logprobs]) for e in streamed] == [
        (e.token, [a.token for a in e.top_logprobs]) for e in plain.content
    ]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in plain.content], abs=1e-4)
    with_text = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(with_text) > 3 and all(c.choices[0].logprobs is not None for c in with_text)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": True, "audio": "UklGRg=="}, "logprobs"),
    ],
)
def test_bad_chat_logprobs_requests(base_url: str, extra: dict[str, Any], param: str) -> None:
    body = {**CHAT, "messages": [{"role": "user", "content": "Transcribe."}], **extra}
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
