"""`/v1/realtime`: OpenAI's realtime transcription events over a WebSocket (the session lives in
services/realtime). Access rules (Host, Origin, API key as a header or an `openai-insecure-api-key.<key>`
subprotocol) are enforced by api/access.py before the handshake is accepted."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from .deps import RealtimeServiceDep

router = APIRouter()
SUBPROTOCOL = "realtime"  # what OpenAI's browser clients offer, with the key subprotocol
SEND_TIMEOUT_S = 30.0  # a client that takes no event for this long (its socket buffers full) is dropped
CLOSE_TIMEOUT_S = 5.0  # the close handshake with a client that does not read is not waited for longer


@router.websocket("/v1/realtime")
async def realtime(
    websocket: WebSocket, service: RealtimeServiceDep, intent: str | None = None, model: str | None = None
) -> None:
    """A transcription session (`?intent=transcription`; `model`: the session's model when it names a served
    one; no `intent`: the GA event names). Bad messages get `error` events and the socket stays open. Sends
    and the final close are bounded in time: a client that does not read cannot hold the connection."""
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)

    async def receive() -> str | bytes | None:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        return text if text is not None else message.get("bytes")

    async def send(text: str) -> None:
        await asyncio.wait_for(websocket.send_text(text), SEND_TIMEOUT_S)

    try:
        close = await service.serve(receive, send, model=model, intent=intent)
    except WebSocketDisconnect:
        return
    if close is not None:
        with contextlib.suppress(TimeoutError, RuntimeError, WebSocketDisconnect, OSError):
            await asyncio.wait_for(websocket.close(code=close[0], reason=close[1]), CLOSE_TIMEOUT_S)
