"""`create_app(settings)`: the application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from .. import __version__
from ..backends.base import ModelBackend
from ..backends.realtime import RealtimeBackend, is_realtime_checkpoint
from ..backends.transformers import TransformersBackend
from ..backends.vllm import UpstreamPool, VllmBackend
from ..config import Settings
from ..errors import VoxtralError
from ..models.catalog import ModelCatalog, ServedModel
from ..models.registry import ModelRegistry, locate
from ..services.chat import ChatService
from ..services.realtime import RealtimeService
from ..services.transcription import TranscriptionService
from . import routes_audio, routes_chat, routes_models, routes_ps, routes_pull, routes_realtime
from .access import install_access_control
from .admission import Admission, AdmissionControl
from .body_limit import BodySizeLimit
from .errors import install_error_handlers
from .openapi import install_openapi
from .routes_web import install_web_page
from .timeouts import BodyReadTimeout
from .workers import InFlight, run_in_worker

logger = logging.getLogger(__name__)


def model_registry(
    settings: Settings, backends: Mapping[str, ModelBackend] | None = None, upstreams: UpstreamPool | None = None
) -> ModelRegistry:
    """The served models (VOXTRAL_MODEL, VOXTRAL_MODELS) with a `TransformersBackend` each (a `RealtimeBackend`
    for a Voxtral Realtime checkpoint), loaded on first use, or a `VllmBackend` on `upstreams` for a remote one
    (VOXTRAL_BACKEND=vllm, or a model the upstreams list; the registry learns those from the pool's health
    check). `backends` are built already (by id; the
    benchmark's model lives only in memory): the registry takes them as they are, with no checkpoint directory
    looked for. Such a backend cannot be loaded again once unloaded, so serve it with `VOXTRAL_MODEL_TTL=-1` (the
    benchmark does)."""
    given = dict(backends or {})
    catalog = ModelCatalog(settings)
    unknown = set(given) - set(catalog.models)
    if unknown:
        raise ValueError(f"backends given for models that are not served: {sorted(unknown)}")

    def factory(model: ServedModel, path: Path | None) -> ModelBackend:
        if model.id in given:
            return given[model.id]
        if model.remote:
            assert upstreams is not None  # a remote model exists only with VOXTRAL_VLLM_URLS
            return VllmBackend(model.id, model.source, upstreams, settings)
        assert path is not None
        if is_realtime_checkpoint(path):  # Voxtral Realtime: live streams as well as files
            return RealtimeBackend(model.id, path, settings)
        return TransformersBackend(model.id, path, settings)

    def find(model: ServedModel) -> Path:
        return Path(model.source) if model.id in given else locate(model)

    registry = ModelRegistry(catalog, factory, find)
    if upstreams is not None:
        upstreams.on_models = registry.add_remote
    return registry


def create_app(settings: Settings, backends: Mapping[str, ModelBackend] | None = None) -> FastAPI:
    """Build the app. The lifespan creates the model registry (with `backends`, built already, registered as
    loaded) and the services, and loads the default model at startup only with `preload`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        upstreams = app.state.upstreams = UpstreamPool(settings) if settings.vllm_url_list else None
        models = app.state.models = model_registry(settings, backends, upstreams)
        if upstreams is not None:  # the first health check, which adds the models the upstreams list
            await run_in_worker(upstreams.start)
            default = models.catalog.default
            if default.remote and (problem := upstreams.problem(default.source)) is not None:
                logger.warning("the default model cannot be served yet: %s", problem)
        models.start()  # the idle unload (VOXTRAL_MODEL_TTL)
        app.state.transcription = TranscriptionService(settings, models)
        app.state.chat = ChatService(settings, models, app.state.transcription)
        app.state.realtime = RealtimeService(settings, models, app.state.transcription)
        for model_id in backends or {}:
            await run_in_worker(models.load, model_id)
        if settings.preload:
            try:
                await run_in_worker(models.load, models.catalog.default.id)
            except VoxtralError as exc:  # not downloaded, missing, unloadable, too big: said once, not fatal
                logger.error("preload failed; requests will get an error until it loads: %s", exc.message)
        admission.models = models
        yield
        inflight.stop_all()  # nothing should be left by now; whatever is (a forced exit) stops with the backends
        models.close()
        if upstreams is not None:
            await run_in_worker(upstreams.close)

    app = FastAPI(title="voxtral-local", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    install_openapi(app)
    # Admission and the registry of running work exist with the app, so that the server (api/shutdown.py)
    # can drain and stop its work on a signal.
    inflight = app.state.inflight = InFlight()
    admission = app.state.admission = Admission(settings)
    app.add_middleware(AdmissionControl, admission=admission, inflight=inflight)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(BodyReadTimeout, timeout_s=settings.body_timeout_s)
    install_access_control(app, settings)  # outermost: refusals come before any body is read
    app.include_router(routes_audio.router)
    app.include_router(routes_chat.router)
    app.include_router(routes_models.router)
    app.include_router(routes_pull.router)
    app.include_router(routes_ps.router)
    app.include_router(routes_realtime.router)
    install_web_page(app)
    return app
