"""Transcription of a whole upload: decode, cut into chunks, decode the chunks as a batch, join."""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .audio import decode_audio, duration_seconds
from .chunking import AudioChunk, split_audio
from .config import Settings
from .engine import ChunkOutput, VoxtralEngine
from .engine.generation import Sampling
from .engine.prompts import audio_part
from .engine.scheduler import TokenCallback

DeltaCallback = Callable[[str], None]


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
    prompt_tokens: int
    audio_tokens: int
    completion_tokens: int

    @property
    def truncated_segments(self) -> list[int]:
        """Ids of segments whose generation stopped at the token cap."""
        return [segment.id for segment in self.segments if segment.truncated]


def compression_ratio(text: str) -> float:
    """Whisper's repetition signal: text bytes over zlib-compressed bytes."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


class TranscriptionService:
    """Turns uploaded audio into a `TranscriptionResult` with the shared engine.

    Without an instruction each chunk gets Voxtral's official transcription prompt. With one (lotti's
    `audio` extension, translations), each chunk gets a chat prompt: the chunk's audio, then the
    instruction. Either way all chunks of the request are decoded together.
    """

    def __init__(self, settings: Settings, engine: VoxtralEngine) -> None:
        self.settings = settings
        self.engine = engine

    def decode(self, data: bytes) -> np.ndarray:
        """Upload bytes to mono 16 kHz samples, within the duration limit."""
        return decode_audio(data, max_seconds=self.settings.max_audio_seconds)

    def transcribe(
        self,
        data: bytes | np.ndarray,
        *,
        language: str | None,
        temperature: float = 0.0,
        seed: int | None = None,
        instruction: str | None = None,
        max_tokens_per_chunk: int | None = None,
        on_delta: DeltaCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> TranscriptionResult:
        """Blocking; run it in a worker thread. `on_delta` receives the text as it is produced."""
        samples = self.decode(data) if isinstance(data, bytes) else data
        chunks = split_audio(samples, max_chunk_s=self.settings.chunk_seconds)
        caps = [self.engine.token_cap(c.duration_s) for c in chunks]
        if max_tokens_per_chunk is not None:
            caps = [min(cap, max_tokens_per_chunk) for cap in caps]
        self.engine.load()
        sampling = Sampling(temperature=temperature, seed=seed)
        outputs = self.engine.stream_text(
            caps,
            on_delta,
            lambda on_token: self._generate(chunks, caps, language, sampling, instruction, on_token, cancel),
        )
        return self._result(samples, chunks, outputs, language, temperature)

    def _generate(
        self,
        chunks: list[AudioChunk],
        caps: list[int],
        language: str | None,
        sampling: Sampling,
        instruction: str | None,
        on_token: TokenCallback | None,
        cancel: threading.Event | None,
    ) -> list[ChunkOutput]:
        if instruction is None:
            return self.engine.transcribe(
                [c.samples for c in chunks], language=language, sampling=sampling, on_token=on_token, cancel=cancel
            )
        conversations = [
            [{"role": "user", "content": [audio_part(c.samples), {"type": "text", "text": instruction}]}]
            for c in chunks
        ]
        return self.engine.chat(conversations, caps=caps, sampling=sampling, on_token=on_token, cancel=cancel)

    @staticmethod
    def _result(
        samples: np.ndarray,
        chunks: list[AudioChunk],
        outputs: list[ChunkOutput],
        language: str | None,
        temperature: float,
    ) -> TranscriptionResult:
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
            prompt_tokens=sum(out.prompt_tokens for out in outputs),
            audio_tokens=sum(out.audio_tokens for out in outputs),
            completion_tokens=sum(len(out.token_ids) for out in outputs),
        )
