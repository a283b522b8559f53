"""`GET /v1/models`, `GET /v1/models/{id}` and `GET /health`."""

from __future__ import annotations

import contextlib
from pathlib import Path

from fastapi import APIRouter
from starlette.exceptions import HTTPException

from ..backends.transformers import TransformersBackend
from ..config import Settings
from ..errors import ModelNotFoundError
from ..protocol import Health, Model, ModelList
from .deps import EngineDep, SettingsDep
from .openapi import COMMON_ERRORS, error_responses

router = APIRouter()


def describe_model(settings: Settings, engine: TransformersBackend) -> Model:
    """The served model as an OpenAI model object, with its download and load state."""
    downloaded = engine.is_downloaded()
    created = 0
    if downloaded and settings.model_is_local:
        with contextlib.suppress(OSError):  # unreadable since `is_downloaded` looked: no date, not a 500
            created = int((Path(settings.model).expanduser() / "config.json").stat().st_mtime)
    owner = settings.model.split("/", 1)[0] if not settings.model_is_local and "/" in settings.model else "local"
    return Model(id=settings.model_name, created=created, owned_by=owner, downloaded=downloaded, loaded=engine.loaded)


@router.get("/v1/models", responses=error_responses(*COMMON_ERRORS))
async def list_models(settings: SettingsDep, engine: EngineDep) -> ModelList:
    """The models this server serves."""
    return ModelList(data=[describe_model(settings, engine)])


@router.get("/v1/models/{model_id:path}", responses=error_responses(404, 405, *COMMON_ERRORS))
async def retrieve_model(model_id: str, settings: SettingsDep, engine: EngineDep) -> Model:
    """One model by id (or alias); 404 for any other name, and 405 for `pull` (which this path would
    otherwise take for a model's name)."""
    if model_id == "pull" and model_id not in settings.accepted_model_names:
        raise HTTPException(405, "Method Not Allowed", headers={"Allow": "POST"})
    if model_id not in settings.accepted_model_names:
        raise ModelNotFoundError(model_id, [settings.model_name])
    return describe_model(settings, engine)


@router.get("/health", responses=error_responses(403))
async def health(settings: SettingsDep, engine: EngineDep) -> Health:
    """Liveness plus model state, in the shape lotti's local services report; always 200 while the server
    runs, the model's problem (if any) in `model_error`."""
    return Health(
        model=settings.model_name,
        model_available=engine.is_downloaded(),
        model_loaded=engine.loaded,
        model_error=engine.unavailable_reason(),
        device=engine.device_name(),
        max_audio_minutes=settings.max_audio_minutes,
    )
