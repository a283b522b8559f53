"""A small `/v1/realtime` client for the tests: connect with the `websockets` package, send PCM16 audio as
`input_audio_buffer.append` events, and read server events."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import numpy as np
from websockets.sync.client import ClientConnection, connect

from voxtral_local.audio.resampling import resample

Event = dict[str, Any]


def ws_url(base_url: str, query: str = "intent=transcription") -> str:
    """The `/v1/realtime` URL of the server at `base_url` (http://host:port)."""
    return base_url.replace("http://", "ws://", 1) + "/v1/realtime" + (f"?{query}" if query else "")


def open_session(base_url: str, query: str = "intent=transcription", **options: Any) -> ClientConnection:
    """A connected WebSocket (`options` go to `websockets.sync.client.connect`)."""
    return connect(ws_url(base_url, query), max_size=None, **options)


def pcm16(samples: np.ndarray, rate: int = 24000) -> bytes:
    """Mono 16 kHz float32 samples as PCM16 little-endian bytes at `rate` Hz."""
    audio = resample(samples.astype(np.float32), 16000, rate)
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def send(ws: ClientConnection, event: Event) -> None:
    ws.send(json.dumps(event))


def append(ws: ClientConnection, samples: np.ndarray, rate: int = 24000, piece_s: float = 0.2) -> None:
    """Send the audio as appends of `piece_s` seconds each (as fast as the socket takes them)."""
    data = pcm16(samples, rate)
    step = int(rate * piece_s) * 2
    for start in range(0, len(data), step):
        chunk = base64.b64encode(data[start : start + step]).decode()
        send(ws, {"type": "input_audio_buffer.append", "audio": chunk})


def receive(ws: ClientConnection, timeout: float = 60) -> Event:
    """The next server event (TimeoutError after `timeout` s)."""
    event: Event = json.loads(ws.recv(timeout=timeout))
    return event


def receive_until(ws: ClientConnection, done: Callable[[list[Event]], bool], timeout: float = 120) -> list[Event]:
    """Server events until `done(events so far)` holds."""
    events: list[Event] = []
    while not done(events):
        events.append(receive(ws, timeout))
    return events


def count(kind: str, n: int) -> Callable[[list[Event]], bool]:
    """Until `n` events of type `kind` have come."""
    return lambda events: sum(e["type"] == kind for e in events) >= n


def types(events: list[Event]) -> list[str]:
    return [e["type"] for e in events]


COMPLETED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"
