"""Live transcription: a backend that takes audio as it arrives (`LiveBackend`), for `/v1/realtime`.

A realtime model (Voxtral-Mini-4B-Realtime-2602, `backends.realtime`) transcribes a stream: audio is fed in
pieces, its encoder's convolution padding cache and the decoder's KV cache are kept between pieces, and text
comes out a fixed delay behind the audio. One `LiveStream` is one utterance's stream (one conversation item of
the realtime API); the backend decodes the steps of all its open streams together, one row each.

A standard Voxtral model (Mini-3B, Small-24B) is no `LiveBackend`: the realtime service buffers an
utterance's audio and hands it to `ModelBackend.transcribe` when the utterance ends.

Threads: `feed`, `finish` and `cancel` may be called from any thread and never block on decoding. The
listener's methods are called on the backend's decode thread, in order per stream, and must not block (the
realtime service hands them to its event loop with `call_soon_threadsafe`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from .base import ChunkOutput, ModelBackend


class LiveListener(Protocol):
    """What a `LiveStream` tells its owner."""

    def on_delta(self, text: str, audio_end_s: float) -> None:
        """New text of the utterance (the decoded pieces in order; joined they give `on_done`'s text).
        `audio_end_s`: seconds of the stream's audio (from its first sample) the model had read when it produced
        this text; the words in it were spoken up to about `delay_s` before that. `/v1/realtime` reports it as
        the delta's `audio_end_ms`, which the realtime benchmark uses to measure the delay from a word's audio
        to its delta."""
        ...

    def on_behind(self, behind_s: float) -> None:
        """The decoding lags the audio by `behind_s` seconds of wall time, more than VOXTRAL_REALTIME_LAG_S: each
        fed piece is due at real-time pace from its arrival (or from the previous piece's due end, if later),
        and the oldest sample not decoded yet was due `behind_s` ago. So a client that sends audio ahead of
        real time (a whole file at once) is not told; an engine slower than the audio arrives is. Told again
        only after it caught up (under half the lag). Nothing is dropped."""
        ...

    def on_done(self, output: ChunkOutput | None, error: BaseException | None) -> None:
        """The stream ended: after `finish`, with the whole utterance's output (`output.text` equals the
        deltas joined); after `cancel` or a failure, with the error (`GenerationCancelledError` for a cancel)."""
        ...


class LiveStream(Protocol):
    """One utterance being transcribed as its audio arrives."""

    def feed(self, samples: np.ndarray) -> None:
        """Append audio: float32 mono 16 kHz samples, shape (n,). ValueError after `finish` or `cancel`."""
        ...

    def finish(self) -> None:
        """No more audio: decode what is left (the model's delay worth of padding after it), then `on_done`."""
        ...

    def cancel(self) -> None:
        """Stop now; `on_done` is told a `GenerationCancelledError`. Idempotent."""
        ...

    @property
    def pending_s(self) -> float:
        """Seconds of fed audio not decoded yet (what the realtime service throttles its socket on); 0 once the
        model ended the utterance early (end-of-sequence): audio fed after that is not kept."""
        ...


@runtime_checkable
class LiveBackend(ModelBackend, Protocol):
    """A `ModelBackend` that also transcribes a stream as it arrives. Its `transcribe` serves the file
    endpoints by streaming each chunk through the same model, faster than real time."""

    @property
    def delay_s(self) -> float:
        """How far behind the audio its text comes out, in seconds (the model's configured delay)."""
        ...

    def open_stream(self, *, language: str | None, listener: LiveListener) -> LiveStream:
        """Start an utterance (loads the model if needed). `language` may be ignored by a model that cannot be
        told one. Raises ModelUnavailableError when the model cannot be loaded."""
        ...


def is_live(backend: ModelBackend) -> bool:
    """Whether `backend` can transcribe a stream as it arrives (a realtime model)."""
    return isinstance(backend, LiveBackend)
