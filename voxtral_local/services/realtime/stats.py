"""What a realtime session has done (for the log line at its end, and tests), and how the server ended it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SessionEnded:
    """How the server ended a session: the WebSocket close's `code` and `reason`."""

    code: int
    reason: str


@dataclass
class SessionStats:
    """What the session has done, for logs and tests: audio received (seconds, at 16 kHz), the most
    untranscribed audio it held (seconds), how often it stopped reading to let the model catch up, the items it
    began and the `error` events it sent."""

    received_s: float = 0.0
    peak_pending_s: float = 0.0
    throttled: int = 0
    items: int = 0
    errors: int = 0
