"""`GET /v1/models`, `GET /v1/models/{id}`, `DELETE /v1/models/{id}` and `GET /health`."""

from __future__ import annotations

import time

from fastapi import APIRouter
from starlette.exceptions import HTTPException

from ..backends.vllm.upstreams import UpstreamPool, UpstreamStatus
from ..errors import InvalidRequestError, quote
from ..models.catalog import ServedModel
from ..models.registry import ModelRegistry
from ..models.slots import Slot
from ..protocol import Health, Model, ModelDeleted, ModelList, RunningModel, UpstreamHealth
from ..services.realtime.service import is_realtime_model
from .deps import ModelsDep, UpstreamsDep
from .openapi import COMMON_ERRORS, error_responses
from .workers import run_in_worker

router = APIRouter()


def describe_model(
    models: ModelRegistry, model: ServedModel, alias: str | None = None, upstreams: UpstreamPool | None = None
) -> Model:
    """A served model (or an alias of it, which says what it means) as an OpenAI model object, with what is
    on disk (read from the cache or the directory, no network) and whether it is loaded; for a model on the
    upstreams, those that serve it now."""
    state = models.state(model.id)
    return Model(
        id=alias or model.id,
        created=state.created,
        owned_by=model.owned_by,
        alias_of=model.id if alias else None,
        downloaded=state.downloaded,
        loaded=models.is_loaded(model.id),
        size_bytes=state.size_bytes,
        memory_bytes=state.memory_bytes,
        backend=model.backend,
        realtime=is_realtime_model(model) and not model.remote,
        upstreams=upstreams.serving(model.source) if model.remote and upstreams is not None else None,
    )


def list_all(models: ModelRegistry, upstreams: UpstreamPool | None = None) -> ModelList:
    """Every served model, then every alias."""
    catalog = models.catalog
    data = [describe_model(models, model, None, upstreams) for model in catalog.models.values()]
    data += [
        describe_model(models, catalog.models[target], alias, upstreams) for alias, target in catalog.aliases.items()
    ]
    return ModelList(data=data)


def running_model(models: ModelRegistry, slot: Slot) -> RunningModel:
    """A loaded model as `GET /api/ps` and `/health` list it."""
    device, dtype = models.runtime()
    remote = slot.model.remote
    return RunningModel(
        id=slot.model.id,
        device="vllm" if remote else str(device),
        dtype=None if remote else str(dtype).removeprefix("torch."),
        memory_bytes=slot.memory_bytes,
        requests_in_flight=slot.users,
        idle_seconds=0.0 if slot.users else round(max(0.0, time.monotonic() - slot.last_used), 3),
        expires_in=None if (expires := models.expires_in(slot)) is None else round(expires, 3),
    )


@router.get("/v1/models", responses=error_responses(*COMMON_ERRORS))
async def list_models(models: ModelsDep, upstreams: UpstreamsDep) -> ModelList:
    """The models this server serves and their aliases (an alias has `alias_of`), each with `downloaded`,
    `loaded`, its size on disk and the memory its weights need."""
    return await run_in_worker(list_all, models, upstreams)


@router.get("/v1/models/{model_id:path}", responses=error_responses(404, 405, *COMMON_ERRORS))
async def retrieve_model(model_id: str, models: ModelsDep, upstreams: UpstreamsDep) -> Model:
    """One model by id or alias; 404 for any other name, and 405 for `pull` (which this path would otherwise
    take for a model's name)."""
    if model_id == "pull" and model_id not in models.catalog.names():
        raise HTTPException(405, "Method Not Allowed", headers={"Allow": "POST"})
    model = models.resolve(model_id)
    alias = model_id if model_id in models.catalog.aliases else None
    return await run_in_worker(describe_model, models, model, alias, upstreams)


@router.delete("/v1/models/{model_id:path}", responses=error_responses(400, 404, 409, *COMMON_ERRORS))
async def delete_model(model_id: str, models: ModelsDep) -> ModelDeleted:
    """Remove a downloaded hub model's files from the Hugging Face cache, unloading it first (requests using it
    finish before). 404 for an unknown model or one not downloaded; 409 for a local directory (never
    deleted) or a model being pulled."""
    model = models.resolve(model_id)
    if model_id != model.id and model_id != model.source:  # an alias (whisper-1) must not delete a checkpoint
        raise InvalidRequestError(
            f"{quote(model_id)} is an alias of '{model.id}'; to delete that model's files, name it by its id.",
            param="model_id",
            code="model_is_alias",
        )
    await run_in_worker(models.delete, model.id)
    return ModelDeleted(id=model.id, deleted=True)


@router.get("/health", responses=error_responses(403))
async def health(models: ModelsDep, upstreams: UpstreamsDep) -> Health:
    """Liveness plus model state: lotti's fields about the default model, the device and its memory, the
    loaded models. Always 200 while the server runs, the default model's problem (if any) in `model_error`.
    What touches the disk (is the default model there) runs on a worker thread, never on the event loop."""
    return await run_in_worker(health_of, models, upstreams)


def health_of(models: ModelRegistry, upstreams: UpstreamPool | None = None) -> Health:
    """`/health`'s answer: cheap (the default model located on disk without sizes, no safetensors header read
    nor directory walk; the device's free memory), but it touches the disk, so it runs on a worker thread."""
    default = models.catalog.default
    slot = models.slot(default.id)
    available, problem = models.availability(default.id)
    if default.remote and upstreams is not None and (missing := upstreams.problem(default.source)) is not None:
        available, problem = False, missing
    loaded = models.is_loaded(default.id)
    memory = models.memory()
    return Health(
        model=default.id,
        model_available=available,
        model_loaded=loaded,
        model_error=None if loaded and not default.remote else problem or slot.load_error,
        device=models.device_name(),
        memory_total_bytes=memory.total,
        memory_available_bytes=memory.available,
        loaded_models=[running_model(models, s) for s, _ in models.loaded()],
        max_audio_minutes=models.settings.max_audio_minutes,
        upstreams=None if upstreams is None else [upstream_health(u) for u in upstreams.snapshot()],
    )


def upstream_health(status: UpstreamStatus) -> UpstreamHealth:
    """An upstream's state as `/health` lists it."""
    return UpstreamHealth(
        url=status.url,
        state=status.state,
        in_flight=status.in_flight,
        max_in_flight=status.max_in_flight,
        requests=status.requests,
        models=status.models,
        kind=status.flavor,
        last_error=status.last_error,
        last_error_at=status.last_error_at,
        checked_at=status.checked_at,
    )
