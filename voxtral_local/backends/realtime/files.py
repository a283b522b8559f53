"""The file endpoints on a realtime model: each chunk of an upload is a stream fed whole and finished at once
(so it decodes as fast as the steps go, not at the pace of speech), all chunks rows of the same engine."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np

from ...errors import GenerationCancelledError
from ..base import ChunkOutput, RowsCallback, Sampling, TokenCallback
from .engine import Engine
from .streams import Stream

POLL_S = 0.05  # how often a waiting request looks at its cancel event


class FileJob:
    """One `transcribe` call's streams; `wait` gives their outputs in chunk order."""

    def __init__(
        self,
        engine: Engine,
        decode: Callable[[list[int]], str],
        sampling: Sampling,
        max_tokens: int | None,
        on_token: TokenCallback | None,
        cancel: threading.Event | None,
    ) -> None:
        self.engine, self.decode, self.sampling = engine, decode, sampling
        self.max_tokens, self.on_token, self.cancel = max_tokens, on_token, cancel
        self.streams: list[Stream] = []
        self.outputs: list[ChunkOutput | None] = []
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.remaining = 0
        self.all_done = threading.Event()
        self.all_done.set()

    @property
    def finished(self) -> bool:
        """Whether the job already failed (or was cancelled): adding more is wasted work."""
        return self.error is not None

    def add(self, chunks: Sequence[np.ndarray], on_rows: RowsCallback | None) -> None:
        """Start decoding further chunks (float32 mono 16 kHz); `on_rows` is told their token caps first."""
        layout = self.engine.layout
        natural = [layout.generated_tokens(int(np.asarray(c).size)) for c in chunks]
        caps = [n + 1 for n in natural]  # its tokens and the end-of-sequence that ends the row
        if self.max_tokens is not None:
            caps = [min(cap, self.max_tokens) for cap in caps]
        if on_rows is not None:
            on_rows(caps)
        for chunk, cap, count in zip(chunks, caps, natural, strict=True):
            stream = Stream(
                self.engine,
                on_token=self._token,
                on_done=self._done,
                cap=cap if cap <= count else None,
                temperature=self.sampling.temperature,
                seed=None if self.sampling.seed is None else self.sampling.seed + len(self.streams),
            )
            stream.index = len(self.streams)
            stream.feed(chunk)
            stream.finish()
            with self.lock:
                self.streams.append(stream)
                self.outputs.append(None)
                self.remaining += 1
                self.all_done.clear()
            self.engine.add(stream)

    def fail(self, error: BaseException) -> None:
        """End the job with `error` (its streams are cancelled)."""
        with self.lock:
            if self.error is None:
                self.error = error
            streams = list(self.streams)
        for stream in streams:
            stream.cancel()

    def wait(self) -> list[ChunkOutput]:
        """Every chunk's output in order; raises the job's error (GenerationCancelledError once `cancel` is set)."""
        while not self.all_done.wait(POLL_S):
            if self.cancel is not None and self.cancel.is_set():
                self.fail(GenerationCancelledError("The request was cancelled."))
        if self.cancel is not None and self.cancel.is_set() and self.error is None:
            self.error = GenerationCancelledError("The request was cancelled.")
        if self.error is not None:
            raise self.error
        outputs = [out for out in self.outputs if out is not None]
        assert len(outputs) == len(self.outputs)
        return outputs

    def _token(self, stream: Stream, token: int, logprob: float) -> None:
        if self.on_token is not None and self.error is None:
            self.on_token(stream.index, token, logprob, ())

    def _done(self, stream: Stream, output: ChunkOutput | None, error: BaseException | None) -> None:
        index = stream.index
        if output is not None and self.error is None:
            try:
                output = stream.output(self.decode(stream.tokens).strip())
                if stream.stopped is None and self.on_token is not None:
                    self.on_token(index, self.engine.eos_token_id, 0.0, ())  # the row's end, as a scheduler's
            except Exception as exc:  # an undecodable output, or a callback failure, ends the job
                error, output = exc, None
        if error is not None:
            self.fail(error)
        with self.lock:
            self.outputs[index] = output
            self.remaining -= 1
            if self.remaining == 0:
                self.all_done.set()
