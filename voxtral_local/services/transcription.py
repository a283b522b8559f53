"""Transcription of a whole upload: decode, cut into chunks, transcribe the chunks as a batch, join.

The service owns text: it hands the backend (taken from the model registry for the request's model, checked
to be on disk before any audio is decoded, and held while it works) its token and row callbacks, which
`OrderedText` turns into streamed text and `ChunkProgress` into progress, and joins the chunks' texts into
the transcript.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field, replace

import numpy as np

from ..audio.chunking import AudioChunk, split_audio
from ..audio.decode import decode_audio, decode_head, duration_seconds
from ..backends.base import ChunkOutput, ModelBackend, Sampling, audio_part
from ..config import Settings
from ..models.registry import ModelRegistry
from .holds import ModelHold, check_available, model_id_of
from .joining import join_texts
from .progress import ChunkProgress, ProgressCallback, fan_out, fan_out_rows
from .request_log import log_failure, log_request
from .streaming import OrderedText, token_pieces

DeltaCallback = Callable[[str], None]
TRANSLATE_INSTRUCTION = "Translate this audio into English. Reply with the English translation only."


@dataclass(frozen=True)
class Segment:
    """One chunk's transcript with its place in the original audio."""

    id: int
    start: float
    end: float
    text: str
    tokens: list[int]  # the backend's ids: vocabulary ids, or a text backend's pseudo-ids (`vocabulary_tokens`)
    logprobs: list[float]  # of each of `tokens`
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    truncated: bool
    vocabulary_tokens: bool = True  # `tokens` are the model's vocabulary ids (shown to clients in verbose_json)


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
    pieces: Mapping[int, bytes] = field(default_factory=dict)  # each token's bytes, when logprobs were asked

    @property
    def truncated_segments(self) -> list[int]:
        """Ids of segments whose generation stopped at the token cap."""
        return [segment.id for segment in self.segments if segment.truncated]


@dataclass(frozen=True)
class PartialUpload:
    """An upload of which only the first seconds are decoded yet (`TranscriptionService.decode_start`)."""

    data: bytes
    head: np.ndarray


@dataclass(frozen=True, eq=False)
class TranscriptionRequest:
    """One transcription (or translation) to run.

    `model`: a served model's id or alias. `audio`: upload bytes, decoded samples (float32 mono 16 kHz,
    shape (n,)), or an upload whose head alone is decoded (`decode_start`). `language`: ISO 639-1 or None to
    detect. `max_tokens_per_chunk`: a cap below each chunk's own. `logprobs`: put the tokens' bytes into the
    result and the deltas (`pieces`). `on_delta`: the text as it is produced (`TextDelta`s). `on_progress`:
    seconds of audio done and in all (None until the whole upload is decoded), as chunks finish. `cancel`:
    set it to stop (GenerationCancelledError). `hold` and `started` are set by `TranscriptionService.prepare`:
    the request's model, loaded and held until the work ends, and when the request began (time.monotonic()),
    from which its logged wall time counts."""

    model: str
    audio: bytes | np.ndarray | PartialUpload
    language: str | None = None
    temperature: float = 0.0
    seed: int | None = None
    max_tokens_per_chunk: int | None = None
    logprobs: bool = False
    on_delta: DeltaCallback | None = None
    on_progress: ProgressCallback | None = None
    cancel: threading.Event | None = None
    hold: ModelHold | None = None
    started: float | None = None

    def close(self) -> None:
        """Let the hold from `prepare` go unless the work has begun (it lets it go at its end); idempotent."""
        if self.hold is not None:
            self.hold.close()


class ChunkedAudio:
    """An upload cut into chunks: all at once for decoded samples; for a `PartialUpload`, the head's chunks
    but its last (which may go on) first, and the others once `rest` has decoded the whole upload."""

    def __init__(self, audio: np.ndarray | PartialUpload, chunk_seconds: float, decode: Callable[[bytes], np.ndarray]):
        self.chunk_seconds = chunk_seconds
        self._decode = decode
        self.samples: np.ndarray | None = None  # the whole upload's, once decoded
        self._pending: bytes | None = None
        if isinstance(audio, PartialUpload):
            self.chunks = split_audio(audio.head, max_chunk_s=chunk_seconds)[:-1]
            self._pending = audio.data
        else:
            self.samples = audio
            self.chunks = split_audio(audio, max_chunk_s=chunk_seconds)

    @property
    def duration(self) -> float | None:
        """Seconds of the whole upload; None until it is decoded."""
        return None if self.samples is None else duration_seconds(self.samples)

    def rest(self) -> Iterator[list[np.ndarray]] | None:
        """The chunks after the head's, as one part once the whole upload is decoded (they are added to
        `chunks` first); None when every chunk is known already."""
        return None if self._pending is None else self._decode_rest(self._pending)

    def _decode_rest(self, data: bytes) -> Iterator[list[np.ndarray]]:
        samples = self._decode(data)
        self.samples = samples
        last = self.chunks[-1]
        end = last.start + last.samples.shape[0]
        if samples.shape[0] > end:
            rest = split_audio(samples[end:], max_chunk_s=self.chunk_seconds)
            part = [AudioChunk(c.samples, c.start + end) for c in rest]
            self.chunks.extend(part)
            yield [c.samples for c in part]


def compression_ratio(text: str) -> float:
    """Whisper's repetition signal: text bytes over zlib-compressed bytes."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


class TranscriptionService:
    """Turns audio into a `TranscriptionResult` with the request's model (from the registry).

    `transcribe` gives each chunk Voxtral's official transcription prompt. `translate` and
    `transcribe_with_instruction` (lotti's `audio` extension) give each chunk a chat prompt: the chunk's
    audio, then the instruction. Either way all chunks of the request are decoded together. Every method is
    blocking (run it in a worker thread) and raises ModelNotFoundError, ModelNotDownloadedError or
    ModelUnavailableError for the model, InvalidRequestError/AudioTooLongError for the audio, and
    GenerationCancelledError once `cancel` is set.
    """

    def __init__(self, settings: Settings, models: ModelRegistry) -> None:
        self.settings = settings
        self.models = models

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

    def prepare(self, request: TranscriptionRequest) -> TranscriptionRequest:
        """Before a streamed `transcribe` starts, so that a failure is an error status: check the model is on
        disk, decode the upload's head (`decode_start`), then load and hold the model, and check that its backend
        serves the request (`check_transcription`: no logprobs on vLLM). Returns the request
        with its audio decoded that far, the hold (let go when `transcribe` ends; `hold.close()` if it is
        never called) and its start time. Raises as `transcribe` does (logged as one line), holding nothing."""
        started = time.monotonic()
        try:
            check_available(self.models, request.model)
            audio = request.audio
            if isinstance(audio, bytes):
                audio = self.decode_start(audio, request.cancel)
            sampling = Sampling(logprobs=request.logprobs)
            hold = ModelHold.acquire(self.models, request.model, lambda backend: backend.check_transcription(sampling))
        except BaseException as exc:
            wall = time.monotonic() - started
            log_failure("transcription", model_id_of(self.models, request.model), exc, wall_seconds=wall)
            raise
        return replace(request, audio=audio, hold=hold, started=started)

    def transcribe(self, request: TranscriptionRequest) -> TranscriptionResult:
        """The transcript, with the official transcription prompt per chunk; logged as one line (a failure
        too, with its code). The model is checked before any audio is decoded; an upload given as bytes has
        its head decoded first and the rest while the first chunk is transcribed."""
        return self._logged("transcription", request, None)

    def translate(self, request: TranscriptionRequest) -> TranscriptionResult:
        """The English translation (`request.language` is not used); logged as one line (a failure too), its
        wall time including the decoding."""
        return self._logged("translation", request, TRANSLATE_INSTRUCTION)

    def transcribe_with_instruction(self, request: TranscriptionRequest, instruction: str) -> TranscriptionResult:
        """Each chunk answered with a chat prompt: its audio, then `instruction` (the caller logs it; with no
        `hold`, the model is checked before any audio is decoded)."""
        return self._run(request, instruction)

    def _logged(self, kind: str, request: TranscriptionRequest, instruction: str | None) -> TranscriptionResult:
        started = time.monotonic() if request.started is None else request.started
        try:
            result = self._run(request, instruction)
        except BaseException as exc:
            log_failure(kind, model_id_of(self.models, request.model), exc, wall_seconds=time.monotonic() - started)
            raise
        log_request(
            kind,
            self.models.resolve(request.model).id,
            audio_seconds=result.duration,
            chunks=len(result.segments),
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            wall_seconds=time.monotonic() - started,
        )
        return result

    def _run(self, request: TranscriptionRequest, instruction: str | None) -> TranscriptionResult:
        with ExitStack() as stack:
            # A hold from `prepare` is let go when this ends, whatever happens; without one, the model is
            # checked before the audio is decoded and loaded after (a bad upload loads nothing).
            held = None if request.hold is None else stack.enter_context(request.hold.work())
            if held is None:
                check_available(self.models, request.model)
            upload = self._chunked(request, instruction)
            backend = held if held is not None else stack.enter_context(self.models.use(request.model))
            return self._work(backend, upload, request, instruction)
        raise AssertionError("unreachable")  # mypy: ExitStack may swallow exceptions

    def _chunked(self, request: TranscriptionRequest, instruction: str | None) -> ChunkedAudio:
        """The request's audio cut into chunks; bytes are decoded here (for a plain transcription only the
        head, the rest while the first chunk is transcribed)."""
        audio, cancel = request.audio, request.cancel
        if isinstance(audio, bytes) and instruction is None:
            audio = self.decode_start(audio, cancel)
        elif isinstance(audio, bytes) or (isinstance(audio, PartialUpload) and instruction is not None):
            audio = self.decode(audio if isinstance(audio, bytes) else audio.data, cancel)
        return ChunkedAudio(audio, self.settings.chunk_seconds, lambda data: self.decode(data, cancel))

    def _work(
        self, backend: ModelBackend, upload: ChunkedAudio, request: TranscriptionRequest, instruction: str | None
    ) -> TranscriptionResult:
        language = None if instruction == TRANSLATE_INSTRUCTION else request.language
        text = None
        if request.on_delta is not None:
            token_bytes = backend.token_bytes if request.logprobs else None
            text = OrderedText(
                backend.decode,
                eos_token_id=backend.eos_token_id,
                caps=(),
                language=language,
                token_bytes=token_bytes,
            )
        progress = None
        if request.on_progress is not None:
            progress = ChunkProgress(
                request.on_progress,
                eos_token_id=backend.eos_token_id,
                duration=lambda i: upload.chunks[i].duration_s,
                total=lambda: upload.duration,
            )
        outputs = self._generate(backend, upload, request, language, instruction, text, progress)
        if text is not None and request.on_delta is not None:
            for delta in text.finish([out.text for out in outputs]):
                request.on_delta(delta)
        if progress is not None:
            progress.finish()
        pieces = {}
        if request.logprobs:
            ids = [token for out in outputs for token in out.token_ids]
            pieces = token_pieces(backend.token_bytes, ids, ())
        assert upload.samples is not None  # decoded whole, or the job would have failed
        return self._result(upload, outputs, language, request.temperature, pieces)

    def _generate(
        self,
        backend: ModelBackend,
        upload: ChunkedAudio,
        request: TranscriptionRequest,
        language: str | None,
        instruction: str | None,
        text: OrderedText | None,
        progress: ChunkProgress | None,
    ) -> list[ChunkOutput]:
        """Every chunk's output; the chunks `upload.rest()` yields join the job as they come."""
        sampling = Sampling(temperature=request.temperature, seed=request.seed, logprobs=request.logprobs)
        on_token = fan_out(
            None if text is None or request.on_delta is None else text.forward_to(request.on_delta),
            None if progress is None else progress.on_token,
        )
        on_rows = fan_out_rows(None if text is None else text.add_rows, None if progress is None else progress.add_rows)
        chunks = upload.chunks
        if instruction is None:
            backend.check_transcription(sampling)
            return backend.transcribe(
                [c.samples for c in chunks],
                language=language,
                sampling=sampling,
                max_tokens=request.max_tokens_per_chunk,
                on_token=on_token,
                on_rows=on_rows,
                cancel=request.cancel,
                more=upload.rest(),
            )
        caps = [backend.token_cap(c.duration_s, request.max_tokens_per_chunk) for c in chunks]
        conversations = [
            [{"role": "user", "content": [audio_part(c.samples), {"type": "text", "text": instruction}]}]
            for c in chunks
        ]
        return backend.chat(
            conversations, caps=caps, sampling=sampling, on_token=on_token, on_rows=on_rows, cancel=request.cancel
        )

    @staticmethod
    def _result(
        upload: ChunkedAudio,
        outputs: list[ChunkOutput],
        language: str | None,
        temperature: float,
        pieces: Mapping[int, bytes],
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
                vocabulary_tokens=out.completion_tokens is None,
            )
            for i, (chunk, out) in enumerate(zip(upload.chunks, outputs, strict=True))
        ]
        return TranscriptionResult(
            text=join_texts((s.text for s in segments), language),
            duration=round(upload.duration or 0.0, 3),
            language=language,
            temperature=temperature,
            segments=segments,
            prompt_tokens=sum(out.prompt_tokens for out in outputs),
            audio_tokens=sum(out.audio_tokens for out in outputs),
            completion_tokens=sum(out.generated_tokens for out in outputs),
            pieces=pieces,
        )
