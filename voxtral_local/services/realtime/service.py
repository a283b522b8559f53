"""The realtime transcription service: opens sessions within VOXTRAL_REALTIME_MAX_SESSIONS, picks their model,
and runs each over a transport given as two callables (the WebSocket route adapts its socket to them)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from ...config import Settings
from ...errors import (
    InvalidRequestError,
    ModelNotFoundError,
    SessionIdleError,
    TooManySessionsError,
    VoxtralError,
    quote,
)
from ...models.catalog import ServedModel
from ...models.registry import ModelRegistry
from ...protocol_realtime import error_event
from ..holds import check_available
from ..transcription import TranscriptionService
from .config import Form, SessionConfig
from .session import RealtimeSession

logger = logging.getLogger(__name__)

Receive = Callable[[], Awaitable[str | bytes | None]]  # the next client message; None once the client left
Send = Callable[[str], Awaitable[None]]  # send one server event's JSON text
Close = tuple[int, str]  # WebSocket close code and reason
REALTIME_MODEL_TYPES = ("voxtral_realtime",)


def is_realtime_model(model: ServedModel) -> bool:
    """Whether a served model is a realtime (streaming) one, without loading it: its hub id or directory
    says `Realtime`, or a local checkpoint's config.json names a realtime model type."""
    if "realtime" in model.source.lower() or "realtime" in model.id.lower():
        return True
    if not model.is_local:
        return False
    try:
        config = json.loads((model.directory / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") in REALTIME_MODEL_TYPES


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
        ModelNotFoundError, ModelNotDownloadedError or ModelUnavailableError."""
        model = await asyncio.to_thread(check_available, self.models, name or self.default_model())
        return model.id

    async def serve(
        self, receive: Receive, send: Send, *, model: str | None = None, intent: str | None = None, form: Form = "beta"
    ) -> Close | None:
        """Run one session until the client leaves (returns None) or the server ends it (returns the close
        code and reason to send: 1013 when VOXTRAL_REALTIME_MAX_SESSIONS are open, after a `too_many_sessions`
        error event; 1000 after `session_idle_timeout`; 1008 for an `intent` other than `transcription`).
        `model`: the connection's `model` query parameter, the session's model when it names a served one."""
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
        session = RealtimeSession(self, SessionConfig(resolved_model=self.default_model()), form)
        self.sessions.add(session)
        try:
            problem = await self._use_query_model(session, model) if model else None
            session.emit(session.session_event("created"))
            if problem is not None:
                session.emit(error_event(problem))
            return await self._run(session, receive, send)
        finally:
            self.sessions.discard(session)
            await session.close()

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
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                close = reader.result()
                if close is not None:  # idle: let the writer send what is queued, the error event last
                    session.events.put_nowait(None)
                    await asyncio.wait({writer}, timeout=5)
                return close
            return None  # the writer could not send: the client is gone
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)

    async def _read(self, session: RealtimeSession, receive: Receive) -> Close | None:
        timeout = self.settings.realtime_idle_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except TimeoutError:
                idle = SessionIdleError(
                    f"The session sent nothing for {timeout:g} s (VOXTRAL_REALTIME_IDLE_TIMEOUT_S); it is closed."
                )
                session.emit(error_event(idle))
                return 1000, "idle timeout"
            if message is None:
                return None
            await session.handle(message)

    @staticmethod
    async def _write(session: RealtimeSession, send: Send) -> None:
        while True:
            event = await session.events.get()
            if event is None:
                return
            await send(event.dump())
