"""Run blocking engine work in a worker thread, stopping it when the client goes away."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from fastapi import Request
from starlette.concurrency import run_in_threadpool

R = TypeVar("R")
DeltaWork = Callable[[Callable[[str], None], threading.Event], R]


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Done(Generic[R]):
    result: R


@dataclass(frozen=True)
class Failed:
    error: BaseException


async def run_until_disconnect(request: Request, work: Callable[[threading.Event], R]) -> R:
    """Run `work(cancel)` in a thread; `cancel` is set if the client disconnects before it ends."""
    cancel = threading.Event()

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        cancel.set()

    watcher = asyncio.create_task(watch())
    try:
        return await run_in_threadpool(work, cancel)
    finally:
        watcher.cancel()


async def stream_deltas(work: DeltaWork[R]) -> AsyncIterator[Delta | Done[R] | Failed]:
    """Run `work(emit, cancel)` in a thread and yield its deltas as they come, then Done or Failed.

    When the consumer stops early (the response was cancelled because the client left), the cancel
    event is set and the engine stops within a decoding step or two.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Delta | Done[R] | Failed] = asyncio.Queue()
    cancel = threading.Event()

    def emit(text: str) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, Delta(text))

    def run() -> None:
        outcome: Done[R] | Failed
        try:
            outcome = Done(work(emit, cancel))
        except BaseException as exc:  # handed to the consumer, which reports it in the stream
            outcome = Failed(exc)
        loop.call_soon_threadsafe(queue.put_nowait, outcome)

    future = loop.run_in_executor(None, run)
    try:
        while True:
            item = await queue.get()
            yield item
            if not isinstance(item, Delta):
                break
    finally:
        cancel.set()
        if not future.done():
            future.add_done_callback(lambda f: f.exception())  # the thread ends on its own; reap its result
