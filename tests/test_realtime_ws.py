"""`/v1/realtime` on the tiny standard model, through a real uvicorn on loopback: OpenAI's transcription events,
server VAD (silero-vad), client commits, bad messages, limits, access rules, and the OpenAI SDK's client."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from openai import OpenAI
from websockets.exceptions import ConnectionClosed, InvalidStatus

from voxtral_local.testing.audio_files import silence, speak
from voxtral_local.testing.tiny_realtime import build_tiny_realtime_model

from .conftest import APPS, running_server
from .realtime_client import (
    COMPLETED,
    DELTA,
    Event,
    append,
    count,
    open_session,
    pcm16,
    receive,
    receive_until,
    send,
    types,
)

NO_VAD = {"type": "transcription_session.update", "session": {"turn_detection": None}}


@pytest.fixture(scope="module")
def two_sentences() -> np.ndarray:
    """Two spoken sentences, 1.5 s of silence between, with silence around (16 kHz)."""
    first, second = speak("The quick brown fox jumps over the lazy dog."), speak("Hello world, this is the end.")
    return np.concatenate([silence(0.5), first, silence(1.5), second, silence(1.0)])


@pytest.fixture(scope="module")
def sentence() -> np.ndarray:
    return speak("One two three four five.")


def transcripts(events: list[Event]) -> dict[str, str]:
    """Each completed item's transcript, checked to be its deltas joined, the deltas all before it."""
    result: dict[str, str] = {}
    for i, event in enumerate(events):
        if event["type"] == COMPLETED:
            item = event["item_id"]
            deltas = [e["delta"] for e in events[:i] if e["type"] == DELTA and e["item_id"] == item]
            assert deltas and not any(e["type"] == DELTA and e["item_id"] == item for e in events[i:])
            assert "".join(deltas) == event["transcript"]
            result[item] = event["transcript"]
    return result


def test_server_vad_cuts_two_utterances_and_streams_each(base_url: str, two_sentences: np.ndarray) -> None:
    with open_session(base_url) as ws:
        created = receive(ws)
        assert created["type"] == "transcription_session.created"
        assert created["session"]["turn_detection"] == {
            "type": "server_vad",
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": 500,
        }
        append(ws, two_sentences)  # 24 kHz, as OpenAI's clients send
        events = receive_until(ws, count(COMPLETED, 2))
    vad_events = [t for t in types(events) if t not in (DELTA, COMPLETED)]
    assert (
        vad_events
        == [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
        ]
        * 2
    )
    started = [e for e in events if e["type"] == "input_audio_buffer.speech_started"]
    stopped = [e for e in events if e["type"] == "input_audio_buffer.speech_stopped"]
    committed = [e for e in events if e["type"] == "input_audio_buffer.committed"]
    # Speech starts 0.5 s in (300 ms of prefix kept before it); 1.5 s of silence part the sentences.
    assert 0 <= started[0]["audio_start_ms"] < 500 < stopped[0]["audio_end_ms"]
    assert stopped[0]["audio_end_ms"] < started[1]["audio_start_ms"] < stopped[0]["audio_end_ms"] + 1500
    assert [c["item_id"] for c in committed] == [s["item_id"] for s in started]
    assert committed[0]["previous_item_id"] is None and committed[1]["previous_item_id"] == committed[0]["item_id"]
    texts = transcripts(events)
    assert list(texts) == [c["item_id"] for c in committed]  # completed in item order


def test_client_commits_without_vad_at_16_khz_in_the_ga_form(base_url: str, sentence: np.ndarray) -> None:
    with open_session(base_url) as ws:
        receive(ws)
        session = {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}
        session["audio"]["input"]["turn_detection"] = None  # type: ignore[index]
        send(ws, {"type": "session.update", "session": session})
        updated = receive(ws)
        assert updated["type"] == "session.updated"
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        assert updated["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 16000}
        append(ws, np.concatenate([silence(1.0), sentence, silence(1.0)]), rate=16000)
        send(ws, {"type": "input_audio_buffer.commit"})
        events = receive_until(ws, count(COMPLETED, 1))
    assert types(events)[0] == "input_audio_buffer.committed"
    assert "input_audio_buffer.speech_started" not in types(events)  # no VAD: silence is transcribed too
    assert events[-1]["usage"]["seconds"] == pytest.approx(sentence.shape[0] / 16000 + 2.0, abs=0.05)
    assert len(transcripts(events)) == 1


def test_clear_drops_the_buffer(base_url: str, sentence: np.ndarray) -> None:
    with open_session(base_url) as ws:
        receive(ws)
        send(ws, NO_VAD)
        assert receive(ws)["type"] == "transcription_session.updated"
        append(ws, sentence)
        send(ws, {"type": "input_audio_buffer.clear"})
        assert receive(ws)["type"] == "input_audio_buffer.cleared"
        send(ws, {"type": "input_audio_buffer.commit", "event_id": "mine"})
        error = receive(ws)
        assert error["type"] == "error"
        assert error["error"]["code"] == "input_audio_buffer_commit_empty" and error["error"]["event_id"] == "mine"
        append(ws, sentence)
        send(ws, {"type": "input_audio_buffer.commit"})
        events = receive_until(ws, count(COMPLETED, 1))
    assert events[-1]["usage"]["seconds"] == pytest.approx(sentence.shape[0] / 16000, abs=0.05)


BAD_MESSAGES = [
    ("{not json", "invalid_json", None),
    ("[1, 2]", "invalid_json", None),
    ('{"type": "response.create"}', "unknown_event", "type"),
    ('{"type": "input_audio_buffer.append", "audio": "***"}', "invalid_base64", "audio"),
    ('{"type": "input_audio_buffer.append", "audio": "AAAA"}', "invalid_audio", "audio"),  # three bytes
    ('{"type": "input_audio_buffer.append"}', "invalid_value", "audio"),
    ('{"type": "transcription_session.update", "session": {"input_audio_format": "g711_ulaw"}}', "unsupported_format",
     "session.input_audio_format"),
    ('{"type": "transcription_session.update", "session": {"turn_detection": {"type": "semantic_vad"}}}',
     "invalid_value", "session.turn_detection.type"),
    ('{"type": "transcription_session.update", "session": {"turn_detection": {"threshold": 2}}}', "invalid_value",
     "session.turn_detection.threshold"),
    ('{"type": "transcription_session.update", "session": {"input_audio_transcription": {"model": "nope"}}}',
     "model_not_found", "session.input_audio_transcription.model"),
    ('{"type": "transcription_session.update", "session": {"input_audio_transcription": {"language": "xx"}}}',
     "invalid_value", "session.input_audio_transcription.language"),
    ('{"type": "session.update", "session": {"type": "transcription", "audio": {"input": {"format": '
     '{"type": "audio/pcm", "rate": 44100}}}}}', "unsupported_format", "session.audio.input.format.rate"),
    ('{"type": "session.update", "session": {"type": "realtime"}}', "invalid_value", "session.type"),
    ('{"type": "transcription_session.update", "session": {"include": ["item.input_audio_transcription.logprobs"]}}',
     "invalid_value", "session.include"),
    ('{"type": "input_audio_buffer.append", "audio": "UklGRiQAAABXQVZFZm10IA=="}', "invalid_audio", "audio"),  # WAV
]  # fmt: skip


def test_bad_messages_get_error_events_and_the_session_goes_on(base_url: str, sentence: np.ndarray) -> None:
    with open_session(base_url) as ws:
        receive(ws)
        send(ws, NO_VAD)
        receive(ws)
        for message, code, param in BAD_MESSAGES:
            ws.send(message)
            event = receive(ws)
            assert event["type"] == "error", message
            assert event["error"]["type"] == "invalid_request_error", message
            assert (event["error"]["code"], event["error"]["param"]) == (code, param), message
            assert event["error"]["message"]
        append(ws, sentence)
        send(ws, {"type": "input_audio_buffer.commit"})
        events = receive_until(ws, count(COMPLETED, 1))
    assert "error" not in types(events)


def test_a_model_not_downloaded_is_an_error_event(tiny_model_dir: Path) -> None:
    small = "mistralai/Voxtral-Small-24B-2507"
    with running_server(model=str(tiny_model_dir), models=small) as url, open_session(url) as ws:
        receive(ws)
        update = {"input_audio_transcription": {"model": "voxtral-small"}}
        send(ws, {"type": "transcription_session.update", "session": update})
        event = receive(ws)
        assert event["type"] == "error" and event["error"]["code"] == "model_not_downloaded"
        send(ws, NO_VAD)  # still open, the model unchanged
        assert receive(ws)["session"]["input_audio_transcription"]["model"] == tiny_model_dir.name


def test_a_session_beyond_the_limit_is_refused(tiny_model_dir: Path) -> None:
    with running_server(model=str(tiny_model_dir), realtime_max_sessions=1) as url, open_session(url) as first:
        receive(first)
        with open_session(url) as second:
            refusal = receive(second)
            assert refusal["type"] == "error" and refusal["error"]["code"] == "too_many_sessions"
            with pytest.raises(ConnectionClosed) as closed:
                receive(second)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        send(first, NO_VAD)
        assert receive(first)["type"] == "transcription_session.updated"


def test_an_idle_session_is_closed(tiny_model_dir: Path) -> None:
    with running_server(model=str(tiny_model_dir), realtime_idle_timeout_s=0.5) as url, open_session(url) as ws:
        receive(ws)
        event = receive(ws)
        assert event["type"] == "error" and event["error"]["code"] == "session_idle_timeout"
        with pytest.raises(ConnectionClosed) as closed:
            receive(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


def test_an_utterance_at_the_audio_limit_is_committed_there(tiny_model_dir: Path, sentence: np.ndarray) -> None:
    limit_s = 1.2
    with running_server(model=str(tiny_model_dir), max_audio_minutes=limit_s / 60) as url, open_session(url) as ws:
        receive(ws)
        send(ws, NO_VAD)
        receive(ws)
        audio = np.concatenate([sentence, sentence])[: int(16000 * 2 * limit_s + 8000)]
        append(ws, audio)
        send(ws, {"type": "input_audio_buffer.commit"})
        events = receive_until(ws, count(COMPLETED, 3))
    errors = [e for e in events if e["type"] == "error"]
    assert [e["error"]["code"] for e in errors] == ["audio_too_long", "audio_too_long"]
    seconds = [e["usage"]["seconds"] for e in events if e["type"] == COMPLETED]
    assert seconds[:2] == [pytest.approx(limit_s, abs=0.1)] * 2
    assert sum(seconds) == pytest.approx(audio.shape[0] / 16000, abs=0.05)  # nothing dropped


def test_a_client_sending_faster_than_real_time_is_throttled(tiny_model_dir: Path) -> None:
    """60 s of speech sent at once: the server reads no further while the audio it holds untranscribed is
    past VOXTRAL_REALTIME_MAX_AHEAD_S (plus the utterance just committed), and every utterance is answered."""
    max_ahead = 0.5
    talk = np.concatenate([speak("This is a sentence that keeps going for a while.")] * 7)  # ~21 s, no pause
    parts: list[np.ndarray] = []
    while sum(p.shape[0] for p in parts) < 60 * 16000:  # few utterances: each is a 30 s window's work
        parts += [talk, silence(1.2)]
    audio = np.concatenate(parts)
    longest = talk.shape[0] / 16000
    fast = {"realtime_max_ahead_s": max_ahead, "max_tokens_per_audio_second": 0.1}  # short random transcripts
    with running_server(model=str(tiny_model_dir), **fast) as url, open_session(url) as ws:
        receive(ws)
        session = next(iter(APPS[url].state.realtime.sessions))
        sender = threading.Thread(target=append, args=(ws, audio), kwargs={"piece_s": 2.0})
        sender.start()
        events = receive_until(ws, count(COMPLETED, len(parts) // 2))
        sender.join()
        send(ws, {"type": "input_audio_buffer.clear"})  # answered once every append before it is taken
        receive_until(ws, count("input_audio_buffer.cleared", 1))
        stats = session.stats
    assert stats.throttled >= 1
    assert stats.peak_pending_s <= max_ahead + longest + 1.0 + 0.1
    assert stats.received_s == pytest.approx(audio.shape[0] / 16000, abs=0.1)
    assert types(events).count("input_audio_buffer.committed") == len(parts) // 2


KEY = "realtime-secret"


@pytest.fixture(scope="module")
def keyed_url(tiny_model_dir: Path) -> Iterator[str]:
    with running_server(model=str(tiny_model_dir), api_key=KEY, cors_origins="http://app.example") as url:
        yield url


def test_the_api_key_as_a_header_or_a_subprotocol(keyed_url: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        open_session(keyed_url)
    assert refused.value.response.status_code in (401, 403)
    with pytest.raises(InvalidStatus):
        open_session(keyed_url, subprotocols=["realtime", "openai-insecure-api-key.wrong"])
    with open_session(keyed_url, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        assert receive(ws)["type"] == "transcription_session.created"
    offered = ["realtime", f"openai-insecure-api-key.{KEY}"]
    with open_session(keyed_url, subprotocols=offered) as ws:
        assert ws.subprotocol == "realtime"
        assert receive(ws)["type"] == "transcription_session.created"


def test_origins_same_or_listed_are_accepted_and_others_refused(keyed_url: str) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    with pytest.raises(InvalidStatus) as refused:
        open_session(keyed_url, additional_headers={**auth, "Origin": "https://evil.example"})
    assert refused.value.response.status_code == 403
    for origin in (keyed_url, "http://app.example"):
        with open_session(keyed_url, additional_headers={**auth, "Origin": origin}) as ws:
            assert receive(ws)["type"] == "transcription_session.created"


def test_the_openai_sdk_realtime_client(base_url: str, sentence: np.ndarray) -> None:
    client = OpenAI(base_url=f"{base_url}/v1", api_key="not-needed", max_retries=0)
    with client.realtime.connect(extra_query={"intent": "transcription"}) as connection:
        session = {"type": "transcription", "audio": {"input": {"turn_detection": None}}}
        connection.session.update(session=session)  # type: ignore[arg-type]
        connection.input_audio_buffer.append(audio=base64.b64encode(pcm16(sentence)).decode())
        connection.input_audio_buffer.commit()
        seen = []
        for event in connection:
            seen.append(event)
            if event.type == COMPLETED:
                break
    kinds = [event.type for event in seen]
    assert kinds[:3] == ["transcription_session.created", "session.updated", "input_audio_buffer.committed"]
    deltas = [str(getattr(e, "delta", "")) for e in seen if e.type == DELTA]
    assert deltas and "".join(deltas) == getattr(seen[-1], "transcript", None)


def test_events_are_valid_json_objects_with_ids(base_url: str) -> None:
    with open_session(base_url) as ws:
        event = json.loads(ws.recv(timeout=30))
    assert event["event_id"].startswith("event_") and event["session"]["id"].startswith("sess_")


# ---- The live path: a Voxtral Realtime model (the tiny random-weight one) ----


@pytest.fixture(scope="module")
def realtime_url(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[str]:
    """A server whose realtime model (found as the first served realtime model) is the tiny one, next to
    the tiny standard model as the default."""
    realtime_dir = build_tiny_realtime_model(tmp_path_factory.mktemp("models") / "voxtral-realtime-tiny")
    with running_server(model=str(tiny_model_dir), models=str(realtime_dir)) as url:
        yield url


def test_live_deltas_come_while_the_audio_is_still_arriving(realtime_url: str, sentence: np.ndarray) -> None:
    half = sentence.shape[0] // 2
    with open_session(realtime_url) as ws:
        assert receive(ws)["session"]["input_audio_transcription"]["model"] == "voxtral-realtime-tiny"
        send(ws, NO_VAD)
        receive(ws)
        append(ws, sentence[:half])
        early = receive_until(ws, count(DELTA, 1))  # nothing committed, half the audio still to come
        assert "input_audio_buffer.committed" not in types(early)
        assert 0 < early[-1]["audio_end_ms"] <= half * 1000 // 16000
        append(ws, sentence[half:])
        send(ws, {"type": "input_audio_buffer.commit"})
        events = early + receive_until(ws, count(COMPLETED, 1))
    assert len(transcripts(events)) == 1
    assert events[-1]["usage"]["seconds"] == pytest.approx(sentence.shape[0] / 16000, abs=0.05)


def test_live_deltas_come_before_vad_ends_the_utterance(realtime_url: str, two_sentences: np.ndarray) -> None:
    with open_session(realtime_url) as ws:
        receive(ws)
        first_end = int(16000 * 2.0)  # inside the first sentence: no pause yet
        append(ws, two_sentences[:first_end])
        early = receive_until(ws, count(DELTA, 1))
        assert types(early)[0] == "input_audio_buffer.speech_started"
        assert "input_audio_buffer.speech_stopped" not in types(early)
        append(ws, two_sentences[first_end:])
        events = early + receive_until(ws, count(COMPLETED, 2))
    assert len(transcripts(events)) == 2
    assert types(events).count("input_audio_buffer.committed") == 2
    # Each delta's `audio_end_ms` is session time: past its own item's start, rising within the item.
    for started in (e for e in events if e["type"] == "input_audio_buffer.speech_started"):
        ends = [e["audio_end_ms"] for e in events if e["type"] == DELTA and e["item_id"] == started["item_id"]]
        assert ends and ends == sorted(ends) and ends[0] > started["audio_start_ms"]


def test_live_sessions_share_decoding_steps(realtime_url: str, sentence: np.ndarray) -> None:
    models = APPS[realtime_url].state.models
    with models.use("voxtral-realtime-tiny") as backend:
        engine = backend.engine

    def run(sessions: int) -> int:
        """Decoding steps for `sessions` sessions each sending the sentence and committing it."""
        sockets = [open_session(realtime_url) for _ in range(sessions)]
        try:
            for ws in sockets:
                receive(ws)
                send(ws, NO_VAD)
                receive(ws)
            before = engine.steps
            for ws in sockets:
                append(ws, sentence)
                send(ws, {"type": "input_audio_buffer.commit"})
            for ws in sockets:
                assert len(transcripts(receive_until(ws, count(COMPLETED, 1)))) == 1
            return int(engine.steps - before)
        finally:
            for ws in sockets:
                ws.close()

    alone = run(1)
    assert run(2) < 2 * alone, "the two sessions' steps were decoded together"


def test_a_live_session_behind_real_time_is_told_and_loses_nothing(tiny_model_dir: Path, sentence: np.ndarray) -> None:
    """Audio sent at real-time pace to a server whose decoding steps are slowed to 80 ms of audio per 200 ms
    (an overloaded machine): the session is told it is behind, and still gets all its audio transcribed."""
    realtime_dir = build_tiny_realtime_model(tiny_model_dir.parent / "voxtral-realtime-lag")
    with running_server(model=str(realtime_dir), realtime_lag_s=0.3, preload=True) as url:
        with APPS[url].state.models.use("voxtral-realtime-lag") as backend:
            stepper = backend.engine.stepper
        step = stepper.step

        def slow_step(rows: list[int], steps: list[int], *args: Any) -> Any:
            if min(steps) >= 39:  # past the 39-token prefix: 80 ms of audio per 200 ms
                threading.Event().wait(0.2)
            return step(rows, steps, *args)

        stepper.step = slow_step
        with open_session(url) as ws:
            receive(ws)
            send(ws, NO_VAD)
            receive(ws)
            audio, piece = np.concatenate([sentence, sentence])[:19200], 1920  # 1.2 s in 120 ms pieces
            for at in range(0, audio.shape[0], piece):  # at real-time pace
                append(ws, audio[at : at + piece])
                time.sleep(0.12)
            send(ws, {"type": "input_audio_buffer.commit"})
            events = receive_until(ws, count(COMPLETED, 1))
    behind = [e for e in events if e["type"] == "error"]
    assert behind and behind[0]["error"]["code"] == "behind_real_time"
    assert events[-1]["usage"]["seconds"] == pytest.approx(1.2, abs=0.05)
    assert len(transcripts(events)) == 1


def test_a_client_that_leaves_cancels_its_live_stream(realtime_url: str, sentence: np.ndarray) -> None:
    models = APPS[realtime_url].state.models
    with models.use("voxtral-realtime-tiny") as backend:
        engine = backend.engine
    with open_session(realtime_url) as ws:
        receive(ws)
        send(ws, NO_VAD)
        receive(ws)
        append(ws, sentence)
        receive_until(ws, count(DELTA, 1))  # its stream is decoding
        assert engine.streams
    deadline = time.monotonic() + 60
    while engine.streams or APPS[realtime_url].state.realtime.sessions:  # gone once the server sees the close
        assert time.monotonic() < deadline, "the stream was not cancelled"
        time.sleep(0.05)


def test_the_connection_query_picks_the_model_and_only_transcription(realtime_url: str) -> None:
    with open_session(realtime_url, "intent=transcription&model=" + "voxtral-tiny") as ws:
        assert receive(ws)["session"]["input_audio_transcription"]["model"] == "voxtral-tiny"
    with open_session(realtime_url, "intent=transcription&model=gpt-realtime") as ws:  # OpenAI's name: not served
        assert receive(ws)["session"]["input_audio_transcription"]["model"] == "voxtral-realtime-tiny"
    with open_session(realtime_url, "intent=conversation") as ws:
        refusal = receive(ws)
        assert refusal["type"] == "error" and refusal["error"]["code"] == "invalid_intent"
        with pytest.raises(ConnectionClosed) as closed:
            receive(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
