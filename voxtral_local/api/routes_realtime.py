"""`/v1/realtime`: OpenAI's realtime transcription events over a WebSocket (the session lives in
services/realtime). Access rules (Host, Origin, API key as a header or an `openai-insecure-api-key.<key>`
subprotocol) are enforced by api/access.py before the handshake is accepted."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from .deps import RealtimeServiceDep

router = APIRouter()
SUBPROTOCOL = "realtime"  # what OpenAI's browser clients offer, with the key subprotocol


@router.websocket("/v1/realtime")
async def realtime(
    websocket: WebSocket, service: RealtimeServiceDep, intent: str | None = None, model: str | None = None
) -> None:
    """A transcription session (`?intent=transcription`; `model`: the session's model when it names a served
    one). Bad messages get `error` events and the socket stays open."""
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)

    async def receive() -> str | bytes | None:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        return text if text is not None else message.get("bytes")

    async def send(text: str) -> None:
        await websocket.send_text(text)

    try:
        close = await service.serve(receive, send, model=model, intent=intent)
    except WebSocketDisconnect:
        return
    if close is not None:
        await websocket.close(code=close[0], reason=close[1])
