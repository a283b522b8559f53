"""The loaded models, in speaches' convention: `GET /api/ps` lists them, `POST /api/ps/{model_id}` loads one,
`DELETE /api/ps/{model_id}` unloads one. Ids may contain `/` (hub ids); aliases are accepted."""

from __future__ import annotations

from fastapi import APIRouter, Response

from ..errors import ModelConflictError, ModelIsRemoteError
from ..protocol import RunningModels
from .deps import ModelsDep
from .openapi import COMMON_ERRORS, error_responses
from .routes_models import running_model
from .workers import run_in_worker

router = APIRouter()


def already_loaded(model_id: str) -> ModelConflictError:
    """The 409 of `POST /api/ps/{id}` for a model that is loaded (speaches' convention)."""
    return ModelConflictError(f"The model '{model_id}' is already loaded.", param="model", code="model_already_loaded")


@router.get("/api/ps", responses=error_responses(*COMMON_ERRORS))
async def list_running(models: ModelsDep) -> RunningModels:
    """The loaded models: `models` their ids (as speaches lists them), `data` their device, memory, requests in
    flight and time to the idle unload."""
    data = [running_model(models, slot) for slot, _ in models.loaded()]
    return RunningModels(models=[m.id for m in data], data=data)


@router.post(
    "/api/ps/{model_id:path}",
    status_code=201,
    response_class=Response,
    responses={201: {"description": "Loaded."}, **error_responses(404, 409, 502, 503, *COMMON_ERRORS)},
)
async def load_model(model_id: str, models: ModelsDep) -> Response:
    """Load a served model (201 once loaded); 409 `model_already_loaded` if it is, 404 for an unknown model or
    one not downloaded, 503 when it cannot be loaded (`insufficient_memory` when it does not fit)."""
    model = models.resolve(model_id)
    if models.is_loaded(model.id):
        raise already_loaded(model.id)
    if not await run_in_worker(models.load, model.id):
        raise already_loaded(model.id)  # another request loaded it meanwhile
    return Response(status_code=201)


@router.delete(
    "/api/ps/{model_id:path}",
    status_code=204,
    response_class=Response,
    responses={204: {"description": "Unloaded."}, **error_responses(404, 409, *COMMON_ERRORS)},
)
async def unload_model(model_id: str, models: ModelsDep) -> Response:
    """Unload a model once the requests using it have finished (new ones wait, then load it again); 204.
    404 `model_not_found` for an unknown model, `model_not_loaded` for one not loaded; 409 `model_is_remote`
    for a model on the upstream vLLM servers (nothing of it is loaded here)."""
    model = models.resolve(model_id)
    if model.remote:
        raise ModelIsRemoteError(model.id, "nothing of it is loaded here to unload.")
    await run_in_worker(models.unload_loaded, model.id)
    return Response(status_code=204)
