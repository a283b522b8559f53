"""Talking to the API: a running server (`--server URL`) or the real app served in-process on a loopback port.

Both ways go through HTTP with httpx, so a command behaves the same against either; errors come back as the
server's OpenAI envelope and are raised as `ApiError` with its message.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import typer

from ..config import Settings
from .settings_options import load_settings

logger = logging.getLogger(__name__)

ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        metavar="URL",
        help="A running server (http://host:port). Without it the command starts the server in this process "
        "(settings from VOXTRAL_* and .env) and stops it at the end.",
        show_default=False,
    ),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        metavar="KEY",
        help="Sent as `Authorization: Bearer KEY`. [default: VOXTRAL_API_KEY]",
        show_default=False,
    ),
]
# Connecting and sending are bounded; reading is not: a long file can take minutes to transcribe.
TIMEOUT = httpx.Timeout(connect=10.0, read=None, write=300.0, pool=10.0)


class ApiError(Exception):
    """An answer that is not a success, or no answer: `message` is the envelope's message (or what failed)."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


@dataclass
class Api:
    """An httpx client on one server's base URL, raising `ApiError` for error answers."""

    url: str
    client: httpx.Client

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send and read the whole answer; `ApiError` for a status >= 400 or a connection failure."""
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach the server at {self.url}: {exc}") from None
        check(response)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """`request` and its JSON body."""
        return self.request(method, path, **kwargs).json()

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A streamed answer whose status is checked first (`ApiError`, with the envelope read)."""
        try:
            with self.client.stream(method, path, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    check(response)
                yield response
        except httpx.HTTPError as exc:
            raise ApiError(f"the connection to {self.url} failed: {exc}") from None


def check(response: httpx.Response) -> None:
    """Raise `ApiError` with the envelope's message (or the raw body) for a status >= 400."""
    if response.status_code < 400:
        return
    message, code = f"HTTP {response.status_code}", None
    try:
        error = response.json().get("error")
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        error = None
    if isinstance(error, dict):
        message, code = str(error.get("message") or message), error.get("code")
    elif response.text.strip():
        message = f"{message}: {response.text.strip()[:300]}"
    if message == response.reason_phrase:  # "Not Found": say what was not found (a server without the route)
        message = f"{response.request.method} {response.request.url.path}: {message}"
    raise ApiError(message, status=response.status_code, code=code)


def error_message(payload: dict[str, Any]) -> str:
    """The message of an error event's `{"error": {...}}` (or the payload itself)."""
    error = payload.get("error")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return json.dumps(payload)


def client_settings() -> Settings:
    """The settings from the environment and `.env`, for the in-process server and the default API key."""
    return load_settings()


@contextmanager
def connect(server: str | None, api_key: str | None, settings: Settings | None = None) -> Iterator[Api]:
    """An `Api` on `server`, or on the app served in this process for the duration when `server` is None.
    The bearer key is `api_key`, else VOXTRAL_API_KEY."""
    settings = settings or client_settings()
    key = api_key or (settings.api_key.get_secret_value() if settings.api_key else None)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if server is not None:
        url = server_url(server)
        with httpx.Client(base_url=url, headers=headers, timeout=TIMEOUT) as client:
            yield Api(url, client)
        return
    with in_process_server(settings) as url, httpx.Client(base_url=url, headers=headers, timeout=TIMEOUT) as client:
        yield Api(url, client)


@contextmanager
def in_process_server(settings: Settings) -> Iterator[str]:
    """Serve `create_app(settings)` with uvicorn on 127.0.0.1 on a free port in a background thread; yield its
    URL; stop the server and its backends on exit. Log output below WARNING is left out."""
    import uvicorn

    from ..api import create_app
    from ..api.connections import uvicorn_options
    from ..api.shutdown import stop_backends

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the command draws its own progress; loading draws none
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", **uvicorn_options(settings))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="voxtral-server", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise ApiError("the in-process server did not start (see the log above)")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        stop_backends(app)


def local_url(settings: Settings) -> str:
    """The URL of the server the settings describe (VOXTRAL_HOST and VOXTRAL_PORT); a wildcard host is
    reached through loopback."""
    host = settings.host
    if host in ("0.0.0.0", "", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def server_url(server: str) -> str:
    """`--server` as a base URL: `http://` added to a bare `host:port`, trailing slashes removed."""
    server = server.strip().rstrip("/")
    return server if "://" in server else f"http://{server}"


def fail(message: str, status: int = 1) -> typer.Exit:
    """Print `error: message` on stderr; the `typer.Exit` to raise with `status`."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(status)
