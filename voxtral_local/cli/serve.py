"""`serve` (start the server) and `config` (the effective settings), and the one-line startup summary."""

from __future__ import annotations

import json
import logging
from typing import Annotated

import typer

from ..config import Settings
from .settings_options import MASK, effective, env_name, with_settings_options

logger = logging.getLogger("voxtral_local")


@with_settings_options
def serve(settings: Settings) -> None:
    """Start the server. `python -m voxtral_local` with no command and ./start_server.sh do the same; Ctrl-C
    or SIGTERM stops it gracefully."""
    run_server(settings)


def run_server(settings: Settings) -> None:
    """Set up logging, log the startup line and any exposure warning, and serve until SIGINT/SIGTERM."""
    from ..api import create_app
    from ..api.access import warn_if_exposed
    from ..api.connections import uvicorn_options
    from ..api.shutdown import serve as serve_app

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.info("%s", startup_line(settings))
    warn_if_exposed(settings)
    # returns after a graceful shutdown on SIGTERM/SIGINT: exit 0
    serve_app(create_app(settings), settings, **uvicorn_options(settings))


def startup_line(settings: Settings) -> str:
    """One line: the model(s), device and dtype (resolved from `auto`), address, and the limits."""
    from ..devices import resolve_device, resolve_dtype
    from ..models.catalog import ModelCatalog

    catalog = ModelCatalog(settings)
    served = [f"{m.id}" + ("" if m.id == m.source else f" ({m.source})") for m in catalog.models.values()]
    models = f"models {', '.join(served)} (default {catalog.default.id})"
    models += f", unload {ttl_words(settings.model_ttl)}"
    try:
        device = resolve_device(settings.device)
        where = f"device {device}, dtype {str(resolve_dtype(settings.dtype, device)).removeprefix('torch.')}"
    except RuntimeError as exc:
        where = f"device {settings.device} ({exc}), dtype {settings.dtype}"

    def auto(value: float, unit: str = "") -> str:
        return "auto" if not value else f"{value:g}{unit}"

    limits = (
        f"max upload {settings.max_upload_mb:g} MiB, max audio {settings.max_audio_minutes:g} min, "
        f"max queue {auto(settings.max_queue)}, batch size {auto(settings.batch_size)}, "
        f"memory budget {auto(settings.memory_budget_gb, ' GiB')}"
    )
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"voxtral-local: {models}; {where}; listening on {host}:{settings.port}; {limits}"


def ttl_words(ttl: float) -> str:
    """When an idle model is unloaded, as the registry reads VOXTRAL_MODEL_TTL (seconds): any negative value
    means never, 0 right after each request."""
    if ttl < 0:
        return "never"
    if ttl == 0:
        return "after each request"
    return f"after {ttl:g} s idle"


@with_settings_options
def config(
    settings: Settings,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object (field names as keys).")] = False,
) -> None:
    """Print the effective settings. The options given here win over VOXTRAL_* variables, which win over
    .env, which wins over the defaults; the API key is masked."""
    values = effective(settings)
    if as_json:
        typer.echo(json.dumps(values, indent=2))
        return
    for name, value in values.items():
        shown = MASK if value == MASK else "" if value is None else value
        if isinstance(shown, bool):
            shown = str(shown).lower()
        typer.echo(f"{env_name(name)}={shown}")
