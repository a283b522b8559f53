"""Live transcription sessions for `/v1/realtime` (no FastAPI here): `RealtimeService` opens and runs them,
`RealtimeSession` is one session's state machine, VAD cuts the audio into utterances, and each utterance is
transcribed by a live stream (a realtime model) or by the batched engine when it ends (a standard model)."""

from .service import RealtimeService, is_realtime_model
from .session import RealtimeSession

__all__ = ["RealtimeService", "RealtimeSession", "is_realtime_model"]
