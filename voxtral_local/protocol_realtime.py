"""The events of `/v1/realtime` transcription sessions, named and shaped after OpenAI's realtime API (the
OpenAI SDK's `types/realtime` for the GA `session.update` form, `types/beta/realtime` for
`transcription_session.update`).

Client events are parsed by `parse_client_event` (unknown fields are ignored, as OpenAI tolerates them);
server events are plain models that `dump` turns into the JSON text sent. One extension: a transcription delta
carries `audio_end_ms`, how far into the session's audio (milliseconds from its first sample, as in
`speech_stopped`) the model had read when it produced the text (the realtime benchmark measures the delay from
a word's audio to its delta with it).
"""

from __future__ import annotations

import json
import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from .errors import ErrorKind, InvalidRequestError, VoxtralError, quote, shorten

# OpenAI's defaults for `server_vad`.
DEFAULT_THRESHOLD = 0.5
DEFAULT_PREFIX_PADDING_MS = 300
DEFAULT_SILENCE_DURATION_MS = 500
OPENAI_RATE = 24000  # PCM16 as OpenAI sends it
INPUT_RATES = (24000, 16000)
# Error kinds a client caused (OpenAI's `invalid_request_error`); the others are `server_error`.
CLIENT_KINDS = frozenset(
    {
        ErrorKind.INVALID_REQUEST,
        ErrorKind.UNSUPPORTED_MEDIA_TYPE,
        ErrorKind.PAYLOAD_TOO_LARGE,
        ErrorKind.MODEL_NOT_FOUND,
        ErrorKind.CONFLICT,
        ErrorKind.UNAUTHENTICATED,
        ErrorKind.FORBIDDEN,
        ErrorKind.REQUEST_TIMEOUT,
    }
)


def new_id(prefix: str) -> str:
    """A fresh id such as `item_3f2a...` (event ids, item ids, session ids)."""
    return f"{prefix}_{secrets.token_hex(10)}"


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="ignore")


# ---- Client events -------------------------------------------------------------------------------------------


class TurnDetection(_Tolerant):
    """`turn_detection`: `server_vad` (silero-vad) with OpenAI's knobs; `semantic_vad` is refused."""

    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    prefix_padding_ms: int | None = Field(None, ge=0, le=10_000)
    silence_duration_ms: int | None = Field(None, ge=0, le=60_000)


class InputTranscription(_Tolerant):
    """`input_audio_transcription` (beta) / `audio.input.transcription` (GA). `prompt` is accepted and not used."""

    model: str | None = None
    language: str | None = None
    prompt: str | None = None


class BetaSession(_Tolerant):
    """The `session` of `transcription_session.update`. A field left out is left as it is; `turn_detection`
    sent as null turns server VAD off."""

    input_audio_format: Literal["pcm16", "g711_ulaw", "g711_alaw"] | None = None
    input_audio_transcription: InputTranscription | None = None
    turn_detection: TurnDetection | None = None
    include: list[str] | None = None


class AudioFormat(_Tolerant):
    """`audio.input.format`: PCM16 mono little-endian at 24 kHz (OpenAI) or 16 kHz."""

    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"] = "audio/pcm"
    rate: int | None = None


class GaAudioInput(_Tolerant):
    format: AudioFormat | None = None
    transcription: InputTranscription | None = None
    turn_detection: TurnDetection | None = None


class GaAudio(_Tolerant):
    input: GaAudioInput | None = None


class GaSession(_Tolerant):
    """The `session` of `session.update` (GA form); only `type: "transcription"` is served."""

    type: Literal["transcription", "realtime"]
    audio: GaAudio | None = None
    include: list[str] | None = None


class TranscriptionSessionUpdate(_Tolerant):
    type: Literal["transcription_session.update"]
    event_id: str | None = None
    session: BetaSession


class SessionUpdate(_Tolerant):
    type: Literal["session.update"]
    event_id: str | None = None
    session: GaSession


class AudioAppend(_Tolerant):
    type: Literal["input_audio_buffer.append"]
    event_id: str | None = None
    audio: str  # base64 PCM16 mono little-endian


class AudioCommit(_Tolerant):
    type: Literal["input_audio_buffer.commit"]
    event_id: str | None = None


class AudioClear(_Tolerant):
    type: Literal["input_audio_buffer.clear"]
    event_id: str | None = None


ClientEvent = Annotated[
    TranscriptionSessionUpdate | SessionUpdate | AudioAppend | AudioCommit | AudioClear, Field(discriminator="type")
]
CLIENT_EVENT_TYPES = (
    "transcription_session.update",
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
)
_CLIENT_EVENT: TypeAdapter[ClientEvent] = TypeAdapter(ClientEvent)


class ClientEventError(InvalidRequestError):
    """A client message that is not a valid event; `event_id` is the message's own, when it had one."""

    def __init__(self, message: str, *, code: str, param: str | None = None, event_id: str | None = None) -> None:
        super().__init__(message, param=param, code=code)
        self.event_id = event_id


def parse_client_event(text: str | bytes) -> ClientEvent:
    """One client message as its event. Raises ClientEventError: `invalid_json` (not a JSON object),
    `unknown_event` (a type this server does not take), `invalid_value` (a field of the wrong shape)."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        message = f"The message is not valid JSON: {shorten(str(exc), 120)}."
        raise ClientEventError(message, code="invalid_json") from exc
    if not isinstance(data, dict):
        raise ClientEventError("An event must be a JSON object.", code="invalid_json")
    raw_id = data.get("event_id")
    event_id = raw_id if isinstance(raw_id, str) else None
    kind = data.get("type")
    if kind not in CLIENT_EVENT_TYPES:
        raise ClientEventError(
            f"Unknown event type {quote(kind)}: a transcription session takes {', '.join(CLIENT_EVENT_TYPES)}.",
            code="unknown_event",
            param="type",
            event_id=event_id,
        )
    try:
        return _CLIENT_EVENT.validate_python(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = [str(part) for part in error["loc"][1:]]  # the first part is the union member's tag
        param = ".".join(loc) or None
        raise ClientEventError(
            f"Invalid {quote(kind)} event: {param or 'event'}: {shorten(error['msg'], 160)}.",
            code="invalid_value",
            param=param,
            event_id=event_id,
        ) from exc


# ---- Server events -------------------------------------------------------------------------------------------


class ServerEvent(BaseModel):
    """A server event; `event_id` is fresh for each."""

    event_id: str = Field(default_factory=lambda: new_id("event"))
    type: str

    def dump(self) -> str:
        """The JSON text sent."""
        return self.model_dump_json()


class SessionEvent(ServerEvent):
    """`transcription_session.created`/`updated` or `session.created`/`updated`: the whole effective session."""

    session: dict[str, Any]


class SpeechStarted(ServerEvent):
    type: Literal["input_audio_buffer.speech_started"] = "input_audio_buffer.speech_started"
    audio_start_ms: int  # of all the session's audio, prefix padding included
    item_id: str


class SpeechStopped(ServerEvent):
    type: Literal["input_audio_buffer.speech_stopped"] = "input_audio_buffer.speech_stopped"
    audio_end_ms: int
    item_id: str


class Committed(ServerEvent):
    type: Literal["input_audio_buffer.committed"] = "input_audio_buffer.committed"
    item_id: str
    previous_item_id: str | None = None


class Cleared(ServerEvent):
    type: Literal["input_audio_buffer.cleared"] = "input_audio_buffer.cleared"


class TranscriptionDelta(ServerEvent):
    """Text of an item as it is produced. `audio_end_ms` (an extension): how far into the session's audio
    (milliseconds from its first sample) the model had read when it produced the text."""

    type: Literal["conversation.item.input_audio_transcription.delta"] = (
        "conversation.item.input_audio_transcription.delta"
    )
    item_id: str
    content_index: int = 0
    delta: str
    audio_end_ms: int


class DurationUsage(BaseModel):
    type: Literal["duration"] = "duration"
    seconds: float


class TranscriptionCompleted(ServerEvent):
    """An item's transcript: its deltas joined."""

    type: Literal["conversation.item.input_audio_transcription.completed"] = (
        "conversation.item.input_audio_transcription.completed"
    )
    item_id: str
    content_index: int = 0
    transcript: str
    usage: DurationUsage


class RealtimeErrorDetail(BaseModel):
    type: str
    code: str | None
    message: str
    param: str | None = None
    event_id: str | None = None  # the client event that caused it


class TranscriptionFailed(ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.failed"] = (
        "conversation.item.input_audio_transcription.failed"
    )
    item_id: str
    content_index: int = 0
    error: RealtimeErrorDetail


class ErrorEvent(ServerEvent):
    """OpenAI's `error` event; the session stays open unless the server closes it after."""

    type: Literal["error"] = "error"
    error: RealtimeErrorDetail


def error_detail(exc: VoxtralError, event_id: str | None = None) -> RealtimeErrorDetail:
    """The `error` object of an event for a domain error (`event_id`: the client event that caused it)."""
    kind = "invalid_request_error" if exc.kind in CLIENT_KINDS else "server_error"
    if event_id is None and isinstance(exc, ClientEventError):
        event_id = exc.event_id
    return RealtimeErrorDetail(
        type=kind, code=exc.code, message=shorten(exc.message, 1000), param=exc.param, event_id=event_id
    )


def error_event(exc: VoxtralError, event_id: str | None = None) -> ErrorEvent:
    """An `error` event for a domain error."""
    return ErrorEvent(error=error_detail(exc, event_id))
