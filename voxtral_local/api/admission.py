"""Admission: a bound on the model requests the server holds at once, decided before a request's body is read.

Every request for model work (transcriptions, translations, chat completions, lotti's `audio`; streamed or
not) takes a place when its headers arrive and gives it back when its response has been sent. With every
place taken, the request is answered at once with 429, `Retry-After` and OpenAI's envelope
(`rate_limit_exceeded`): nothing of it is read, parsed or decoded, so a refusal costs microseconds however
large the upload. A request that got a place is never dropped: it waits for the model's batch like any other.
During a shutdown new model requests get 503 (`server_shutting_down`).

The limit is `VOXTRAL_MAX_QUEUE`, or by default twice the batch capacity: one batch decoding and about one
batch waiting for room. The batch capacity is `VOXTRAL_BATCH_SIZE` when set, else the rows of full-length
chunks (prompt plus token cap) the default model's backend holds at once (`row_capacity`), at most
`AUTO_MAX_ROWS`, and `AUTO_MAX_ROWS` until that model is loaded.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque

from starlette.types import ASGIApp, Receive, Scope, Send

from ..config import Settings
from ..errors import ServerOverloadedError, ServerShuttingDownError
from ..models.registry import ModelRegistry
from .errors import domain_error_response
from .workers import InFlight

logger = logging.getLogger(__name__)

# Routes whose requests run the model; all other routes (health, models, pull) are never refused.
MODEL_ROUTES = frozenset({"/v1/audio/transcriptions", "/v1/audio/translations", "/v1/chat/completions"})

# The batch capacity assumed when the memory plan would allow more (a small model's KV cache fits thousands
# of rows) or is not known yet: larger batches add little throughput on a CPU and a longer wait for each.
AUTO_MAX_ROWS = 64
COMPLETIONS_KEPT = 32  # recent completions the Retry-After estimate is taken from
MAX_RETRY_AFTER = 30  # seconds


class Admission:
    """How many model requests are held now, against the limit; used on the event loop only."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models: ModelRegistry | None = None  # set by the lifespan; the default model sizes the default
        self.admitted = 0
        self._capacity: int | None = None
        self._completions: deque[float] = deque(maxlen=COMPLETIONS_KEPT)

    @property
    def limit(self) -> int:
        """The most model requests held at once: `VOXTRAL_MAX_QUEUE`, else 2 × `batch_capacity`."""
        return self.settings.max_queue or 2 * self.batch_capacity

    @property
    def batch_capacity(self) -> int:
        """Rows decoded at once: `VOXTRAL_BATCH_SIZE`, else what the memory plan holds (at most
        `AUTO_MAX_ROWS`, which is also the figure until the default model is loaded)."""
        if self.settings.batch_size:
            return self.settings.batch_size
        if self._capacity is None and self.models is not None:
            default = self.models.catalog.default.id
            backends = [backend for slot, backend in self.models.loaded() if slot.model.id == default]
            rows = backends[0].row_capacity() if backends else None
            if rows is not None:
                self._capacity = min(rows, AUTO_MAX_ROWS)
                logger.info("admission: up to %d model requests at once", 2 * self._capacity)
        return self._capacity or AUTO_MAX_ROWS

    def try_enter(self) -> bool:
        """Take a place if there is one."""
        if self.admitted >= self.limit:
            return False
        self.admitted += 1
        return True

    def leave(self) -> None:
        """Give a place back (the request's response has been sent, or it failed)."""
        self.admitted -= 1
        self._completions.append(time.monotonic())

    def retry_after(self) -> int:
        """Seconds until a place is likely free: the mean time between recent completions (counting the time
        since the last one), 1 to `MAX_RETRY_AFTER`; 1 when nothing has completed yet."""
        if not self._completions:
            return 1
        span = time.monotonic() - self._completions[0]
        return max(1, min(MAX_RETRY_AFTER, math.ceil(span / len(self._completions))))


class AdmissionControl:
    """ASGI middleware: 429 for model requests beyond the limit, 503 for any during a shutdown."""

    def __init__(self, app: ASGIApp, admission: Admission, inflight: InFlight) -> None:
        self.app = app
        self.admission = admission
        self.inflight = inflight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in MODEL_ROUTES:
            await self.app(scope, receive, send)
            return
        if self.inflight.draining:
            error: ServerOverloadedError | ServerShuttingDownError = ServerShuttingDownError(
                "The server is shutting down and takes no new requests."
            )
        elif self.admission.try_enter():
            try:
                await self.app(scope, receive, send)
            finally:
                self.admission.leave()
            return
        else:
            error = ServerOverloadedError(self.admission.limit, self.admission.retry_after())
        # The body is left unread: uvicorn discards it as it arrives and keeps the connection.
        await domain_error_response(error)(scope, receive, send)
