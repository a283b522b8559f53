"""A stream being decoded by the realtime engine: its audio, its position, its tokens and whom it tells.

`Stream` is the engine's state for one row; `LiveStreamHandle` is the `LiveStream` a caller gets for a live one
(`/v1/realtime`), and the file endpoints' chunks are streams too (fed whole and finished at once, telling a
`FileJob`). Audio is kept only from the next step's window on, so a stream's memory does not grow with its
length; its token ids (a few bytes per 80 ms) are kept for its output.
"""

from __future__ import annotations

import codecs
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ...errors import GenerationCancelledError
from ..base import ChunkOutput, FinishReason
from ..live import LiveListener
from .layout import StreamLayout

if TYPE_CHECKING:
    from .engine import Engine

TokenSink = Callable[["Stream", int, float], None]  # told each generated token with its logprob
DoneSink = Callable[["Stream", ChunkOutput | None, BaseException | None], None]


class Stream:
    """One row's state (see the module docstring). `feed`/`finish`/`cancel` take the engine's lock; the rest
    runs on the decode thread."""

    def __init__(
        self,
        engine: Engine,
        *,
        on_token: TokenSink,
        on_done: DoneSink,
        cap: int | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
        live: bool = False,
    ) -> None:
        self.engine = engine
        self.live = live  # a live stream takes a free row before waiting file chunks
        layout: StreamLayout = engine.layout
        self.layout = layout
        self.on_token, self.on_done = on_token, on_done
        self.cap, self.temperature = cap, temperature
        self.generator = None
        if temperature > 0 and seed is not None:
            import torch

            self.generator = torch.Generator().manual_seed(seed)
        self.buffer = np.zeros(layout.audio_start, dtype=np.float32)  # padded audio from `base` on
        self.base = 0
        self.incoming: list[np.ndarray] = []
        self.end = layout.audio_start  # padded samples fed
        self.samples = 0  # the stream's own samples fed
        self.step = 0  # steps done
        self.total: int | None = None  # steps to do, once finished
        self.row: int | None = None
        self.index = 0  # the chunk's index in a file job
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.stopped: FinishReason | None = None  # end-of-sequence or the cap ended its decoding
        self.cancelled = False
        self.closed = False  # told `on_done`
        # (first padded sample, end, when it is due): fed pieces not fully read yet, each due at real-time pace
        # from when it arrived or when the previous piece was due to end, whichever is later (see `behind_s`)
        self.due: deque[tuple[int, int, float]] = deque()
        self.due_end = 0.0  # when the last fed piece is due to end

    # -- callers' side (under the engine's lock) --

    def feed(self, samples: np.ndarray) -> None:
        """Append float32 mono 16 kHz samples; ValueError after `finish` or `cancel`. Once the model ended the
        stream early (end-of-sequence, or the cap), the samples are counted but not kept: nothing decodes them."""
        audio = np.asarray(samples, dtype=np.float32).reshape(-1)
        now = time.monotonic()
        with self.engine.cond:
            if self.total is not None or self.cancelled:
                raise ValueError("this stream is finished or cancelled")
            if not audio.size:
                return
            self.samples += audio.size
            if self.stopped is not None:
                return
            start = self.end
            self.end += audio.size
            self.incoming.append(audio)
            when = max(now, self.due_end)
            self.due_end = when + audio.size / self.layout.sample_rate
            self.due.append((start, self.end, when))
            self.engine.cond.notify_all()

    def finish(self) -> None:
        """No more audio: the right padding follows, then `on_done`."""
        with self.engine.cond:
            if self.total is None and not self.cancelled:
                self.total = self.layout.total_steps(self.samples)
                self.engine.cond.notify_all()

    def cancel(self) -> None:
        """Stop now (idempotent); `on_done` is told a GenerationCancelledError."""
        with self.engine.cond:
            self.cancelled = True
            self.engine.cond.notify_all()

    def _read_end(self) -> int:
        """Padded samples the steps so far have read (the next step's first new samples start here)."""
        layout = self.layout
        return max(layout.ready_end(self.step) - layout.step_samples, layout.audio_start)

    @property
    def pending_s(self) -> float:
        """Seconds of fed audio no step has read yet; 0 once the model ended the stream early."""
        if self.stopped is not None:
            return 0.0
        return max(0, self.end - self._read_end()) / self.layout.sample_rate

    def behind_s(self, now: float) -> float:
        """Wall seconds (at `now`, `time.monotonic()`) by which the decoding lags the fed audio: how long ago
        the oldest unread sample was due, each piece being due at real-time pace from its arrival (or from the
        previous piece's due end, if later). 0 when every fed sample was read, or the stream stopped early.
        A client that sends audio ahead of real time is so not counted as lag; an engine slower than real
        time is. Called on the decode thread."""
        if self.stopped is not None:
            return 0.0
        read = self._read_end()
        due = self.due
        while due and due[0][1] <= read:
            due.popleft()
        if not due:
            return 0.0
        start, _, when = due[0]
        return max(0.0, now - (when + max(0, read - start) / self.layout.sample_rate))

    # -- the decode thread's side --

    @property
    def done(self) -> bool:
        """Nothing is left to decode (the stream may still wait for `finish`)."""
        return self.stopped is not None or (self.total is not None and self.step >= self.total)

    def ready(self) -> bool:
        """Whether its next step's audio is there (under the engine's lock)."""
        if self.cancelled or self.done:
            return False
        return self.total is not None or self.end >= self.layout.ready_end(self.step)

    def take_window(self) -> tuple[int, np.ndarray]:
        """The next step's input token and padded-audio window (under the engine's lock)."""
        layout = self.layout
        if self.incoming:
            self.buffer = np.concatenate([self.buffer, *self.incoming])
            self.incoming = []
        start = layout.step_samples * self.step - self.base
        window = self.buffer[start : start + layout.window]
        if window.size < layout.window:
            window = np.pad(window, (0, layout.window - window.size))
        prompt = layout.prompt
        token = prompt[self.step] if self.step < len(prompt) else self.tokens[-1]
        return token, window

    def stepped(self, token: int, logprob: float) -> None:
        """The step chose `token` (meaningful from the prompt's last position on); drop audio no later step reads."""
        layout = self.layout
        generated = self.step >= len(layout.prompt) - 1
        self.step += 1
        drop = layout.step_samples * self.step - self.base
        if drop > 0:
            self.buffer = self.buffer[drop:]
            self.base += drop
        if not generated:
            return
        if token == self.engine.eos_token_id:
            self.stopped = "stop"
        else:
            self.tokens.append(token)
            self.logprobs.append(logprob)
            if self.cap is not None and len(self.tokens) >= self.cap:
                self.stopped = "length"
        if self.stopped is not None:  # no later step reads audio: let it go, and keep none fed from now on
            with self.engine.cond:
                self.incoming, self.buffer = [], self.buffer[:0]
                self.due.clear()
        self.on_token(self, token, logprob)

    def audio_read_s(self) -> float:
        """Seconds of the stream's own audio the steps so far have read."""
        layout = self.layout
        read = layout.ready_end(self.step - 1) - layout.audio_start if self.step else 0
        return min(max(read, 0), self.samples) / layout.sample_rate

    def output(self, text: str) -> ChunkOutput:
        """The stream's output with its text."""
        return ChunkOutput(
            text=text,
            token_ids=list(self.tokens),
            logprobs=list(self.logprobs),
            top=[() for _ in self.tokens],
            avg_logprob=float(np.mean(self.logprobs)) if self.logprobs else 0.0,
            no_speech_prob=0.0,
            finish_reason=self.stopped or "stop",
            prompt_tokens=len(self.layout.prompt) + self.step,  # the prefix's text tokens and the audio tokens fed
            audio_tokens=self.step,
        )


class LiveText:
    """A live stream's text as it grows: each token's bytes through an incremental UTF-8 decoder, leading
    whitespace dropped and trailing whitespace held back, so that the deltas joined are the stripped text."""

    def __init__(self, token_bytes: Callable[[int], bytes]) -> None:
        self.token_bytes = token_bytes
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.held = ""
        self.sent: list[str] = []

    def push(self, token: int) -> str:
        """The token's new visible text ("" when none)."""
        text = self.held + self.decoder.decode(self.token_bytes(token))
        if not self.sent:
            text = text.lstrip()
        body = text.rstrip()
        self.held = text[len(body) :]
        if body:
            self.sent.append(body)
        return body

    @property
    def text(self) -> str:
        """Everything sent so far."""
        return "".join(self.sent)


class LiveStreamHandle:
    """The `LiveStream` of one live utterance: a `Stream` telling a `LiveListener` (on the decode thread)."""

    def __init__(self, engine: Engine, listener: LiveListener, token_bytes: Callable[[int], bytes], lag_s: float):
        self.listener, self.lag_s = listener, lag_s
        self.text = LiveText(token_bytes)
        self.behind = False
        self._lock = threading.Lock()
        self.stream = Stream(engine, on_token=self._token, on_done=self._done, live=True)

    def feed(self, samples: np.ndarray) -> None:
        """Append float32 mono 16 kHz samples, shape (n,); ValueError after `finish` or `cancel`."""
        self.stream.feed(samples)

    def finish(self) -> None:
        """No more audio: what is left is decoded (with the right padding), then `on_done`."""
        self.stream.finish()

    def cancel(self) -> None:
        """Stop now; `on_done` is told a GenerationCancelledError. Idempotent."""
        self.stream.cancel()

    @property
    def pending_s(self) -> float:
        """Seconds of fed audio not decoded yet."""
        return self.stream.pending_s

    def check_behind(self) -> None:
        """Tell the listener when the decoding lags the audio by more than the lag (`Stream.behind_s`; once,
        until it is back under half of it)."""
        lag = self.stream.behind_s(time.monotonic())
        if not self.behind and lag > self.lag_s:
            self.behind = True
            self.listener.on_behind(lag)
        elif self.behind and lag <= self.lag_s / 2:
            self.behind = False

    def _token(self, stream: Stream, token: int, logprob: float) -> None:
        if stream.stopped == "stop" and token == stream.engine.eos_token_id:
            return
        delta = self.text.push(token)
        if delta:
            self.listener.on_delta(delta, stream.audio_read_s())

    def _done(self, stream: Stream, output: ChunkOutput | None, error: BaseException | None) -> None:
        if output is not None:
            output = stream.output(self.text.text)
        self.listener.on_done(output, error)


def cancelled_error() -> GenerationCancelledError:
    """The error a cancelled stream ends with."""
    return GenerationCancelledError("The stream was cancelled.")
