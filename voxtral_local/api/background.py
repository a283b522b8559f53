"""Run blocking model work on a thread, stopping it when the client goes away or the server shuts down."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ..errors import ServerShuttingDownError
from .workers import InFlight, run_in_worker

R = TypeVar("R")


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Progress:
    """Seconds of audio done, and in all (None while unknown)."""

    done: float
    total: float | None


Emit = Callable[[str | Progress], None]  # hands a text delta or a progress report to the stream
DeltaWork = Callable[[Emit, threading.Event], R]


@dataclass(frozen=True)
class Done(Generic[R]):
    result: R


@dataclass(frozen=True)
class Failed:
    error: BaseException


def inflight_of(request: Request) -> InFlight:
    """The app's registry of running model work (created with the app)."""
    inflight: InFlight = request.app.state.inflight
    return inflight


async def run_until_disconnect(request: Request, work: Callable[[threading.Event], R]) -> R:
    """Run `work(cancel)` on a thread of its own; `cancel` is set if the client disconnects before it ends,
    if the server stops its work at the shutdown deadline (then ServerShuttingDownError is raised), or if
    this task is cancelled (a forced exit), so the model never computes for nobody."""
    cancel = threading.Event()

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        cancel.set()

    watcher = asyncio.create_task(watch())
    try:
        with inflight_of(request).track(cancel):
            return await run_in_worker(work, cancel)
    finally:
        cancel.set()  # harmless once the work has ended
        watcher.cancel()


async def stream_deltas(work: DeltaWork[R], inflight: InFlight) -> AsyncIterator[Delta | Progress | Done[R] | Failed]:
    """Run `work(emit, cancel)` on a thread of its own and yield its deltas (and progress reports) as they
    come, then Done or Failed.

    When the consumer stops early (the response was cancelled because the client left), the cancel
    event is set and the backend stops within a decoding step or two. Work stopped by the shutdown deadline
    ends with Failed(ServerShuttingDownError).
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Delta | Progress | Done[R] | Failed] = asyncio.Queue()
    cancel = threading.Event()

    def emit(item: str | Progress) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item if isinstance(item, Progress) else Delta(item))

    def run() -> None:
        outcome: Done[R] | Failed
        try:
            outcome = Done(work(emit, cancel))
        except BaseException as exc:  # handed to the consumer, which reports it in the stream
            outcome = Failed(inflight.shutdown_error(exc))
        with contextlib.suppress(RuntimeError):  # the loop has closed (a forced exit)
            loop.call_soon_threadsafe(queue.put_nowait, outcome)

    try:
        with inflight.track(cancel):
            threading.Thread(target=run, name="voxtral-stream", daemon=True).start()
            while True:
                item = await queue.get()
                yield item
                if isinstance(item, Done | Failed):
                    break
    except ServerShuttingDownError as exc:  # the deadline had passed before the work could start
        yield Failed(exc)
    finally:
        cancel.set()


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that calls `on_close` once it is over, however it ends: sent whole, failed, or
    cancelled (the client left) before or after its body began, so that what a request held for its stream
    (its model) is let go even when the body is never iterated."""

    def __init__(self, *args: Any, on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
