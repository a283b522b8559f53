"""Dependencies that hand routes the objects the lifespan created.

They are `async def`: they only read `app.state`, and a sync dependency would be run on the shared worker
thread pool, so `/health` would wait behind whatever request work fills it."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from ..backends.vllm import UpstreamPool
from ..config import Settings
from ..models.registry import ModelRegistry
from ..services.chat import ChatService
from ..services.realtime import RealtimeService
from ..services.transcription import TranscriptionService


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_models(request: Request) -> ModelRegistry:
    return request.app.state.models


async def get_upstreams(request: Request) -> UpstreamPool | None:
    """The upstream model servers (VOXTRAL_VLLM_URLS); None when none is configured."""
    return request.app.state.upstreams


async def get_transcription_service(request: Request) -> TranscriptionService:
    return request.app.state.transcription


async def get_chat_service(request: Request) -> ChatService:
    return request.app.state.chat


async def get_realtime_service(connection: HTTPConnection) -> RealtimeService:
    """The live transcription service (for the `/v1/realtime` WebSocket, hence an `HTTPConnection`)."""
    return connection.app.state.realtime


SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelsDep = Annotated[ModelRegistry, Depends(get_models)]
UpstreamsDep = Annotated[UpstreamPool | None, Depends(get_upstreams)]
TranscriptionServiceDep = Annotated[TranscriptionService, Depends(get_transcription_service)]
ChatServiceDep = Annotated[ChatService, Depends(get_chat_service)]
RealtimeServiceDep = Annotated[RealtimeService, Depends(get_realtime_service)]
