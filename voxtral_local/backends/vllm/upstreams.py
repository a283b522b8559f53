"""The upstream model servers (VOXTRAL_VLLM_URLS): their state, the choice of one for each request, and the
periodic health check.

Every upstream request of the process runs on one asyncio event loop in a thread of its own ("vllm-upstreams"),
through one `httpx.AsyncClient` (a connection pool with HTTP/1.1 keep-alive). A request goes to the upstream that
is up, lists the model, and has the fewest requests in flight; at VOXTRAL_VLLM_MAX_IN_FLIGHT on every such
upstream it waits for a place. An upstream that refuses a connection or stays silent is marked down by the
request that saw it (`mark_down`) and skipped until the health check (`GET /v1/models` on every upstream each
VOXTRAL_VLLM_HEALTH_INTERVAL_S seconds) sees it answer again. The health check also learns which models each
upstream serves, whether it is vLLM (`owned_by: "vllm"`, which takes vLLM's own form fields) and each model's
context length (vLLM's `max_model_len`), and reports models not seen before (`on_models`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import httpx

from ...config import Settings
from ...errors import UpstreamUnavailableError, shorten

logger = logging.getLogger(__name__)

T = TypeVar("T")
State = Literal["unknown", "up", "down"]
Flavor = Literal["vllm", "openai"]
MAX_LISTED_MODELS = 1000  # more entries than this in an upstream's model list are ignored
MAX_MODEL_ID = 256
KEEPALIVE_S = 4.0  # seconds an idle connection to an upstream is kept for reuse
# Errors of a connection the upstream closed while it sat in the pool: the request never reached it.
STALE_CONNECTION = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


@dataclass
class Upstream:
    """One upstream server: its API root (ending in `/v1`) and what is known of it. Changed on the pool's loop
    only; other threads read it through `UpstreamPool.snapshot`."""

    url: str
    state: State = "unknown"
    in_flight: int = 0
    requests: int = 0  # requests sent to it since the start
    models: frozenset[str] = frozenset()
    context: dict[str, int] = field(default_factory=dict)  # the context length of each model it lists
    flavor: Flavor = "openai"
    last_error: str | None = None
    last_error_at: float | None = None  # Unix time
    checked_at: float | None = None  # Unix time of the last health check's answer or failure


@dataclass(frozen=True)
class UpstreamStatus:
    """A copy of an upstream's state, for `/health`."""

    url: str
    state: State
    in_flight: int
    max_in_flight: int
    requests: int
    models: list[str]
    flavor: Flavor
    last_error: str | None
    last_error_at: float | None
    checked_at: float | None


class UpstreamPool:
    """The upstreams, their loop thread and HTTP client. `start` before use (it waits for a first health check
    of every upstream, at most about VOXTRAL_VLLM_CONNECT_TIMEOUT_S), `close` at the end.

    `on_models` is told (on the loop's thread) the ids of models an upstream lists that it never listed before."""

    def __init__(self, settings: Settings, on_models: Callable[[list[str]], object] | None = None) -> None:
        self.settings = settings
        self.upstreams = [Upstream(url) for url in settings.vllm_url_list]
        self.on_models = on_models
        self.max_in_flight = settings.vllm_max_in_flight
        self.loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None
        self._changed: asyncio.Condition | None = None  # on the loop: places freed, states changed
        self._health: asyncio.Task[None] | None = None
        self._seen: set[str] = set()
        self._lock = threading.Lock()  # start and close

    # ---- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread and the health check; returns after the first check of every upstream."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self.loop.run_forever, name="vllm-upstreams", daemon=True)
            self._thread.start()
        self.submit(self._open()).result()

    async def _open(self) -> None:
        settings = self.settings
        key = settings.vllm_api_key
        headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key is not None else {}
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(settings.vllm_timeout_s, connect=settings.vllm_connect_timeout_s),
            limits=httpx.Limits(
                max_connections=None,  # VOXTRAL_VLLM_MAX_IN_FLIGHT bounds each upstream
                max_keepalive_connections=self.max_in_flight * max(1, len(self.upstreams)),
                # Below the 5 s after which uvicorn (vLLM's server, and this one) closes an idle connection: a
                # connection it has closed is never taken again.
                keepalive_expiry=KEEPALIVE_S,
            ),
        )
        self._changed = asyncio.Condition()
        await self.check()
        self._health = asyncio.create_task(self._check_forever())

    def close(self, timeout: float = 5.0) -> None:
        """Stop the health check, cancel requests still in flight, close the connections and the loop."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(timeout)
        except Exception:  # a stuck close must not hold up the process's exit
            logger.exception("closing the upstream connections failed")
        self.loop.call_soon_threadsafe(self.loop.stop)
        thread.join(timeout)
        if not thread.is_alive():
            self.loop.close()

    async def _shutdown(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run `coroutine` on the pool's loop; its future (cancel it to cancel the coroutine)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    @property
    def client(self) -> httpx.AsyncClient:
        """The HTTP client (on the loop only)."""
        if self._client is None:
            raise RuntimeError("the upstream pool is not started")
        return self._client

    # ---- state -------------------------------------------------------------------------------------------

    def snapshot(self) -> list[UpstreamStatus]:
        """Every upstream's state now (any thread)."""
        return [
            UpstreamStatus(
                url=u.url,
                state=u.state,
                in_flight=u.in_flight,
                max_in_flight=self.max_in_flight,
                requests=u.requests,
                models=sorted(u.models),
                flavor=u.flavor,
                last_error=u.last_error,
                last_error_at=u.last_error_at,
                checked_at=u.checked_at,
            )
            for u in list(self.upstreams)
        ]

    def listing(self, model: str) -> list[Upstream]:
        """The upstreams that are up and list `model` (any thread)."""
        return [u for u in list(self.upstreams) if u.state == "up" and model in u.models]

    def serving(self, model: str) -> list[str]:
        """The URLs of the upstreams that are up and list `model` (any thread)."""
        return [u.url for u in self.listing(model)]

    def problem(self, model: str) -> str | None:
        """Why no upstream can take a request for `model` now; None when one that is up lists it."""
        return None if self.listing(model) else self._unavailable(model)

    def context_tokens(self, model: str) -> int | None:
        """The smallest context length an upstream reports for `model` (vLLM's `max_model_len`); None if none does."""
        lengths = [u.context[model] for u in list(self.upstreams) if model in u.context]
        return min(lengths) if lengths else None

    # ---- choosing an upstream (on the loop) --------------------------------------------------------------

    async def acquire(self, model: str, exclude: Collection[Upstream] = ()) -> Upstream:
        """The up upstream listing `model` with the fewest requests in flight (not one of `exclude`), counted in
        flight until `release`; waits while each is at VOXTRAL_VLLM_MAX_IN_FLIGHT. UpstreamUnavailableError (503)
        when no upstream that is up lists the model."""
        assert self._changed is not None
        async with self._changed:
            while True:
                candidates = [u for u in self.listing(model) if u not in exclude]
                if not candidates:
                    raise UpstreamUnavailableError(self._unavailable(model, exclude))
                free = [u for u in candidates if u.in_flight < self.max_in_flight]
                if free:
                    chosen = min(free, key=lambda u: u.in_flight)
                    chosen.in_flight += 1
                    chosen.requests += 1
                    return chosen
                await self._changed.wait()

    async def release(self, upstream: Upstream) -> None:
        """A request to `upstream` ended."""
        assert self._changed is not None
        async with self._changed:
            upstream.in_flight -= 1
            self._changed.notify_all()

    async def mark_down(self, upstream: Upstream, error: str) -> None:
        """`upstream` failed a request (refused, silent, broken): skip it until a health check sees it again."""
        assert self._changed is not None
        async with self._changed:
            self._record(upstream, error)
            if upstream.state != "down":
                logger.warning("upstream %s is down: %s", upstream.url, error)
            upstream.state = "down"
            self._changed.notify_all()

    def _record(self, upstream: Upstream, error: str) -> None:
        upstream.last_error, upstream.last_error_at = shorten(error, 300), time.time()

    def _unavailable(self, model: str, exclude: Collection[Upstream] = ()) -> str:
        """Why no upstream can take a request for `model` now (for UpstreamUnavailableError)."""
        listing = [u for u in self.upstreams if model in u.models]
        if not listing:
            return (
                f"No upstream serves the model '{model}' now: none of the {len(self.upstreams)} in VOXTRAL_VLLM_URLS "
                "lists it under /v1/models (or none answers). Start vLLM with it, or check VOXTRAL_VLLM_URLS."
            )
        failed = [u for u in listing if u.state != "up" or u in exclude]
        details = "; ".join(f"{u.url}: {u.last_error or u.state}" for u in failed)
        return (
            f"No upstream that serves the model '{model}' can take the request now ({len(failed)} of "
            f"{len(listing)} failed or are down: {details}). Try again once one is back (see /health)."
        )

    # ---- the health check (on the loop) -----------------------------------------------------------------

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.vllm_health_interval_s)
            try:
                await self.check()
            except Exception:  # the health check must not end
                logger.exception("the upstream health check failed")

    async def check(self) -> None:
        """Ask every upstream for its models at once; mark each up or down, and report new models."""
        await asyncio.gather(*(self._check_one(u) for u in self.upstreams))
        new = [m for u in self.upstreams if u.state == "up" for m in sorted(u.models) if m not in self._seen]
        new = list(dict.fromkeys(new))
        if new:
            self._seen.update(new)
            if self.on_models is not None:
                try:
                    self.on_models(new)
                except Exception:
                    logger.exception("adding the models %s failed", new)

    async def _check_one(self, upstream: Upstream) -> None:
        timeout = httpx.Timeout(self.settings.vllm_connect_timeout_s + 2, connect=self.settings.vllm_connect_timeout_s)
        try:
            try:
                response = await self.client.get(f"{upstream.url}/models", timeout=timeout)
            except STALE_CONNECTION:  # once more, on a new connection
                response = await self.client.get(f"{upstream.url}/models", timeout=timeout)
            response.raise_for_status()
            models, context, flavor = parse_model_list(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            error = f"health check: {describe_http_error(exc)}"
            upstream.checked_at = time.time()
            if upstream.state != "down":
                await self.mark_down(upstream, error)
            else:
                self._record(upstream, error)
            return
        assert self._changed is not None
        async with self._changed:
            if upstream.state != "up":
                logger.info("upstream %s is up, serving %s", upstream.url, ", ".join(sorted(models)) or "no model")
            upstream.state, upstream.models, upstream.context, upstream.flavor = "up", models, context, flavor
            upstream.checked_at = time.time()
            self._changed.notify_all()


def parse_model_list(body: Any) -> tuple[frozenset[str], dict[str, int], Flavor]:
    """An upstream's `GET /v1/models` answer: the model ids (aliases this server's own kind lists, with
    `alias_of`, left out), their context lengths where given (`max_model_len`), and whether it is vLLM. ValueError
    for anything but OpenAI's list shape."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise ValueError('the model list is not OpenAI\'s {"data": [...]}')
    models: set[str] = set()
    context: dict[str, int] = {}
    flavor: Flavor = "openai"
    for entry in body["data"][:MAX_LISTED_MODELS]:
        if not isinstance(entry, dict):
            continue
        model_id = entry.get("id")
        if not isinstance(model_id, str) or not model_id or len(model_id) > MAX_MODEL_ID or entry.get("alias_of"):
            continue
        models.add(model_id)
        if entry.get("owned_by") == "vllm":
            flavor = "vllm"
        length = entry.get("max_model_len")
        if isinstance(length, int) and not isinstance(length, bool) and length > 0:
            context[model_id] = length
    return frozenset(models), context, flavor


def describe_http_error(exc: BaseException) -> str:
    """A short description of a failed upstream exchange, for logs, `/health` and error messages."""
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within the timeout ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        return f"connection failed ({shorten(str(exc) or 'refused', 120)})"
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    return f"{type(exc).__name__}: {shorten(str(exc), 160)}"
