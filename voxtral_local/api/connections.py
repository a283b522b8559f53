"""The connection layer under the app: a header read timeout and a connection cap on uvicorn's h11 protocol,
and the options `python -m voxtral_local` gives `uvicorn.run`.

uvicorn 0.54 has no header read timeout: a connection that never sends, or never finishes, its request
headers is held forever (`timeout_keep_alive` is armed only after a response; `h11_max_incomplete_event_size`
bounds the headers' size, not their time). Its `limit_concurrency` refuses with a plain-text 503 and only
once a request's headers have arrived. Both need the protocol object, which the ASGI app never sees, so this
module subclasses `H11Protocol` (passed as uvicorn's `http` class) and touches only its connection events:
a timer from the first byte of a request head (or the connection's start) to the head's end, and, on a
connection opened beyond the cap, an app that answers OpenAI's envelope instead of the real one. httptools
is therefore never used, even where it is installed: the h11 protocol is the one these guards are written for.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, ClassVar

import anyio
import h11
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..config import Settings
from ..errors import InvalidRequestError, RequestTimeoutError, TooManyConnectionsError, VoxtralError
from .errors import domain_envelope, domain_error_response

logger = logging.getLogger(__name__)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.Config`/`uvicorn.run` besides address and log level: the guarded h11
    protocol, and proxy headers (X-Forwarded-For/-Proto) trusted only from VOXTRAL_FORWARDED_ALLOW_IPS; unset,
    they are ignored (uvicorn would otherwise trust them from 127.0.0.1, so any local program could forge the
    logged client)."""
    return {
        "http": GuardedH11Protocol.configured(settings.header_timeout_s, settings.max_connections),
        "proxy_headers": settings.forwarded_allow_ips is not None,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
    }


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header read timeout and a connection cap (set by `configured`).

    - A request head (request line and headers) must be complete `header_timeout_s` after the connection
      opened or after its first byte arrived (later requests on a kept-alive connection). Otherwise the
      connection is closed: with a 408 envelope when part of a head came, silently when nothing did (a
      browser's speculative pre-connection); one log line either way (INFO, or DEBUG for the silent case).
    - A connection opened while more than `max_connections` are open gets, for each request it sends while
      the server is still over the cap, a 503 envelope with `Connection: close` and `Retry-After`. Crossing
      the cap logs one WARNING, and falling (a tenth, at least one) below it one INFO, however many requests
      are refused between.
    """

    header_timeout_s: ClassVar[float] = 10.0
    max_connections: ClassVar[int | None] = None
    over_cap: ClassVar[bool] = False

    @classmethod
    def configured(cls, header_timeout_s: float, max_connections: int | None) -> type[GuardedH11Protocol]:
        """A subclass with these limits and its own over-the-cap state (one per server)."""
        attrs = {"header_timeout_s": header_timeout_s, "max_connections": max_connections, "over_cap": False}
        return type(cls.__name__, (cls,), attrs)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()
        cap = self.max_connections
        if cap is not None and len(self.connections) > cap:
            if not type(self).over_cap:
                type(self).over_cap = True
                logger.warning(
                    "%d connections open, over VOXTRAL_MAX_CONNECTIONS=%d: new ones get 503", len(self.connections), cap
                )
            self.app = _refuse_while_over_cap(self.app, self.connections, cap, self.header_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # (part of) a request head
            self._head_bytes += len(data)
            self._arm_header_timer()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is complete (or the connection failed)
            self._cancel_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)
        cap = self.max_connections
        # Some slack below the cap before saying so, lest every refused connection's close log a line.
        if type(self).over_cap and cap is not None and len(self.connections) <= cap - max(1, cap // 10):
            type(self).over_cap = False
            logger.info("%d connections open, back within VOXTRAL_MAX_CONNECTIONS=%d", len(self.connections), cap)

    def send_400_response(self, msg: str) -> None:
        """Answer a request h11 cannot parse (HTTP/1.1 without Host, two Host headers, a bad chunk size, a
        negative Content-Length, a non-ASCII request target...) with the OpenAI envelope, where uvicorn writes
        plain text; then close, as uvicorn does."""
        error = InvalidRequestError(
            f"The HTTP request is malformed and was not read ({msg.rstrip('.')}).", code="invalid_http_request"
        )
        body = _envelope(error)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body)):
            self.transport.write(self.conn.send(event))
        self.transport.write(self.conn.send(h11.EndOfMessage()))
        self.transport.close()

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._head_bytes = 0

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        prefix = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
        if self._head_bytes:
            logger.info("%sclosed: request headers incomplete after %g s", prefix, self.header_timeout_s)
            self.transport.write(_raw_408(self.header_timeout_s, self._head_bytes))
        else:
            logger.debug("%sclosed: no request within %g s", prefix, self.header_timeout_s)
        self.transport.close()


def _envelope(error: VoxtralError) -> bytes:
    """The JSON body of `error`'s OpenAI envelope, for answers written below the ASGI app."""
    _, body = domain_envelope(error)
    return json.dumps(body.model_dump(), separators=(",", ":")).encode()


def _raw_408(timeout_s: float, received: int) -> bytes:
    """A complete HTTP/1.1 408 response with the envelope, written past h11 (which has no request to
    answer) just before the connection closes."""
    error = RequestTimeoutError(f"The request headers did not arrive within {timeout_s:g} s ({received} bytes came).")
    body = _envelope(error)
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def _refuse_while_over_cap(app: ASGIApp, connections: set[Any], cap: int, retry_after_s: float) -> ASGIApp:
    """`app`, except that a request arriving while more than `cap` connections are open gets the 503."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or len(connections) <= cap:
            await app(scope, receive, send)
            return
        error = TooManyConnectionsError(
            f"The server has more than {cap} open connections (VOXTRAL_MAX_CONNECTIONS); retry shortly."
        )
        await _drain(receive)  # closing with unread bytes makes the kernel reset the connection, losing the 503
        response = domain_error_response(error)
        response.headers["Connection"] = "close"
        response.headers["Retry-After"] = str(max(1, round(retry_after_s)))
        await response(scope, receive, send)

    return guarded


async def _drain(receive: Receive, limit: int = 1024 * 1024, timeout_s: float = 1.0) -> None:
    """Read and drop up to `limit` bytes of the request body, for at most `timeout_s` seconds."""
    received = 0
    with anyio.move_on_after(timeout_s):
        while received <= limit:
            message = await receive()
            received += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
