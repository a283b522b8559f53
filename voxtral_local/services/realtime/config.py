"""A realtime session's configuration: what `transcription_session.update` / `session.update` set, checked,
and how the `created`/`updated` events show it in either form."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from ...errors import InvalidRequestError, quote
from ...languages import normalize_language
from ...protocol_realtime import (
    DEFAULT_PREFIX_PADDING_MS,
    DEFAULT_SILENCE_DURATION_MS,
    DEFAULT_THRESHOLD,
    INPUT_RATES,
    OPENAI_RATE,
    InputTranscription,
    SessionUpdate,
    TranscriptionSessionUpdate,
    TurnDetection,
)

Form = Literal["beta", "ga"]  # `transcription_session.*` or `session.*` event names


@dataclass(frozen=True)
class VadConfig:
    """`server_vad`: speech probability threshold (0-1), audio kept before the speech start and silence that
    ends an utterance (milliseconds)."""

    threshold: float = DEFAULT_THRESHOLD
    prefix_padding_ms: int = DEFAULT_PREFIX_PADDING_MS
    silence_duration_ms: int = DEFAULT_SILENCE_DURATION_MS


@dataclass(frozen=True)
class SessionConfig:
    """The effective session. `model`: the name the client gave (None: the server's choice, shown as
    `resolved_model`); `language`: ISO 639-1 or None to detect; `vad`: None when the client commits."""

    resolved_model: str
    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    vad: VadConfig | None = VadConfig()
    rate: int = OPENAI_RATE
    include: tuple[str, ...] = ()

    def updated(self, event: TranscriptionSessionUpdate | SessionUpdate) -> SessionConfig:
        """This configuration with the update's fields applied (fields left out stay as they are). Raises
        InvalidRequestError (`param` names the field) for what is not served: a G.711 format, a rate other
        than 24000/16000, `semantic_vad`, any `include` entry, a realtime (speech-to-speech) session, a
        language that is no ISO 639-1 code."""
        config = self
        if isinstance(event, TranscriptionSessionUpdate):
            session = event.session
            fields = session.model_fields_set
            if session.input_audio_format not in (None, "pcm16"):
                raise InvalidRequestError(
                    "Only 'pcm16' input audio is served (PCM16 mono little-endian).",
                    param="session.input_audio_format",
                    code="unsupported_format",
                )
            if session.input_audio_format == "pcm16":
                config = replace(config, rate=OPENAI_RATE)
            config = config._with_transcription(session.input_audio_transcription, "session.input_audio_transcription")
            if "turn_detection" in fields:
                config = replace(config, vad=_vad(session.turn_detection, self.vad, "session.turn_detection"))
            if session.include is not None:
                config = replace(config, include=_include(session.include))
            return config
        ga = event.session
        if ga.type != "transcription":
            raise InvalidRequestError(
                "This server serves transcription sessions only: send session.type 'transcription' (and connect "
                "with ?intent=transcription).",
                param="session.type",
                code="invalid_value",
            )
        if ga.include is not None:
            config = replace(config, include=_include(ga.include))
        audio_in = ga.audio.input if ga.audio is not None else None
        if audio_in is None:
            return config
        if audio_in.format is not None:
            fmt = audio_in.format
            if fmt.type != "audio/pcm":
                raise InvalidRequestError(
                    "Only 'audio/pcm' input audio is served (PCM16 mono little-endian).",
                    param="session.audio.input.format.type",
                    code="unsupported_format",
                )
            rate = OPENAI_RATE if fmt.rate is None else fmt.rate
            if rate not in INPUT_RATES:
                raise InvalidRequestError(
                    f"Unsupported input rate {rate}: send PCM16 at 24000 Hz (as OpenAI) or 16000 Hz.",
                    param="session.audio.input.format.rate",
                    code="unsupported_format",
                )
            config = replace(config, rate=rate)
        config = config._with_transcription(audio_in.transcription, "session.audio.input.transcription")
        if "turn_detection" in audio_in.model_fields_set:
            config = replace(config, vad=_vad(audio_in.turn_detection, self.vad, "session.audio.input.turn_detection"))
        return config

    def _with_transcription(self, given: InputTranscription | None, param: str) -> SessionConfig:
        if given is None:
            return self
        config = self
        fields = given.model_fields_set
        if "model" in fields:
            config = replace(config, model=given.model or None)
        if "language" in fields:
            try:
                config = replace(config, language=normalize_language(given.language))
            except InvalidRequestError as exc:
                raise InvalidRequestError(exc.message, param=f"{param}.language", code="invalid_value") from exc
        if "prompt" in fields:
            config = replace(config, prompt=given.prompt)
        return config

    def _turn_detection(self) -> dict[str, Any] | None:
        if self.vad is None:
            return None
        return {
            "type": "server_vad",
            "threshold": self.vad.threshold,
            "prefix_padding_ms": self.vad.prefix_padding_ms,
            "silence_duration_ms": self.vad.silence_duration_ms,
        }

    def render(self, form: Form, session_id: str) -> dict[str, Any]:
        """The session object of a `created`/`updated` event: beta (`transcription_session.*`) or GA
        (`session.*`) shape."""
        transcription = {"model": self.model or self.resolved_model, "language": self.language, "prompt": self.prompt}
        if form == "beta":
            return {
                "id": session_id,
                "object": "realtime.transcription_session",
                "input_audio_format": "pcm16",
                "input_audio_sample_rate": self.rate,  # an extension: 24000 unless set to 16000 (GA form)
                "input_audio_transcription": transcription,
                "turn_detection": self._turn_detection(),
                "input_audio_noise_reduction": None,
                "include": list(self.include),
                "modalities": ["text"],
            }
        return {
            "type": "transcription",
            "id": session_id,
            "object": "realtime.transcription_session",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": self.rate},
                    "transcription": transcription,
                    "turn_detection": self._turn_detection(),
                    "noise_reduction": None,
                }
            },
            "include": list(self.include),
        }


def _include(given: list[str]) -> tuple[str, ...]:
    """`include`: nothing extra is served (Voxtral's transcripts come without log probabilities), so any
    entry, `item.input_audio_transcription.logprobs` included, is refused rather than silently ignored."""
    if given:
        raise InvalidRequestError(
            f"`include` {quote(given[0])} is not served: this server sends no log probabilities; leave `include` "
            "empty.",
            param="session.include",
            code="invalid_value",
        )
    return ()


def _vad(given: TurnDetection | None, current: VadConfig | None, param: str) -> VadConfig | None:
    """The VAD a `turn_detection` field asks for: None (client commits) for null; unspecified knobs keep
    their current values (OpenAI's defaults when VAD was off)."""
    if given is None:
        return None
    if given.type != "server_vad":
        raise InvalidRequestError(
            f"Turn detection {given.type!r} is not served: use 'server_vad' or null.",
            param=f"{param}.type",
            code="invalid_value",
        )
    base = current or VadConfig()
    return VadConfig(
        threshold=base.threshold if given.threshold is None else given.threshold,
        prefix_padding_ms=base.prefix_padding_ms if given.prefix_padding_ms is None else given.prefix_padding_ms,
        silence_duration_ms=(
            base.silence_duration_ms if given.silence_duration_ms is None else given.silence_duration_ms
        ),
    )
