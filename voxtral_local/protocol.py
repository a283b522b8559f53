"""OpenAI request, response and error models, named after their `openai.types` counterparts."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
TimestampGranularity = Literal["segment", "word"]


class TranscriptionCreateParams(BaseModel):
    """The non-file fields of `POST /v1/audio/transcriptions` (multipart)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    language: str | None = None
    prompt: str | None = None
    response_format: ResponseFormat = "json"
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    timestamp_granularities: list[TimestampGranularity] = Field(default_factory=list)
    stream: bool = False
    chunking_strategy: Literal["auto"] | None = None


class UsageDuration(BaseModel):
    """`openai.types.audio.transcription.UsageDuration`."""

    type: Literal["duration"] = "duration"
    seconds: int


class Transcription(BaseModel):
    """`openai.types.audio.Transcription` (`response_format=json`)."""

    text: str
    usage: UsageDuration
    truncated_segments: list[int] | None = Field(
        None, description="Extension: ids of segments whose generation hit the token cap."
    )


class TranscriptionSegment(BaseModel):
    """`openai.types.audio.TranscriptionSegment`."""

    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class TranscriptionVerbose(BaseModel):
    """`openai.types.audio.TranscriptionVerbose` (`response_format=verbose_json`)."""

    task: Literal["transcribe"] = "transcribe"
    language: str
    duration: float
    text: str
    segments: list[TranscriptionSegment]
    usage: UsageDuration
    truncated_segments: list[int] | None = None


class Model(BaseModel):
    """`openai.types.Model`, plus whether it is downloaded and loaded."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    downloaded: bool
    loaded: bool


class ModelList(BaseModel):
    """The `GET /v1/models` page."""

    object: Literal["list"] = "list"
    data: list[Model]


class Health(BaseModel):
    """`GET /health`, the fields lotti's earlier local services reported."""

    status: Literal["healthy"] = "healthy"
    model: str
    model_available: bool
    model_loaded: bool
    device: str
    max_audio_minutes: float


class ErrorDetail(BaseModel):
    """The body of an OpenAI error."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """`{"error": {...}}`, the envelope every error uses."""

    error: ErrorDetail
