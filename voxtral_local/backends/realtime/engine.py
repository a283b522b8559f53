"""The realtime backend's one decode thread: each step decodes every row-holding stream whose next audio is
there, in one batched forward (`Stepper.step`).

At most `max_rows` streams hold a cache row at once. A stream takes a row on its first step and keeps it until it
ends (or the model ended it early); streams that wait for one take rows as they free up, live streams before file
chunks (so live sessions stay real time while an upload runs), file chunks in the order they came. When no stream
is open the caches are dropped, so memory goes back down after a burst. Listener callbacks run on this thread;
one that raises is logged and does not stop the others.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
import torch

from ...errors import ModelUnavailableError
from .layout import StreamLayout
from .stepper import Stepper
from .streams import Stream, cancelled_error

logger = logging.getLogger(__name__)


class Engine:
    """Owns the stepper and the open streams; `start` runs the decode thread until `close`."""

    def __init__(self, stepper: Stepper, layout: StreamLayout, *, eos_token_id: int, max_rows: int) -> None:
        self.stepper, self.layout = stepper, layout
        self.eos_token_id, self.max_rows = eos_token_id, max_rows
        self.cond = threading.Condition()
        self.streams: list[Stream] = []
        self.free_rows: list[int] = []
        self.rows = 0  # rows the caches hold
        self.steps = 0  # forwards run
        self.closed = False
        self.watchers: list[Any] = []  # live handles checked for falling behind after each step
        self.thread = threading.Thread(target=self._run, name="voxtral-realtime", daemon=True)

    def start(self) -> None:
        """Start the decode thread."""
        self.thread.start()

    def close(self) -> None:
        """Stop after the current step; open streams end with a ModelUnavailableError."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def join(self, timeout: float) -> bool:
        """Whether the thread ended within `timeout` seconds."""
        if self.thread.is_alive():
            self.thread.join(timeout)
        return not self.thread.is_alive()

    @property
    def busy(self) -> bool:
        """Whether any stream is open."""
        return bool(self.streams)

    def add(self, stream: Stream, watcher: Any = None) -> None:
        """Start decoding `stream` (and check `watcher.check_behind()` after each of its steps)."""
        with self.cond:
            if self.closed:
                raise RuntimeError("the realtime engine is closed")
            self.streams.append(stream)
            if watcher is not None:
                self.watchers.append(watcher)
            self.cond.notify_all()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.closed and not self._work():
                    self.cond.wait()
                if self.closed:
                    abandoned, self.streams, self.watchers = self.streams, [], []
                    break
                ending = [s for s in self.streams if s.cancelled or (s.done and s.total is not None)]
                for stream in ending:
                    self._remove(stream)
                for stream in self.streams:
                    if stream.done and stream.row is not None:  # ended early: it waits for `finish` without a row
                        self._release(stream)
                batch = self._batch()
                self._assign_rows(batch)
                rows = self.rows
                inputs = [s.take_window() for s in batch]
            for stream in ending:
                self._tell_done(stream, None if stream.cancelled else stream.output(""), stream.cancelled)
            if batch:
                self._step(batch, inputs, rows)
        for stream in abandoned:  # the model is being unloaded or the process exits
            self._tell_done(stream, None, False, ModelUnavailableError("The model was unloaded while this stream ran."))

    def _work(self) -> bool:
        ending = any(s.cancelled or (s.done and (s.total is not None or s.row is not None)) for s in self.streams)
        return ending or bool(self._batch())

    def _batch(self) -> list[Stream]:
        """The next step's streams (under the lock): the ready row holders, then ready waiting streams as rows
        are free (live ones first, then in the order they came)."""
        holders = [s for s in self.streams if s.row is not None]
        free = self.max_rows - len(holders)
        batch = [s for s in holders if s.ready()]
        if free > 0:
            waiting = [s for s in self.streams if s.row is None and s.ready()]
            waiting.sort(key=lambda s: not s.live)  # stable: file chunks stay in order
            batch += waiting[:free]
        return batch

    def _remove(self, stream: Stream) -> None:
        """Take `stream` off (under the lock) and give back its row."""
        self.streams.remove(stream)
        self.watchers = [w for w in self.watchers if w.stream is not stream]
        self._release(stream)
        if not self.streams:
            self.stepper.reset()
            self.free_rows, self.rows = [], 0

    def _release(self, stream: Stream) -> None:
        """Give back `stream`'s row, if it holds one (under the lock)."""
        if stream.row is not None:
            self.stepper.clear(stream.row)
            self.free_rows.append(stream.row)
            stream.row = None

    def _assign_rows(self, batch: list[Stream]) -> None:
        """Give the streams of `batch` without a row one (under the lock; the row count grows, doubling, up to
        `max_rows`: the buffers are grown by `_step`, outside the lock)."""
        for stream in batch:
            if stream.row is None:
                if not self.free_rows:
                    grown = min(self.max_rows, max(4, 2 * self.rows))
                    self.free_rows.extend(range(self.rows, grown))
                    self.rows = grown
                self.free_rows.sort(reverse=True)
                stream.row = self.free_rows.pop()

    def _step(self, batch: list[Stream], inputs: list[tuple[int, np.ndarray]], rows_needed: int) -> None:
        self.steps += 1
        streams = batch
        try:
            self.stepper.allocate(rows_needed)
            order = sorted(range(len(batch)), key=lambda i: batch[i].row or 0)
            streams = [batch[i] for i in order]
            rows = [s.row for s in streams]
            assert all(r is not None for r in rows)
            logits = self.stepper.step(
                [int(r) for r in rows if r is not None],
                [s.step for s in streams],
                [inputs[i][0] for i in order],
                np.stack([inputs[i][1] for i in order]),
            )
            tokens, logprobs = choose(logits, streams)
        except Exception as exc:  # a failed forward ends the streams it carried, with the error
            logger.exception("a realtime decoding step failed")
            with self.cond:
                for stream in batch:
                    if stream in self.streams:
                        self._remove(stream)
            for stream in batch:
                self._tell_done(stream, None, False, exc)
            return
        for stream, token, logprob in zip(streams, tokens, logprobs, strict=True):
            try:
                stream.stepped(token, logprob)
            except Exception:  # a listener that raises must not stop the others
                logger.exception("a realtime stream's token callback failed")
        with self.cond:
            watchers = list(self.watchers)
        for watcher in watchers:
            try:
                watcher.check_behind()
            except Exception:
                logger.exception("a realtime stream's behind callback failed")

    def _tell_done(self, stream: Stream, output: Any, cancelled: bool, error: BaseException | None = None) -> None:
        if stream.closed:
            return
        stream.closed = True
        if cancelled:
            error = cancelled_error()
        try:
            stream.on_done(stream, None if error is not None else output, error)
        except Exception:
            logger.exception("a realtime stream's done callback failed")


def choose(logits: torch.Tensor, streams: list[Stream]) -> tuple[list[int], list[float]]:
    """Each row's next token (greedy, or sampled at the stream's temperature) and its logprob."""
    logprobs = torch.log_softmax(logits, dim=-1)
    tokens = logits.argmax(dim=-1)
    for b, stream in enumerate(streams):
        if stream.temperature > 0:
            probs = torch.softmax(logits[b] / stream.temperature, dim=-1).cpu()
            tokens[b] = int(torch.multinomial(probs, 1, generator=stream.generator))
    chosen = logprobs.gather(1, tokens[:, None])[:, 0]
    return [int(t) for t in tokens.tolist()], [float(p) for p in chosen.tolist()]
