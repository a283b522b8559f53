"""`/v1/realtime` against clients that misbehave or push the limits, through a real uvicorn on loopback: a
client that floods and never reads, one that leaves while throttled, an utterance at the buffered-audio cap,
binary frames, and what OpenAI's clients send (no `intent`, OpenAI's model names)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed

from voxtral_local.services.realtime import service as realtime_service
from voxtral_local.services.transcription import TranscriptionRequest, TranscriptionResult
from voxtral_local.testing.audio_files import silence, speak
from voxtral_local.testing.tiny_realtime import build_tiny_realtime_model

from .conftest import APPS, running_server
from .realtime_client import COMPLETED, DELTA, append, count, open_session, receive, receive_until, send, types

NO_VAD = {"type": "transcription_session.update", "session": {"turn_detection": None}}


def wait_for(condition: Callable[[], bool], what: str, limit_s: float = 60) -> None:
    """Poll until `condition()` holds (a generous bound: the test fails if it never does)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_client_flooding_junk_without_reading_is_closed(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="voxtral_local.requests")
    with running_server(model=str(tiny_model_dir)) as url:
        sessions = APPS[url].state.realtime.sessions
        with open_session(url) as ws:
            for _ in range(500):  # never reading the error events
                try:
                    ws.send("x")
                except ConnectionClosed:
                    break
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    receive(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
            assert closed.value.rcvd.reason == "too many bad messages"
        wait_for(lambda: not sessions, "the session was not closed")
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200
        ended = [r.getMessage() for r in caplog.records if r.getMessage().startswith("realtime session=")]
        assert len(ended) == 1 and "errors=100 " in ended[0] and ended[0].endswith("ended='too many bad messages'")
        with open_session(url) as ws:  # the server takes new sessions
            assert receive(ws)["type"] == "transcription_session.created"


def test_a_throttled_session_whose_client_leaves_is_cleaned_up(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transcription that does not get on (held here until the session cancels it): the session stops
    reading at VOXTRAL_REALTIME_MAX_AHEAD_S, and still sees its client leave."""
    with running_server(model=str(tiny_model_dir), realtime_max_ahead_s=0.5) as url:
        app = APPS[url]
        service = app.state.realtime
        real = service.transcription.transcribe

        def held(request: TranscriptionRequest) -> TranscriptionResult:
            assert request.cancel is not None
            request.cancel.wait(120)  # until the session is closed
            return real(request)

        monkeypatch.setattr(service.transcription, "transcribe", held)
        slot = app.state.models.slot(app.state.models.resolve(tiny_model_dir.name).id)
        with open_session(url) as ws:
            receive(ws)
            send(ws, NO_VAD)
            receive(ws)
            append(ws, silence(1.0))
            send(ws, {"type": "input_audio_buffer.commit"})
            assert receive(ws)["type"] == "input_audio_buffer.committed"
            session = next(iter(service.sessions))
            append(ws, silence(3.0), piece_s=3.0)  # one append: the server stops reading inside it
            wait_for(lambda: session.stats.throttled > 0, "the session was not throttled")
            assert slot.users == 1  # the committed item holds the model
        wait_for(lambda: not service.sessions, "the throttled session was not closed")
        wait_for(lambda: slot.users == 0, "the model hold was not released")


def test_a_buffered_utterance_at_the_cap_is_committed_and_goes_on(tiny_model_dir: Path) -> None:
    """VOXTRAL_REALTIME_MAX_UTTERANCE_S cuts a long utterance of the standard model into items, each
    starting where the last one was cut (session time); nothing is dropped."""
    talk = speak("This is a sentence that keeps going for a while without any pause.")
    cap_s = 1.0
    with running_server(model=str(tiny_model_dir), realtime_max_utterance_s=cap_s) as url, open_session(url) as ws:
        receive(ws)
        append(ws, np.concatenate([silence(0.5), talk, silence(1.5)]))
        events = receive_until(ws, lambda seen: "input_audio_buffer.speech_stopped" in types(seen))
        committed = sum(e["type"] == "input_audio_buffer.committed" for e in events) + 1
        events += receive_until(ws, count(COMPLETED, committed))
    started = [e for e in events if e["type"] == "input_audio_buffer.speech_started"]
    cuts = [e for e in events if e["type"] == "error"]
    assert len(started) >= 2 and [e["error"]["code"] for e in cuts] == ["audio_too_long"] * (len(started) - 1)
    assert "VOXTRAL_REALTIME_MAX_UTTERANCE_S" in cuts[0]["error"]["message"]
    starts = [e["audio_start_ms"] for e in started]
    assert all(b - a == pytest.approx(cap_s * 1000, abs=1) for a, b in itertools.pairwise(starts))
    stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
    assert stopped["item_id"] == started[-1]["item_id"]
    seconds = [e["usage"]["seconds"] for e in events if e["type"] == COMPLETED]
    assert seconds[:-1] == [pytest.approx(cap_s, abs=0.01)] * (len(seconds) - 1)
    for item in started[1:]:  # an item's deltas report session time past its own start
        ends = [e["audio_end_ms"] for e in events if e["type"] == DELTA and e["item_id"] == item["item_id"]]
        assert all(end > item["audio_start_ms"] for end in ends)


def test_binary_frames_and_wav_headers_are_refused(base_url: str) -> None:
    with open_session(base_url) as ws:
        receive(ws)
        ws.send(b'{"type": "input_audio_buffer.clear"}')
        error = receive(ws)
        assert error["type"] == "error" and error["error"]["code"] == "invalid_json"
        assert "JSON text message" in error["error"]["message"]
        wav = "UklGRiQAAABXQVZFZm10IA=="  # b"RIFF$\0\0\0WAVEfmt "
        send(ws, {"type": "input_audio_buffer.append", "audio": wav})
        error = receive(ws)
        assert (error["error"]["code"], error["error"]["param"]) == ("invalid_audio", "audio")
        assert "WAV header" in error["error"]["message"]


def test_a_client_without_intent_gets_the_ga_events(base_url: str) -> None:
    with open_session(base_url, "") as ws:
        created = receive(ws)
        assert created["type"] == "session.created" and created["session"]["type"] == "transcription"
        send(ws, {"type": "input_audio_buffer.clear"})
        assert receive(ws)["type"] == "input_audio_buffer.cleared"


@pytest.mark.parametrize("name", ["whisper-1", "gpt-4o-transcribe"])
def test_openai_model_names_mean_the_realtime_model(realtime_server: str, name: str, sentence: Any) -> None:
    service = APPS[realtime_server].state.realtime
    with open_session(realtime_server) as ws:
        receive(ws)
        update = {"turn_detection": None, "input_audio_transcription": {"model": name}}
        send(ws, {"type": "transcription_session.update", "session": update})
        assert receive(ws)["type"] == "transcription_session.updated"
        assert next(iter(service.sessions)).config.resolved_model == "voxtral-realtime-tiny"
        append(ws, sentence)
        early = receive_until(ws, count(DELTA, 1))  # the live path: deltas before any commit
        assert "input_audio_buffer.committed" not in types(early)


@pytest.fixture(scope="module")
def realtime_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Any:
    realtime_dir = build_tiny_realtime_model(tmp_path_factory.mktemp("models") / "voxtral-realtime-tiny")
    with running_server(model=str(tiny_model_dir), models=str(realtime_dir)) as url:
        yield url


@pytest.fixture(scope="module")
def sentence() -> np.ndarray:
    return speak("One two three four five.")


def test_events_a_client_does_not_take_are_bounded(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The service over a transport whose sends never finish (a peer that does not read, its socket buffers
    full): the client's valid messages each queue an event, until the session ends with 1008."""
    monkeypatch.setattr(realtime_service, "CLOSE_WAIT_S", 0.1)

    async def run() -> tuple[int, str] | None:
        never = asyncio.Event()

        async def receive() -> str:
            await asyncio.sleep(0)
            return '{"type": "input_audio_buffer.clear"}'

        async def send(text: str) -> None:
            await never.wait()

        return await service.serve(receive, send)

    with running_server(model=str(tiny_model_dir)) as url:
        service = APPS[url].state.realtime
        assert asyncio.run(run()) == (1008, "too many unread events")
        assert not service.sessions
