"""ASGI middleware that rejects request bodies over the upload limit while they stream in."""

from __future__ import annotations

import contextlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import PayloadTooLargeError
from .errors import domain_error_response


class BodyTooLarge(Exception):
    """Raised inside `receive` once the body passes the limit."""


class BodySizeLimit:
    """413 as soon as `Content-Length`, or the bytes received so far, exceed `max_bytes`.

    A declared length over the limit is answered before any of the body is read. A body without a
    length (chunked) is counted as it arrives; whatever the app was doing with it is abandoned and
    its response replaced by the 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        received = 0
        exceeded = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if exceeded:
                return  # the app's reaction to the aborted body is replaced by the 413
            response_started = True
            await send(message)

        with contextlib.suppress(BodyTooLarge):
            await self.app(scope, limited_receive, guarded_send)
        if exceeded and not response_started:
            await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit_mib = self.max_bytes / (1024 * 1024)
        error = PayloadTooLargeError(f"The request body is larger than the {limit_mib:g} MiB limit.", param="file")
        response = domain_error_response(error)
        response.headers["Connection"] = "close"
        await response(scope, receive, send)
