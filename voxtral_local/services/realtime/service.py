"""The realtime transcription service: opens sessions within VOXTRAL_REALTIME_MAX_SESSIONS, picks their model,
and runs each over a transport given as two callables (the WebSocket route adapts its socket to them)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ...backends.realtime import is_realtime_checkpoint
from ...config import Settings
from ...errors import (
    InvalidRequestError,
    ModelNotFoundError,
    SessionIdleError,
    TooManySessionsError,
    VoxtralError,
    quote,
)
from ...models.catalog import DEFAULT_MODEL_ALIASES, ServedModel
from ...models.registry import ModelRegistry
from ...protocol_realtime import error_event
from ..holds import check_available
from ..transcription import TranscriptionService
from .config import Form, SessionConfig
from .session import RealtimeSession

logger = logging.getLogger(__name__)
request_logger = logging.getLogger("voxtral_local.requests")  # one line per session, like the HTTP requests'

Receive = Callable[[], Awaitable[str | bytes | None]]  # the next client message; None once the client left
Send = Callable[[str], Awaitable[None]]  # send one server event's JSON text
Close = tuple[int, str]  # WebSocket close code and reason
CLOSE_WAIT_S = 5.0  # seconds the events queued before a close may take to be sent


def is_realtime_model(model: ServedModel) -> bool:
    """Whether a served model is a realtime (streaming) one, without loading it: its hub id or name says
    `Realtime`, or its local checkpoint is a Voxtral Realtime one."""
    if "realtime" in model.source.lower() or "realtime" in model.id.lower():
        return True
    return model.is_local and is_realtime_checkpoint(model.directory)


class RealtimeService:
    """Live transcription sessions (`/v1/realtime`). Nothing here blocks the event loop: model checks, loads,
    VAD and transcriptions run on worker threads."""

    def __init__(self, settings: Settings, models: ModelRegistry, transcription: TranscriptionService) -> None:
        self.settings = settings
        self.models = models
        self.transcription = transcription
        self.sessions: set[RealtimeSession] = set()

    def default_model(self) -> str:
        """VOXTRAL_REALTIME_MODEL, else the first served realtime model, else the default model (an id)."""
        if self.settings.realtime_model is not None:
            return self.settings.realtime_model
        served = list(self.models.catalog.models.values())
        return next((m.id for m in served if is_realtime_model(m)), self.models.catalog.default.id)

    async def check_model(self, name: str | None) -> str:
        """The served model id `name` means (None: `default_model`), usable without the network; raises
        ModelNotFoundError, ModelNotDownloadedError or ModelUnavailableError. OpenAI's transcription model names
        (whisper-1, gpt-4o-transcribe, gpt-4o-mini-transcribe), while they are the built-in aliases of the
        default model, mean the session default here, so that OpenAI clients get the realtime model."""
        catalog = self.models.catalog
        if name in DEFAULT_MODEL_ALIASES and catalog.aliases.get(name) == catalog.default.id:
            name = None
        model = await asyncio.to_thread(check_available, self.models, name or self.default_model())
        return model.id

    async def serve(
        self, receive: Receive, send: Send, *, model: str | None = None, intent: str | None = None
    ) -> Close | None:
        """Run one session until the client leaves (returns None) or the server ends it (returns the close
        code and reason to send: 1013 when VOXTRAL_REALTIME_MAX_SESSIONS are open, after a `too_many_sessions`
        error event; 1000 after `session_idle_timeout`; 1008 for an `intent` other than `transcription`, for
        MAX_QUEUED_EVENTS unread events or MAX_BAD_MESSAGES bad messages in a row; 1011 when the model makes
        no progress while the session is throttled). `intent=transcription` (the beta API's clients) gets the
        `transcription_session.*` events, no intent the GA `session.*` ones. `model`: the connection's `model`
        query parameter, the session's model when it names a served one."""
        if intent not in (None, "", "transcription"):
            wrong = InvalidRequestError(
                f"Unsupported intent {quote(intent)}: this server serves transcription sessions "
                "(connect with ?intent=transcription).",
                param="intent",
                code="invalid_intent",
            )
            await send(error_event(wrong).dump())
            return 1008, "unsupported intent"
        if len(self.sessions) >= self.settings.realtime_max_sessions:
            limit = self.settings.realtime_max_sessions
            refusal = TooManySessionsError(
                f"The server already has {limit} live sessions open (VOXTRAL_REALTIME_MAX_SESSIONS); try again later."
            )
            await send(error_event(refusal).dump())
            return 1013, "too many sessions"
        form: Form = "beta" if intent == "transcription" else "ga"  # the beta API's clients name the intent
        session = RealtimeSession(self, SessionConfig(resolved_model=self.default_model()), form)
        self.sessions.add(session)
        why, began = "server error", time.monotonic()
        try:
            problem = await self._use_query_model(session, model) if model else None
            session.emit(session.session_event("created"))
            if problem is not None:
                session.emit(error_event(problem))
            close = await self._run(session, receive, send)
            why = "client left" if close is None else close[1]
            return close
        except asyncio.CancelledError:
            why = "server shutdown"
            raise
        finally:
            self.sessions.discard(session)
            await session.close()
            stats = session.stats
            request_logger.info(
                "realtime session=%s model=%s audio=%.1fs items=%d errors=%d wall=%.2fs ended=%r",
                session.id,
                session.config.resolved_model,
                stats.received_s,
                stats.items,
                stats.errors,
                time.monotonic() - began,
                why,
            )

    async def _use_query_model(self, session: RealtimeSession, name: str) -> VoxtralError | None:
        """Make the connection's `model` the session's when it names a served model (OpenAI's client sends a
        realtime model's name there, which is ignored); what is wrong with a served one, to be told."""
        try:
            resolved = await self.check_model(name)
        except ModelNotFoundError:
            logger.info("realtime: the connection's model %r is not served; using %s", name, session.config.model)
            return None
        except VoxtralError as exc:
            return exc
        session.config = SessionConfig(resolved_model=resolved, model=name)
        return None

    async def _run(self, session: RealtimeSession, receive: Receive, send: Send) -> Close | None:
        writer = asyncio.create_task(self._write(session, send))
        reader = asyncio.create_task(self._read(session, receive))
        stopped = asyncio.create_task(session.stopped.wait())
        try:
            done, _ = await asyncio.wait({reader, writer, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if writer in done:
                return None  # the writer could not send (or timed out): the client is gone or does not read
            close = reader.result() if reader in done else None
            if session.ending is not None:
                close = session.ending.code, session.ending.reason
            if close is not None:  # let the writer send what is queued, the error event last
                session.events.put_nowait(None)
                await asyncio.wait({writer}, timeout=CLOSE_WAIT_S)
            return close
        finally:
            for task in (reader, writer, stopped):
                task.cancel()
            await asyncio.gather(reader, writer, stopped, return_exceptions=True)

    async def _read(self, session: RealtimeSession, receive: Receive) -> Close | None:
        """Read and handle the client's messages until it leaves (None) or is idle (a close). While a message
        is handled (which may wait for the model: throttling), the next one is already awaited, so that a
        client that leaves meanwhile is seen at once; no further message is read until the handling ends."""
        timeout = self.settings.realtime_idle_timeout_s
        incoming = asyncio.ensure_future(receive())
        try:
            while True:
                try:
                    message = await asyncio.wait_for(asyncio.shield(incoming), timeout)
                except TimeoutError:
                    idle = SessionIdleError(
                        f"The session sent nothing for {timeout:g} s (VOXTRAL_REALTIME_IDLE_TIMEOUT_S); it is closed."
                    )
                    session.emit(error_event(idle))
                    return 1000, "idle timeout"
                if message is None:
                    return None
                incoming = asyncio.ensure_future(receive())
                handling = asyncio.ensure_future(session.handle(message))
                try:
                    await asyncio.wait({handling, incoming}, return_when=asyncio.FIRST_COMPLETED)
                    if incoming.done() and (incoming.exception() is not None or incoming.result() is None):
                        return None  # the client left while its message was handled
                    await handling
                finally:
                    handling.cancel()
                if session.ending is not None:
                    return None
        finally:
            incoming.cancel()

    @staticmethod
    async def _write(session: RealtimeSession, send: Send) -> None:
        while True:
            event = await session.events.get()
            if event is None:
                return
            await send(event.dump())
