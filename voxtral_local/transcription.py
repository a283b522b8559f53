"""Transcription of a whole upload: decode, cut into chunks, decode the chunks as a batch, join."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from .audio import decode_audio, duration_seconds
from .chunking import split_audio
from .config import Settings
from .engine import VoxtralEngine


@dataclass(frozen=True)
class Segment:
    """One chunk's transcript with its place in the original audio."""

    id: int
    start: float
    end: float
    text: str
    tokens: list[int]
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    truncated: bool


@dataclass(frozen=True)
class TranscriptionResult:
    """The transcript of one upload."""

    text: str
    duration: float
    language: str | None
    temperature: float
    segments: list[Segment]

    @property
    def truncated_segments(self) -> list[int]:
        """Ids of segments whose generation stopped at the token cap."""
        return [segment.id for segment in self.segments if segment.truncated]


def compression_ratio(text: str) -> float:
    """Whisper's repetition signal: text bytes over zlib-compressed bytes."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


class TranscriptionService:
    """Turns uploaded bytes into a `TranscriptionResult` with the shared engine."""

    def __init__(self, settings: Settings, engine: VoxtralEngine) -> None:
        self.settings = settings
        self.engine = engine

    def transcribe(self, data: bytes, *, language: str | None, temperature: float) -> TranscriptionResult:
        """Blocking; run it in a worker thread."""
        samples = decode_audio(data, max_seconds=self.settings.max_audio_seconds)
        chunks = split_audio(samples, max_chunk_s=self.settings.chunk_seconds)
        outputs = self.engine.transcribe([c.samples for c in chunks], language=language, temperature=temperature)
        segments = [
            Segment(
                id=i,
                start=round(chunk.start_s, 3),
                end=round(chunk.end_s, 3),
                text=out.text,
                tokens=out.token_ids,
                avg_logprob=out.avg_logprob,
                compression_ratio=compression_ratio(out.text),
                no_speech_prob=out.no_speech_prob,
                truncated=out.hit_cap,
            )
            for i, (chunk, out) in enumerate(zip(chunks, outputs, strict=True))
        ]
        return TranscriptionResult(
            text=" ".join(s.text for s in segments if s.text),
            duration=round(duration_seconds(samples), 3),
            language=language,
            temperature=temperature,
            segments=segments,
        )
