"""Serving with uvicorn, and a bounded shutdown on SIGTERM or SIGINT.

On the first signal uvicorn stops accepting connections (the listening socket is closed, so a new
connection is refused) and closes idle ones; the app refuses new model requests (503) and lets those in
flight run for up to `VOXTRAL_SHUTDOWN_TIMEOUT` seconds. Then their cancel events are set (`InFlight`): the
backend drops them at its next step, a stream ends with an error event and a plain request gets 503
(`server_shutting_down`). uvicorn's own `timeout_graceful_shutdown`, `GRACE_SECONDS` later, closes whatever
still runs (a request whose upload has not finished arriving). A second SIGINT stops the work at once and
gives the requests `FORCED_ANSWER_SECONDS` to send their error before their connections are cut.
The process then exits with status 0: uvicorn re-raises the signal once it has shut down, which is caught
here, since the shutdown asked for is complete.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import socket
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from ..config import Settings
from ..models.registry import ModelRegistry
from .workers import InFlight

logger = logging.getLogger(__name__)

# After the deadline: time for the stopped requests to send their error, and for work no cancel event can
# interrupt (an upload still arriving, one being decoded) before uvicorn cancels it.
GRACE_SECONDS = 10.0
# After a second SIGINT: how long the stopped requests get to send their error before they are cut off.
FORCED_ANSWER_SECONDS = 2.0
SIGNALS = (signal.SIGINT, signal.SIGTERM)


WS_MAX_SIZE = 16 * 1024 * 1024  # bytes per WebSocket message: OpenAI takes appends of up to 15 MiB of base64


class DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the app's `InFlight` when a shutdown begins and when its time is up."""

    def __init__(self, config: uvicorn.Config, inflight: InFlight, timeout: float) -> None:
        super().__init__(config)
        self.inflight = inflight
        self.timeout = timeout

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.inflight.drain()
        running = len(self.inflight)
        if running:
            logger.info("shutting down: %d requests in flight get up to %g s to finish", running, self.timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.call_later(self.timeout, self._stop)
        try:
            await super().shutdown(sockets)
        finally:
            deadline.cancel()
        if self.force_exit:  # uvicorn waited for nothing: give the stopped requests a moment to answer
            until = loop.time() + FORCED_ANSWER_SECONDS
            while self.server_state.tasks and loop.time() < until:
                await asyncio.sleep(0.05)

    def _stop(self) -> None:
        running = len(self.inflight)
        if running:
            logger.warning("shutdown timeout (%g s) reached: stopping %d requests", self.timeout, running)
        self.inflight.stop_all()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self.force_exit:  # a second SIGINT: stop the model work now, not only the waiting
            self.inflight.stop_all()


def serve(app: FastAPI, settings: Settings, **options: Any) -> None:
    """Serve `app` on `settings.host:port` until SIGINT or SIGTERM, then shut down as the module says and
    return. `options` go to `uvicorn.Config`."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout + GRACE_SECONDS),
        ws_max_size=WS_MAX_SIZE,
        **options,
    )
    server = DrainingServer(config, app.state.inflight, settings.shutdown_timeout)

    def exit_soon(sig: int, frame: FrameType | None) -> None:
        # Outside uvicorn's own handlers: before it installs them (stop as soon as it starts), and when it
        # re-raises the signal it stopped for after shutting down (nothing left to do: exit 0).
        server.should_exit = True

    previous = {sig: signal.signal(sig, exit_soon) for sig in SIGNALS}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop_backends(app)


def stop_backends(app: FastAPI) -> None:
    """Stop whatever model work is left (after a forced exit) and every loaded backend's decoding. A daemon
    thread still inside torch when the interpreter finalizes aborts the process ("terminate called without an
    active exception"), so if a backend does not stop within `GRACE_SECONDS` the process exits at once,
    status 0."""
    app.state.inflight.stop_all()
    models: ModelRegistry | None = getattr(app.state, "models", None)
    for slot, backend in [] if models is None else models.loaded():
        if not backend.close(timeout=GRACE_SECONDS):
            logger.warning("%s did not stop within %g s; exiting without waiting for it", slot.model.id, GRACE_SECONDS)
            logging.shutdown()
            os._exit(0)
