"""A thread of its own for each long blocking wait of a session (a model load, a whole utterance's
transcription), so that those never queue short work (VAD pushes, audio decoding) behind them in asyncio's
shared default executor (min(32, CPUs + 4) threads)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

R = TypeVar("R")


async def in_thread(fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """`fn(*args, **kwargs)` on a new daemon thread; its result or exception, awaited without blocking the
    event loop. A cancelled caller stops waiting; the thread runs on to its end (signal it through a cancel
    event) and its outcome is dropped."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[R] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def target() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the awaiting task
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name="voxtral-realtime", daemon=True).start()
    return await future
