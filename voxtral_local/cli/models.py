"""`pull`, `ls`, `ps` and `rm`: the model endpoints from a terminal."""

from __future__ import annotations

import contextlib
import json
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.progress import Progress

from ..protocol import ModelDeleted, ModelList, ModelPullStatus, RunningModels
from .client import (
    ApiError,
    ApiKeyOption,
    ServerOption,
    client_settings,
    connect,
    error_message,
    fail,
    local_url,
    server_url,
)
from .progress import ProgressOption, QuietOption, download_progress, events, progress_console

ModelArgument = Annotated[
    str, typer.Argument(metavar="MODEL", help="A served model's id or alias.", show_default=False)
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the server's JSON answer instead of a table.")]


def pull(
    model: Annotated[
        str | None,
        typer.Argument(metavar="MODEL", help="A served model's id or alias. [default: the default model]"),
    ] = None,
    server: ServerOption = None,
    api_key: ApiKeyOption = None,
    progress: ProgressOption = False,
    quiet: QuietOption = False,
) -> None:
    """Download a served model into the Hugging Face cache. POST /v1/models/pull, with a progress bar."""
    console = progress_console(progress, quiet)
    try:
        with connect(server, api_key) as api:
            body: dict[str, Any] = {"stream": True} if model is None else {"model": model, "stream": True}
            with api.stream("POST", "/v1/models/pull", json=body) as response:
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    response.read()
                    final = ModelPullStatus.model_validate_json(response.content)
                else:
                    bar = download_progress(console) if console is not None else None
                    with bar if bar is not None else contextlib.nullcontext():
                        final = _follow(response, model or "default model", bar)
    except ApiError as exc:
        raise fail(exc.message) from None
    if not quiet:
        size = f", {_size(final.total)}" if final.total else ""
        typer.echo(f"{final.model}: {final.status} ({final.files_total} files{size})", err=True)


def _follow(response: Any, model: str, bar: Progress | None) -> ModelPullStatus:
    """Drive `bar` from the pull's events; the last status, or ApiError for an error event or an early end."""
    task = bar.add_task(model, total=None) if bar is not None else None
    last: ModelPullStatus | None = None
    for event in events(response):
        if event.done:
            break
        if event.data is None:
            continue
        if "error" in event.data:
            raise ApiError(error_message(event.data))
        last = ModelPullStatus.model_validate(event.data)
        if bar is not None and task is not None:
            bar.update(task, completed=last.completed, total=last.total or None)
    if last is None or last.status != "success":
        raise ApiError("the pull ended before it succeeded")
    return last


def ls(server: ServerOption = None, api_key: ApiKeyOption = None, as_json: JsonOption = False) -> None:
    """List the served models and aliases. GET /v1/models: downloaded, loaded, size on disk, memory."""
    try:
        with connect(server, api_key) as api:
            answer = api.json("GET", "/v1/models")
    except ApiError as exc:
        raise fail(exc.message) from None
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    models = ModelList.model_validate(answer).data
    rows = [
        [
            m.id,
            m.alias_of or "",
            _yes(m.downloaded),
            _yes(m.loaded),
            _size(m.size_bytes),
            _size(m.memory_bytes),
        ]
        for m in models
    ]
    _table(["ID", "ALIAS OF", "DOWNLOADED", "LOADED", "SIZE", "MEMORY"], rows)


def ps(server: ServerOption = None, api_key: ApiKeyOption = None, as_json: JsonOption = False) -> None:
    """List the loaded models of a running server. GET /api/ps; without --server, the server at VOXTRAL_HOST
    and VOXTRAL_PORT."""
    settings = client_settings()
    url = server_url(server) if server else local_url(settings)
    try:
        with connect(url, api_key, settings) as api:
            answer = api.json("GET", "/api/ps")
    except ApiError as exc:
        if exc.status is None:
            hint = "" if server else " (start one with `voxtral-local serve`, or name one with --server)"
            raise fail(f"no server is running at {url}{hint}") from None
        raise fail(exc.message) from None
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    running = RunningModels.model_validate(answer).data
    if not running:
        typer.echo("no model is loaded", err=True)
        return
    rows = [
        [
            m.id,
            m.device,
            m.dtype or "",
            _size(m.memory_bytes),
            str(m.requests_in_flight),
            f"{m.idle_seconds:.0f} s",
            "never" if m.expires_in is None else f"{m.expires_in:.0f} s",
        ]
        for m in running
    ]
    _table(["ID", "DEVICE", "DTYPE", "MEMORY", "IN FLIGHT", "IDLE", "UNLOADS IN"], rows)


def rm(model: ModelArgument, server: ServerOption = None, api_key: ApiKeyOption = None) -> None:
    """Delete a downloaded hub model's files from the cache. DELETE /v1/models/{id}; a local directory is
    never deleted."""
    try:
        with connect(server, api_key) as api:
            answer = ModelDeleted.model_validate(api.json("DELETE", f"/v1/models/{quote(model, safe='/')}"))
    except ApiError as exc:
        raise fail(exc.message) from None
    typer.echo(f"{answer.id}: {'deleted' if answer.deleted else 'nothing to delete'}")


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _size(n: int | None) -> str:
    """Bytes as `1.2 GB`/`340 MB`/`12 kB` (powers of 1000); empty when unknown."""
    if n is None:
        return ""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _table(header: list[str], rows: list[list[str]]) -> None:
    """Columns aligned with two spaces, as `docker ps` and `ollama ls` print them."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
