"""Transcription of a whole upload: decode, cut into chunks, decode the chunks as a batch, join."""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..audio.chunking import AudioChunk, split_audio
from ..audio.decode import decode_audio, decode_head, duration_seconds
from ..backends.base import RowsCallback, Sampling, TokenCallback
from ..backends.transformers import ChunkOutput, TransformersBackend
from ..backends.transformers.prompts import audio_part
from ..config import Settings
from .joining import join_texts

DeltaCallback = Callable[[str], None]


@dataclass(frozen=True)
class Segment:
    """One chunk's transcript with its place in the original audio."""

    id: int
    start: float
    end: float
    text: str
    tokens: list[int]
    logprobs: list[float]  # of each of `tokens`
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


@dataclass(frozen=True)
class PartialUpload:
    """An upload of which only the first seconds are decoded yet (`TranscriptionService.decode_start`)."""

    data: bytes
    head: np.ndarray


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

    def __init__(self, settings: Settings, engine: TransformersBackend) -> None:
        self.settings = settings
        self.engine = engine

    def decode(self, data: bytes, cancel: threading.Event | None = None) -> np.ndarray:
        """Upload bytes to mono 16 kHz samples, within the duration limit; stops (GenerationCancelledError)
        once `cancel` is set."""
        return decode_audio(data, max_seconds=self.settings.max_audio_seconds, cancel=cancel)

    def decode_start(self, data: bytes, cancel: threading.Event | None = None) -> np.ndarray | PartialUpload:
        """The whole upload if it is short; else its first chunk length and a second, the rest to be decoded
        while the first chunk is transcribed (a streamed response starts within one chunk's work). What the
        head shows is checked here; a fault further in is raised by `transcribe`, after the first words.
        A file whose length no header states exactly is decoded whole here: GenerationCancelledError once
        `cancel` is set."""
        # Past one chunk length the first cut is final (it falls in the last seconds before that length);
        # the extra second keeps it clear of the resampler's edge at the head's end.
        head_seconds = self.settings.chunk_seconds + 1
        head, complete = decode_head(
            data, seconds=head_seconds, max_seconds=self.settings.max_audio_seconds, cancel=cancel
        )
        return head if complete else PartialUpload(data, head)

    def transcribe(
        self,
        data: bytes | np.ndarray | PartialUpload,
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
        if isinstance(data, bytes) or (isinstance(data, PartialUpload) and instruction is not None):
            data = self.decode(data if isinstance(data, bytes) else data.data, cancel)
        whole: list[np.ndarray] = []  # the upload's samples, once all decoded
        more: Iterator[list[AudioChunk]] | None = None
        if isinstance(data, PartialUpload):
            chunks = split_audio(data.head, max_chunk_s=self.settings.chunk_seconds)[:-1]  # the last may go on
            more = self._rest(data.data, chunks[-1], whole, cancel)
        else:
            whole.append(data)
            chunks = split_audio(data, max_chunk_s=self.settings.chunk_seconds)
        self.engine.load()
        sampling = Sampling(temperature=temperature, seed=seed)
        outputs = self.engine.stream_text(
            on_delta,
            lambda on_token, on_rows: self._generate(
                chunks, more, max_tokens_per_chunk, language, sampling, instruction, on_token, on_rows, cancel
            ),
            language=language,
        )
        return self._result(whole[0], chunks, outputs, language, temperature)

    def _rest(
        self, data: bytes, last: AudioChunk, whole: list[np.ndarray], cancel: threading.Event | None
    ) -> Iterator[list[AudioChunk]]:
        """Decode the whole upload and yield the chunks after `last` (offsets in the whole); `whole` gets the
        samples. The decoding stops when the request is cancelled (the client went away)."""
        samples = self.decode(data, cancel)
        whole.append(samples)
        end = last.start + last.samples.shape[0]
        if samples.shape[0] > end:
            rest = split_audio(samples[end:], max_chunk_s=self.settings.chunk_seconds)
            yield [AudioChunk(c.samples, c.start + end) for c in rest]

    def _generate(
        self,
        chunks: list[AudioChunk],
        more: Iterator[list[AudioChunk]] | None,
        max_tokens_per_chunk: int | None,
        language: str | None,
        sampling: Sampling,
        instruction: str | None,
        on_token: TokenCallback | None,
        on_rows: RowsCallback | None,
        cancel: threading.Event | None,
    ) -> list[ChunkOutput]:
        """Generate every chunk's text; the chunks `more` yields are appended to `chunks` as they come."""
        if instruction is None:
            return self.engine.transcribe(
                [c.samples for c in chunks],
                language=language,
                sampling=sampling,
                max_tokens=max_tokens_per_chunk,
                on_token=on_token,
                cancel=cancel,
                more=None if more is None else self._samples_of(more, chunks),
                on_rows=on_rows,
            )
        assert more is None, "a chat prompt per chunk starts once the whole upload is decoded"
        caps = [self.engine.token_cap(c.duration_s, max_tokens_per_chunk) for c in chunks]
        conversations = [
            [{"role": "user", "content": [audio_part(c.samples), {"type": "text", "text": instruction}]}]
            for c in chunks
        ]
        return self.engine.chat(
            conversations, caps=caps, sampling=sampling, on_token=on_token, cancel=cancel, on_rows=on_rows
        )

    @staticmethod
    def _samples_of(more: Iterator[list[AudioChunk]], chunks: list[AudioChunk]) -> Iterator[Sequence[np.ndarray]]:
        for part in more:
            chunks.extend(part)
            yield [c.samples for c in part]

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
                logprobs=out.logprobs,
                avg_logprob=out.avg_logprob,
                compression_ratio=compression_ratio(out.text),
                no_speech_prob=out.no_speech_prob,
                truncated=out.hit_cap,
            )
            for i, (chunk, out) in enumerate(zip(chunks, outputs, strict=True))
        ]
        return TranscriptionResult(
            text=join_texts((s.text for s in segments), language),
            duration=round(duration_seconds(samples), 3),
            language=language,
            temperature=temperature,
            segments=segments,
            prompt_tokens=sum(out.prompt_tokens for out in outputs),
            audio_tokens=sum(out.audio_tokens for out in outputs),
            completion_tokens=sum(len(out.token_ids) for out in outputs),
        )
