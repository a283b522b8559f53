"""One utterance (a conversation item) of a realtime session, transcribed on one of two paths.

The model is taken (loaded if need be, and held by a `ModelHold` until the utterance is transcribed) when the
utterance starts, on a worker thread; audio that arrives meanwhile waits in memory. Then:
- a `LiveBackend` (a realtime model) gets a `LiveStream`: the audio is fed as it arrives, the text comes
  back as the stream decodes it, and `finish` ends the stream;
- any other backend (Mini-3B, Small-24B, ...) gets the utterance's audio when it ends, through the
  transcription service (chunked like a file, all chunks decoded as one batch with other requests), its
  text streamed as tokens come.
Listener and token callbacks arrive on backend threads; they are handed to the session's event loop with
`call_soon_threadsafe`, so the `ItemSink` is only ever called on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from ...backends.base import ChunkOutput, ModelBackend
from ...backends.live import LiveBackend, LiveStream
from ...errors import GenerationCancelledError, VoxtralError
from ...models.registry import ModelRegistry
from ..holds import ModelHold
from ..transcription import TranscriptionRequest, TranscriptionService
from .threads import in_thread

logger = logging.getLogger(__name__)

RATE = 16000
Mode = Literal["opening", "live", "batch", "done"]


class ItemSink(Protocol):
    """What an utterance tells its session (always on the session's event loop)."""

    def delta(self, item_id: str, text: str, audio_end_ms: int) -> None: ...

    def completed(self, item_id: str, transcript: str, seconds: float) -> None: ...

    def failed(self, item_id: str, error: VoxtralError) -> None: ...

    def behind(self, item_id: str, behind_s: float) -> None: ...


@dataclass(frozen=True)
class UtteranceModel:
    """How a session's utterances are transcribed: the model name (as the client gave it, or the server's
    choice) and language (ISO 639-1, or None to detect)."""

    models: ModelRegistry
    transcription: TranscriptionService
    name: str
    language: str | None


class Utterance:
    """An utterance's audio and its transcription. `feed` while it lasts, then `finish` (committed) or `cancel`
    (cleared, or the client left). Call its methods on the session's event loop."""

    def __init__(self, item_id: str, model: UtteranceModel, sink: ItemSink) -> None:
        self.item_id = item_id
        self.model = model
        self.sink = sink
        self.mode: Mode = "opening"
        self.samples = 0  # fed so far
        self.finished = False
        self._loop = asyncio.get_running_loop()
        self._waiting: list[np.ndarray] = []  # audio fed before the model was ready (and a batch's audio)
        self._stream: LiveStream | None = None
        self._stack = ExitStack()  # the model's hold, let go when the transcription ends
        self._cancel = threading.Event()
        self._task = self._loop.create_task(self._open())

    @property
    def duration_s(self) -> float:
        """Seconds of audio fed."""
        return self.samples / RATE

    @property
    def pending_s(self) -> float:
        """Seconds of its audio not transcribed yet that the model could work on now (a batch utterance's
        audio counts once it is finished: before that nothing can be done with it)."""
        if self.mode == "opening":
            return self.duration_s
        if self.mode == "live":
            assert self._stream is not None
            return self._stream.pending_s
        if self.mode == "batch":
            return self.duration_s if self.finished else 0.0
        return 0.0

    def feed(self, samples: np.ndarray) -> None:
        """More of its audio (float32 mono 16 kHz, shape (n,))."""
        if self.finished or self.mode == "done":
            return
        self.samples += samples.shape[0]
        if self.mode == "live":
            assert self._stream is not None
            self._stream.feed(samples)
        else:
            self._waiting.append(samples)

    def finish(self) -> None:
        """The utterance ended (committed): transcribe what is left."""
        if self.finished:
            return
        self.finished = True
        if self.mode == "live":
            assert self._stream is not None
            self._stream.finish()
        elif self.mode == "batch":
            self._task = self._loop.create_task(self._transcribe())

    def cancel(self) -> None:
        """Stop and forget it: no further events. Idempotent."""
        self._cancel.set()
        if self._stream is not None:
            self._stream.cancel()  # its `on_done` lets the model go
        elif self.mode == "batch" and not self.finished:
            self._stack.close()  # no transcription was started; an opening one lets go once the model is taken
        self.mode = "done"

    async def _open(self) -> None:
        try:
            backend = await in_thread(self._acquire)
        except asyncio.CancelledError:
            return
        except VoxtralError as exc:
            self._fail(exc)
            return
        except Exception:  # a bug or an out-of-memory error: the item fails, later items go on
            logger.exception("realtime: taking model %s failed", self.model.name)
            self._fail(VoxtralError("The server failed to load the model for this item."))
            return
        if self._cancel.is_set():  # cancelled while the model loaded
            self._stack.close()
            return
        if isinstance(backend, LiveBackend):  # `backends.live.is_live`, narrowing the type
            await self._open_stream(backend)
        else:
            self.mode = "batch"
            if self.finished:
                self._task = self._loop.create_task(self._transcribe())

    def _acquire(self) -> ModelBackend:
        hold = ModelHold.acquire(self.model.models, self.model.name)
        try:
            return self._stack.enter_context(hold.work())
        except BaseException:
            hold.close()
            raise

    async def _open_stream(self, backend: LiveBackend) -> None:
        try:
            stream = await in_thread(backend.open_stream, language=self.model.language, listener=_Listener(self))
        except asyncio.CancelledError:
            self._stack.close()
            raise
        except Exception as exc:  # a VoxtralError, or a bug / out-of-memory error: the item fails
            self._stack.close()
            if not isinstance(exc, VoxtralError):
                logger.exception("realtime: opening a live stream of %s failed", self.model.name)
                exc = VoxtralError("The server failed to start the live transcription of this item.")
            self._fail(exc)
            return
        if self._cancel.is_set():
            stream.cancel()
            return
        self._stream, self.mode = stream, "live"
        for samples in self._waiting:
            stream.feed(samples)
        self._waiting = []
        if self.finished:
            stream.finish()

    async def _transcribe(self) -> None:
        audio = np.concatenate(self._waiting) if self._waiting else np.zeros(0, dtype=np.float32)
        self._waiting = []
        end_ms = round(self.duration_s * 1000)

        def on_delta(text: str) -> None:
            self._later(self.sink.delta, self.item_id, str(text), end_ms)

        request = TranscriptionRequest(
            model=self.model.name, audio=audio, language=self.model.language, on_delta=on_delta, cancel=self._cancel
        )
        # The hold taken at the start serves the request; it is let go when `_stack` closes.
        try:
            with self._stack:
                result = await in_thread(self.model.transcription.transcribe, request)
        except asyncio.CancelledError:
            self._cancel.set()
            raise
        except GenerationCancelledError:
            return
        except VoxtralError as exc:
            self._fail(exc)
            return
        except Exception:  # a bug or an out-of-memory error: the item fails, later items go on
            logger.exception("realtime: transcribing an item with %s failed", self.model.name)
            self._fail(VoxtralError("The server failed to transcribe this item."))
            return
        if self.mode != "done":
            self.mode = "done"
            self.sink.completed(self.item_id, result.text, round(self.duration_s, 3))

    def _fail(self, exc: VoxtralError) -> None:
        if self.mode != "done" and not self._cancel.is_set():
            self.mode = "done"
            self.sink.failed(self.item_id, exc)

    def _later(self, callback: object, *args: object) -> None:
        """Run `callback(*args)` on the loop unless the utterance was cancelled (from any thread)."""

        def run() -> None:
            if not self._cancel.is_set():
                callback(*args)  # type: ignore[operator]

        with contextlib.suppress(RuntimeError):  # the loop is closed: the session is gone
            self._loop.call_soon_threadsafe(run)

    def _done(self, output: ChunkOutput | None, error: BaseException | None) -> None:
        """The live stream ended (on the loop)."""
        if self.mode == "done":
            return
        if output is not None:
            self.mode = "done"
            self.sink.completed(self.item_id, output.text, round(self.duration_s, 3))
        elif isinstance(error, VoxtralError) and not isinstance(error, GenerationCancelledError):
            self._fail(error)
        elif error is not None and not isinstance(error, GenerationCancelledError):
            logger.error("a live stream failed", exc_info=error)
            self._fail(VoxtralError("The live transcription failed."))
        else:
            self.mode = "done"


class _Listener:
    """The `LiveListener` of an utterance's stream: hands each call to the loop."""

    def __init__(self, utterance: Utterance) -> None:
        self.utterance = utterance

    def on_delta(self, text: str, audio_end_s: float) -> None:
        u = self.utterance
        u._later(u.sink.delta, u.item_id, text, round(audio_end_s * 1000))

    def on_behind(self, behind_s: float) -> None:
        u = self.utterance
        u._later(u.sink.behind, u.item_id, behind_s)

    def on_done(self, output: ChunkOutput | None, error: BaseException | None) -> None:
        u = self.utterance
        u._stack.close()  # let the model go (thread-safe)
        u._later(u._done, output, error)
