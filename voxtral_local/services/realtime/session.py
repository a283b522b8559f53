"""One `/v1/realtime` transcription session: client events in, server events out (`events`, a queue the
transport drains), with the audio cut into utterances by server VAD or by the client's commits.

Transcription events of an item are sent in item order: an item's deltas wait until every earlier item is
completed (a live stream still finishing the previous utterance while the next one starts).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from ...audio.resampling import StreamResampler
from ...errors import BehindRealTimeError, InvalidRequestError, SessionIdleError, VoxtralError
from ...protocol_realtime import (
    AudioAppend,
    AudioClear,
    AudioCommit,
    Cleared,
    ClientEventError,
    Committed,
    DurationUsage,
    ServerEvent,
    SessionEvent,
    SessionUpdate,
    SpeechStarted,
    SpeechStopped,
    TranscriptionCompleted,
    TranscriptionDelta,
    TranscriptionFailed,
    TranscriptionSessionUpdate,
    error_detail,
    error_event,
    new_id,
    parse_client_event,
)
from .audio import decode_append
from .config import Form, SessionConfig
from .stats import SessionEnded, SessionStats
from .utterance import Utterance, UtteranceModel
from .vad import RATE, SpeechAudio, SpeechDetector, SpeechEnd, SpeechStart

if TYPE_CHECKING:
    from .service import RealtimeService

logger = logging.getLogger(__name__)

SLICE_SAMPLES = RATE  # an append's audio is taken a second at a time, throttled between
MIN_COMMIT_SAMPLES = RATE // 10  # OpenAI refuses to commit less than 100 ms
THROTTLE_POLL_S = 0.05
MAX_QUEUED_EVENTS = 2000  # server events waiting for a client that does not read; beyond it the session ends
MAX_BAD_MESSAGES = 100  # consecutive client messages that each got an `error` event; beyond it the session ends
BIG_MESSAGE = 64 * 1024  # characters: a message this long is parsed on a worker thread


class RealtimeSession:
    """A session's state machine. `handle` one client message at a time (it returns when the message is
    dealt with, which may wait for the model to catch up: the transport reads no further meanwhile); server
    events are put on `events`, and None after the last."""

    def __init__(self, service: RealtimeService, config: SessionConfig, form: Form) -> None:
        self.service = service
        self.config = config
        self.form = form
        self.id = new_id("sess")
        self.events: asyncio.Queue[ServerEvent | None] = asyncio.Queue()
        self.stats = SessionStats()
        self.closed = False
        self.ending: SessionEnded | None = None  # set when the server ends the session (`stopped` is then set)
        self.stopped = asyncio.Event()
        self._bad = 0  # consecutive messages answered with an `error` event
        self._progress = 0  # transcription events so far (text produced: the model is getting on)
        self._received = 0  # session samples at 16 kHz
        self._resampler = StreamResampler(config.rate, RATE)
        self._detector: SpeechDetector | None = None
        self._current: Utterance | None = None  # being spoken (or appended, without VAD)
        self._committed: list[Utterance] = []  # committed, transcription not done
        self._previous_item: str | None = None
        self._order: deque[str] = deque()  # items whose transcription is not done, oldest first
        self._held: dict[str, list[tuple[ServerEvent, bool]]] = {}  # events of items after the oldest
        self._starts: dict[str, int] = {}  # session sample of each item's first sample, until it is done

    # ---- the client's events ----

    def emit(self, event: ServerEvent) -> None:
        """Queue a server event. A client that lets MAX_QUEUED_EVENTS pile up unread ends the session."""
        if self.ending is not None or self.closed:
            return
        if self.events.qsize() >= MAX_QUEUED_EVENTS:
            self.end(1008, "too many unread events")
            return
        if event.type == "error":
            self.stats.errors += 1
        self.events.put_nowait(event)

    def end(self, code: int, reason: str) -> None:
        """The server ends the session: the transport closes the socket with `code` and `reason`."""
        if self.ending is None:
            self.ending = SessionEnded(code, reason)
            self.stopped.set()

    def session_event(self, kind: str) -> SessionEvent:
        """`created` or `updated` in the session's form, with its effective configuration."""
        prefix = "transcription_session" if self.form == "beta" else "session"
        return SessionEvent(type=f"{prefix}.{kind}", session=self.config.render(self.form, self.id))

    async def handle(self, message: str | bytes) -> None:
        """Deal with one client message. A bad one gets an `error` event and the session goes on, unless
        MAX_BAD_MESSAGES come in a row (then it ends)."""
        errors = self.stats.errors
        await self._handle(message)
        self._bad = self._bad + 1 if self.stats.errors > errors else 0
        if self._bad >= MAX_BAD_MESSAGES:
            self.end(1008, "too many bad messages")

    async def _handle(self, message: str | bytes) -> None:
        event_id: str | None = None
        try:
            if isinstance(message, bytes):
                raise ClientEventError(
                    "Binary WebSocket messages are not taken: send each event as a JSON text message "
                    "(audio base64-encoded in `input_audio_buffer.append`).",
                    code="invalid_json",
                )
            if len(message) > BIG_MESSAGE:  # parsing megabytes would hold up every session's events
                event = await asyncio.to_thread(parse_client_event, message)
            else:
                event = parse_client_event(message)
            event_id = event.event_id
            if isinstance(event, AudioAppend):
                await self._append(event)
            elif isinstance(event, AudioCommit):
                self._commit()
            elif isinstance(event, AudioClear):
                self._clear()
            else:
                await self._update(event)
        except ClientEventError as exc:
            self.emit(error_event(exc))
        except VoxtralError as exc:
            self.emit(error_event(exc, event_id))
        except Exception:  # a bug: said to the client, logged, and the session goes on
            logger.exception("realtime session %s: a client event failed", self.id)
            self.emit(error_event(VoxtralError("The server failed to handle this event."), event_id))

    async def _update(self, event: TranscriptionSessionUpdate | SessionUpdate) -> None:
        config = self.config.updated(event)
        if config.model != self.config.model:
            try:
                resolved = await self.service.check_model(config.model)  # model_not_found, model_not_downloaded
            except VoxtralError as exc:
                beta = isinstance(event, TranscriptionSessionUpdate)
                exc.param = f"session.{'input_audio_transcription' if beta else 'audio.input.transcription'}.model"
                raise
            config = replace(config, resolved_model=resolved)
        self.form = "beta" if isinstance(event, TranscriptionSessionUpdate) else "ga"
        if config.rate != self.config.rate:
            self._resampler = StreamResampler(config.rate, RATE)
        if config.vad != self.config.vad:
            detector, self._detector = self._detector, None  # made afresh, with the new knobs, for the next audio
            current = self._current
            if config.vad is None and current is not None and detector is not None:
                self._feed(detector.take_held(), -1)  # the audio it had not looked at yet stays in the item
            if config.vad is not None and current is not None:  # the new detector starts outside speech
                if current.samples >= MIN_COMMIT_SAMPLES:
                    self._finish_current()
                else:
                    self._drop_current()
        self.config = config
        self.emit(self.session_event("updated"))

    async def _append(self, event: AudioAppend) -> None:
        # Megabytes of base64 are decoded and resampled off the event loop (one append at a time).
        samples = await asyncio.to_thread(decode_append, event.audio, self._resampler)
        for start in range(0, samples.shape[0], SLICE_SAMPLES):
            await self._throttle()
            if self.closed or self.ending is not None:
                return
            await self._take(samples[start : start + SLICE_SAMPLES])

    async def _throttle(self) -> None:
        """Wait while the untranscribed audio exceeds VOXTRAL_REALTIME_MAX_AHEAD_S (nothing is read meanwhile).
        The wait ends when the session closes or ends, and ends the session (`session_idle_timeout`) when the
        model makes no progress (no audio decoded, no text produced) for VOXTRAL_REALTIME_IDLE_TIMEOUT_S."""
        limit = self.service.settings.realtime_max_ahead_s
        if self.pending_s <= limit:
            return
        self.stats.throttled += 1
        loop = asyncio.get_running_loop()
        patience = self.service.settings.realtime_idle_timeout_s
        least, progress, deadline = self.pending_s, self._progress, loop.time() + patience
        while not self.closed and self.ending is None:
            pending = self.pending_s
            if pending <= limit:
                return
            if pending < least or self._progress != progress:  # the model is getting on
                least, progress, deadline = min(pending, least), self._progress, loop.time() + patience
            elif loop.time() >= deadline:
                stalled = SessionIdleError(
                    f"The transcription made no progress for {patience:g} s (VOXTRAL_REALTIME_IDLE_TIMEOUT_S) "
                    "while the session waited for it; the session is closed."
                )
                self.emit(error_event(stalled))
                self.end(1011, "transcription stalled")
                return
            await asyncio.sleep(THROTTLE_POLL_S)

    async def _take(self, samples: np.ndarray) -> None:
        """Audio at 16 kHz: to the VAD, or straight into the utterance without it."""
        self._received += samples.shape[0]
        self.stats.received_s = self._received / RATE
        vad = self.config.vad
        if vad is None:
            self._feed(samples, self._received - samples.shape[0])
            return
        if self._detector is None:
            offset = self._received - samples.shape[0]
            self._detector = await asyncio.to_thread(SpeechDetector, vad, offset)
        for found in await asyncio.to_thread(self._detector.push, samples):
            if isinstance(found, SpeechStart):
                utterance = self._start_item()
                self.emit(SpeechStarted(audio_start_ms=_ms(found.position), item_id=utterance.item_id))
                self._feed(found.audio, found.position)
            elif isinstance(found, SpeechAudio) and self._current is not None:
                self._feed(found.audio, -1)  # goes on where the item's audio ends
            elif isinstance(found, SpeechEnd) and self._current is not None and not self._current.samples:
                self._drop_current()  # an item begun at a cut that the speech's end left empty
            elif isinstance(found, SpeechEnd) and self._current is not None:
                self.emit(SpeechStopped(audio_end_ms=_ms(found.position), item_id=self._current.item_id))
                self._finish_current()
        self._note_pending()

    def _feed(self, samples: np.ndarray, position: int) -> None:
        """Into the current utterance (started if there is none); `position`: the session sample of
        `samples[0]` (-1: not known, the utterance has begun already and `samples` follow its audio). An
        utterance that reaches its limit (`_limit`) is committed there, with an `error` event saying so; the
        audio after it goes on in a new item."""
        while samples.size:
            current = self._start_item()
            start = self._starts.setdefault(current.item_id, max(position, 0))
            limit, cause = self._limit(current)
            room = max(limit - current.samples, 0)
            current.feed(samples[:room])
            samples = samples[room:]
            if current.samples < limit:
                return
            cut_at = start + current.samples  # the session sample where the next item begins
            cut = InvalidRequestError(
                f"The utterance reached the limit of {cause}: it is committed there, and the audio after it goes "
                "on in a new item.",
                param="audio",
                code="audio_too_long",
            )
            self.emit(error_event(cut))
            self._finish_current()
            position = cut_at
            if self.config.vad is not None:  # inside speech: the rest of it is a new item
                following = self._start_item()
                self._starts[following.item_id] = cut_at
                self.emit(SpeechStarted(audio_start_ms=_ms(cut_at), item_id=following.item_id))

    def _limit(self, utterance: Utterance) -> tuple[int, str]:
        """The most samples `utterance` may take, and the setting that says so: VOXTRAL_MAX_AUDIO_MINUTES, and
        for one whose audio waits in memory (a standard model's, or while the model loads) also
        VOXTRAL_REALTIME_MAX_UTTERANCE_S."""
        settings = self.service.settings
        limit = max(1, int(settings.max_audio_seconds * RATE))
        cause = f"{settings.max_audio_minutes:g} minutes (VOXTRAL_MAX_AUDIO_MINUTES)"
        buffered = max(1, int(settings.realtime_max_utterance_s * RATE))
        if utterance.mode != "live" and buffered < limit:
            return buffered, f"{settings.realtime_max_utterance_s:g} s (VOXTRAL_REALTIME_MAX_UTTERANCE_S)"
        return limit, cause

    def _commit(self) -> None:
        current = self._current
        if current is not None and self.config.vad is None:
            current.feed(self._resampler.flush())
        if current is None or current.samples < MIN_COMMIT_SAMPLES:
            raise InvalidRequestError(
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio.",
                code="input_audio_buffer_commit_empty",
            )
        self._finish_current()
        if self._detector is not None:
            self._detector.reset()

    def _clear(self) -> None:
        self._drop_current()
        if self._detector is not None:
            self._detector.reset()
        self.emit(Cleared())

    # ---- utterances ----

    def _start_item(self) -> Utterance:
        if self._current is None:
            model = UtteranceModel(
                self.service.models, self.service.transcription, self.config.resolved_model, self.config.language
            )
            self._current = Utterance(new_id("item"), model, self)
            self.stats.items += 1
            self._order.append(self._current.item_id)
        return self._current

    def _finish_current(self) -> None:
        current = self._current
        assert current is not None
        self._current = None
        self.emit(Committed(item_id=current.item_id, previous_item_id=self._previous_item))
        self._previous_item = current.item_id
        current.finish()
        self._committed.append(current)
        self._note_pending()

    def _drop_current(self) -> None:
        current, self._current = self._current, None
        if current is not None:
            current.cancel()
            self._forget(current.item_id)

    @property
    def pending_s(self) -> float:
        """Seconds of received audio the model could be transcribing but has not yet."""
        self._committed = [u for u in self._committed if u.mode != "done"]
        current = 0.0 if self._current is None else self._current.pending_s
        return current + sum(u.pending_s for u in self._committed)

    def _note_pending(self) -> None:
        self.stats.peak_pending_s = max(self.stats.peak_pending_s, self.pending_s)

    # ---- what utterances tell (ItemSink), sent in item order ----

    def delta(self, item_id: str, text: str, audio_end_ms: int) -> None:
        if text:  # `audio_end_ms` of the item's audio, reported in session time like speech_stopped's
            session_ms = audio_end_ms + _ms(self._starts.get(item_id, 0))
            self._item_event(item_id, TranscriptionDelta(item_id=item_id, delta=text, audio_end_ms=session_ms))

    def completed(self, item_id: str, transcript: str, seconds: float) -> None:
        event = TranscriptionCompleted(item_id=item_id, transcript=transcript, usage=DurationUsage(seconds=seconds))
        self._item_event(item_id, event, last=True)

    def failed(self, item_id: str, error: VoxtralError) -> None:
        self.emit(error_event(error))
        self._item_event(item_id, TranscriptionFailed(item_id=item_id, error=error_detail(error)), last=True)

    def behind(self, item_id: str, behind_s: float) -> None:
        message = (
            f"The transcription is {behind_s:.1f} s of audio behind real time (more than VOXTRAL_REALTIME_LAG_S): "
            "the server is overloaded; nothing is dropped."
        )
        self.emit(error_event(BehindRealTimeError(message)))

    def _item_event(self, item_id: str, event: ServerEvent, last: bool = False) -> None:
        self._progress += 1
        if last:
            self._starts.pop(item_id, None)
        if self.closed or item_id not in self._order:
            return
        self._held.setdefault(item_id, []).append((event, last))
        self._flush()

    def _flush(self) -> None:
        """Send the held events of the oldest items, up to the first item not done yet."""
        while self._order:
            head = self._order[0]
            done = False
            for event, last in self._held.pop(head, []):
                self.emit(event)
                done = done or last
            if not done:
                return
            self._order.popleft()

    def _forget(self, item_id: str) -> None:
        """Drop a cancelled item from the order; the items after it may go on."""
        if item_id in self._order:
            self._order.remove(item_id)
        self._held.pop(item_id, None)
        self._starts.pop(item_id, None)
        self._flush()

    async def close(self) -> None:
        """The client left or the session was closed: stop its transcriptions and the event queue."""
        if self.closed:
            return
        self.closed = True
        if self._current is not None:
            self._current.cancel()
        for utterance in self._committed:
            utterance.cancel()
        self.events.put_nowait(None)


def _ms(samples: int) -> int:
    return samples * 1000 // RATE
