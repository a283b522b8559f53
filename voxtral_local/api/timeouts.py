"""ASGI middleware for request bodies that stop arriving: a 408 when the client stalls, one INFO line when it
goes away part-way.

uvicorn has no body read timeout (its `timeout_keep_alive` only covers the idle time between requests), so a
client that sends half a body holds its connection and the route waiting on it forever. The timeout is per
read: it bounds how long the server waits for the next piece, not how long a whole upload may take (a large
file over a slow link keeps going as long as bytes keep coming). The headers' timeout is on the connection
(api/connections.py), as it runs before any ASGI app sees the request.
"""

from __future__ import annotations

import logging

import anyio
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import RequestTimeoutError
from .errors import domain_error_response

logger = logging.getLogger(__name__)


class BodyStalled(Exception):
    """Raised inside `receive` when the next piece of the body did not come in time."""


class BodyReadTimeout:
    """While the request body is incomplete, each `receive()` waits at most `timeout_s` seconds.

    - No next piece in time: the app's reaction (a parse error, a 400) is dropped and the client gets a 408
      envelope with `Connection: close`. uvicorn's access log line for it is the only log line.
    - The client disconnects before its body is complete: whatever the app does about it (Starlette raises
      ClientDisconnect from the form parser, FastAPI turns a cut JSON body into a 400) is dropped, and one
      INFO line says how many bytes came; there is no one left to answer.
    Once the body is complete, `receive` is passed through untouched (a streaming response waits on it for
    the disconnect, for as long as the stream lasts).
    """

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_complete = False
        received = 0
        outcome: str | None = None  # "stalled" or "gone"
        response_started = False

        async def timed_receive() -> Message:
            nonlocal body_complete, received, outcome
            if body_complete:
                return await receive()
            try:
                with anyio.fail_after(self.timeout_s):
                    message = await receive()
            except TimeoutError:
                outcome = "stalled"
                raise BodyStalled from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_complete = not message.get("more_body", False)
            elif message["type"] == "http.disconnect":
                outcome = outcome or "gone"
                body_complete = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if outcome is not None and not response_started:
                return  # the app's reaction to a body that never came is replaced (stalled) or unheard (gone)
            if message["type"] == "http.response.start" and not body_complete and _has_body(scope):
                # Answered before the body was read (a 429, 415, 413...): close once it is sent. uvicorn would
                # discard the rest of the body with no timeout, so a client trickling it would hold the
                # connection for ever.
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            response_started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except Exception:
            if outcome is None or response_started:
                raise
            logger.debug("the app's error after the body %s", outcome, exc_info=True)
        if outcome == "gone" and not response_started:
            declared = Headers(scope=scope).get("content-length")
            logger.info(
                "%s - client disconnected during its request body (%d of %s bytes): %s %s",
                _client(scope), received, declared or "unknown", scope["method"], scope["path"],
            )  # fmt: skip
        elif outcome == "stalled" and not response_started:
            error = RequestTimeoutError(
                f"No part of the request body arrived for {self.timeout_s:g} s "
                f"({received} bytes came); the request was abandoned."
            )
            response = domain_error_response(error)
            response.headers["Connection"] = "close"
            await response(scope, receive, send)


def _has_body(scope: Scope) -> bool:
    """Whether the request announces a body (a positive Content-Length, or a chunked one)."""
    headers = Headers(scope=scope)
    length = headers.get("content-length", "")
    return (length.isascii() and length.isdigit() and int(length) > 0) or "chunked" in headers.get(
        "transfer-encoding", ""
    ).lower()


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"
