"""`create_app(settings)`: the application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .. import __version__
from ..backends.transformers import TransformersBackend
from ..config import Settings
from ..errors import VoxtralError
from ..models.catalog import ModelCatalog
from ..models.registry import ModelRegistry
from ..services.chat import ChatService
from ..services.transcription import TranscriptionService
from . import routes_audio, routes_chat, routes_models, routes_ps, routes_pull
from .access import install_access_control
from .admission import Admission, AdmissionControl
from .body_limit import BodySizeLimit
from .errors import install_error_handlers
from .openapi import install_openapi
from .timeouts import BodyReadTimeout
from .workers import InFlight, run_in_worker

logger = logging.getLogger(__name__)


def create_app(settings: Settings, engine: TransformersBackend | None = None) -> FastAPI:
    """Build the app; the lifespan creates the engine (unless one is given, as the benchmark does) and
    loads it at startup only with `preload`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine_ = engine or TransformersBackend(settings)
        app.state.settings = settings
        app.state.engine = engine_
        # The served models (VOXTRAL_MODEL, VOXTRAL_MODELS) and their lifecycle. Each loads on first use.
        app.state.models = ModelRegistry(
            ModelCatalog(settings),
            lambda model, path: TransformersBackend(settings.model_copy(update={"model": str(path)})),  # type: ignore[arg-type,return-value]  # until it implements ModelBackend
        )
        app.state.models.start()  # the idle unload (VOXTRAL_MODEL_TTL)
        app.state.transcription = TranscriptionService(settings, engine_)
        app.state.chat = ChatService(settings, engine_, app.state.transcription)
        if settings.preload:
            try:
                await run_in_worker(app.state.models.load, app.state.models.catalog.default.id)
            except VoxtralError as exc:  # not downloaded, missing, unloadable, too big: said once, not fatal
                logger.error("preload failed; requests will get an error until it loads: %s", exc.message)
        admission.engine = engine_
        yield
        inflight.stop_all()  # nothing should be left by now; whatever is (a forced exit) stops with the engine
        app.state.models.close()

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
    return app
