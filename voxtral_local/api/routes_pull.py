"""`POST /v1/models/pull`: download a served hub model into the Hugging Face cache, with progress as SSE."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..errors import InvalidRequestError, ModelIsRemoteError, ModelUnavailableError, quote
from ..models.catalog import ServedModel
from ..models.registry import ModelRegistry
from ..models.store import Download, PullProgress
from ..protocol import ModelPullRequest, ModelPullStatus
from . import sse
from .deps import ModelsDep
from .json_body import openapi_body, read_json
from .openapi import COMMON_ERRORS, error_responses
from .workers import run_in_worker

router = APIRouter()


@router.post(
    "/v1/models/pull",
    response_model=None,
    responses={
        200: {
            "model": ModelPullStatus,
            "description": "The outcome; with `stream` (the default), progress as server-sent events.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **error_responses(400, 404, 408, 409, 413, 502, 503, 507, *COMMON_ERRORS),
    },
    openapi_extra=openapi_body(ModelPullRequest, required=False),
)
async def pull_model(request: Request, models: ModelsDep) -> ModelPullStatus | StreamingResponse:
    """Download the served hub model the body names (`model` or `model_name`: an id or alias; default: the
    default model) unless it is complete; a pull of a model being pulled joins that download, and pulls of
    different models run side by side. With `stream` (the default) the progress comes as server-sent events,
    else the outcome when done. A local directory has nothing to pull: its success status at once (one event
    then `[DONE]` when streaming). 409 `model_being_deleted` while `DELETE /v1/models/{id}` removes it, and
    `model_is_remote` for a model on the upstream vLLM servers. The
    optional JSON body (a `ModelPullRequest`) is parsed in a worker thread,
    as chat bodies are."""
    params = await read_json(request, ModelPullRequest, default=ModelPullRequest())
    model, name = _named_model(params, models)
    if model.remote:
        raise ModelIsRemoteError(model.id, "nothing to pull here; `vllm serve` downloads it on their machines.")
    if model.is_local:
        status = await run_in_worker(_local_status, models, model, name)  # reads the directory: off the loop
        if params.stream:
            return StreamingResponse(_one_event(status), media_type="text/event-stream", headers=sse.STREAM_HEADERS)
        return status
    download = models.store.start(model.source)
    if params.stream:
        return StreamingResponse(_events(download, name), media_type="text/event-stream", headers=sse.STREAM_HEADERS)
    async for _ in watch(download):
        pass
    if download.error is not None:
        raise download.error
    return _status("success", name, download.progress)


async def watch(download: Download) -> AsyncIterator[PullProgress]:
    """The download's progress as it changes, until it ends (the outcome is then on `download`)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[PullProgress] = asyncio.Queue()

    def tell(progress: PullProgress) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed; the download goes on without it
            loop.call_soon_threadsafe(queue.put_nowait, progress)

    unsubscribe = download.subscribe(tell)
    try:
        while not download.done.is_set():
            yield await queue.get()
    finally:
        unsubscribe()


async def _events(download: Download, name: str) -> AsyncIterator[str]:
    yield sse.event(_status("pulling", name, download.progress))
    async for progress in watch(download):
        yield sse.event(_status("downloading", name, progress))
    if download.error is not None:
        yield sse.error_event(download.error)
        return
    yield sse.event(_status("success", name, download.progress))
    yield sse.DONE


async def _one_event(status: ModelPullStatus) -> AsyncIterator[str]:
    yield sse.event(status)
    yield sse.DONE


def _named_model(params: ModelPullRequest, models: ModelRegistry) -> tuple[ServedModel, str]:
    """The served model the request names and the name it used (default: the default model's id); 404 for
    a name this server does not serve."""
    if params.model_name and params.model and params.model_name != params.model:
        raise InvalidRequestError(
            f"'model_name' ({quote(params.model_name)}) and 'model' ({quote(params.model)}) name different models.",
            param="model",
        )
    name = params.model_name or params.model or models.catalog.default.id
    return models.resolve(name), name


def _local_status(models: ModelRegistry, model: ServedModel, name: str) -> ModelPullStatus:
    """A checkpoint directory has nothing to pull: it is there (success) or it is not (503, with what to do).
    Reads the directory: call it on a worker thread."""
    if not models.availability(model.id)[0]:
        raise ModelUnavailableError(
            f"The model directory '{model.source}' does not exist or holds no config.json. A local directory "
            "is not pulled: copy the checkpoint there (for example with `hf download <repo> --local-dir "
            f"{model.source}`), or serve a hub id (VOXTRAL_MODEL, VOXTRAL_MODELS) to pull it."
        )
    files = sum(1 for path in model.directory.iterdir() if path.is_file())
    return _status("success", name, PullProgress(files_completed=files, files_total=files))


def _status(status: Literal["pulling", "downloading", "success"], name: str, p: PullProgress) -> ModelPullStatus:
    return ModelPullStatus(
        status=status,
        model=name,
        completed=p.completed,
        total=p.total,
        files_completed=p.files_completed,
        files_total=p.files_total,
    )
