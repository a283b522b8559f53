"""`GET /v1/models`, `GET /v1/models/{id}` and `GET /health`."""

from __future__ import annotations

import contextlib
from pathlib import Path

from fastapi import APIRouter
from starlette.exceptions import HTTPException

from ..config import Settings
from ..errors import ModelNotFoundError, VoxtralError
from ..models.registry import ModelRegistry, locate
from ..protocol import Health, Model, ModelList
from .deps import ModelsDep, SettingsDep
from .openapi import COMMON_ERRORS, error_responses

router = APIRouter()


def _default_state(models: ModelRegistry) -> tuple[bool, bool, str | None]:
    """Whether the default model is downloaded and loaded, and why it cannot be served (if known)."""
    slot = models.slot(models.catalog.default.id)
    try:
        locate(slot.model)
    except VoxtralError as exc:
        return False, False, exc.message
    return True, slot.backend is not None, None if slot.backend is not None else slot.load_error


def describe_model(settings: Settings, models: ModelRegistry) -> Model:
    """The served model as an OpenAI model object, with its download and load state."""
    downloaded, loaded, _ = _default_state(models)
    created = 0
    if downloaded and settings.model_is_local:
        with contextlib.suppress(OSError):  # unreadable since `is_downloaded` looked: no date, not a 500
            created = int((Path(settings.model).expanduser() / "config.json").stat().st_mtime)
    owner = settings.model.split("/", 1)[0] if not settings.model_is_local and "/" in settings.model else "local"
    return Model(id=settings.model_name, created=created, owned_by=owner, downloaded=downloaded, loaded=loaded)


@router.get("/v1/models", responses=error_responses(*COMMON_ERRORS))
async def list_models(settings: SettingsDep, models: ModelsDep) -> ModelList:
    """The models this server serves."""
    return ModelList(data=[describe_model(settings, models)])


@router.get("/v1/models/{model_id:path}", responses=error_responses(404, 405, *COMMON_ERRORS))
async def retrieve_model(model_id: str, settings: SettingsDep, models: ModelsDep) -> Model:
    """One model by id (or alias); 404 for any other name, and 405 for `pull` (which this path would
    otherwise take for a model's name)."""
    if model_id == "pull" and model_id not in settings.accepted_model_names:
        raise HTTPException(405, "Method Not Allowed", headers={"Allow": "POST"})
    if model_id not in settings.accepted_model_names:
        raise ModelNotFoundError(model_id, [settings.model_name])
    return describe_model(settings, models)


@router.get("/health", responses=error_responses(403))
async def health(settings: SettingsDep, models: ModelsDep) -> Health:
    """Liveness plus model state, in the shape lotti's local services report; always 200 while the server
    runs, the model's problem (if any) in `model_error`."""
    downloaded, loaded, error = _default_state(models)
    device = next((b.status().device for _, b in models.loaded()), settings.device)
    return Health(
        model=settings.model_name,
        model_available=downloaded,
        model_loaded=loaded,
        model_error=error,
        device=device,
        max_audio_minutes=settings.max_audio_minutes,
    )
