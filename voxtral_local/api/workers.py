"""Threads for request work, and the registry of running model work that a shutdown stops.

Every blocking step of an admitted request (decoding its upload, preparing a chat, waiting for the model)
runs on a thread of its own, started for it: how many run at once is set by admission
(`api/admission.py`), not by the size of a pool. A shared pool would be a second, hidden limit: asyncio's
default executor has min(32, CPUs + 4) threads (six on two cores, so a seventh stream waited for one of six
long ones to end), and Starlette's `run_in_threadpool` shares anyio's 40 tokens with every sync dependency.
The threads are daemon threads, so a forced exit is not held up by work it abandons.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ..errors import GenerationCancelledError, ServerShuttingDownError

R = TypeVar("R")

STOPPED_MESSAGE = "The server is shutting down; this request was stopped before it finished."


async def run_in_worker(fn: Callable[..., R], *args: Any) -> R:
    """`fn(*args)` on a new daemon thread; its result or exception, awaited without blocking the event loop.

    If the awaiting task is cancelled the thread runs on to its end (signal it through a cancel event
    passed in `args`); its outcome is then dropped."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[R] = loop.create_future()

    def target() -> None:
        result: R | None = None
        error: BaseException | None = None
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the awaiting task
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
            loop.call_soon_threadsafe(_settle, future, result, error)

    threading.Thread(target=target, name="voxtral-request", daemon=True).start()
    return await future


def _settle(future: asyncio.Future[Any], result: object, error: BaseException | None) -> None:
    if future.done():  # the awaiting task was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class InFlight:
    """The cancel events of the model work running now.

    `stop_all` (at the shutdown deadline, or on a forced exit) sets every one of them, so the backend drops
    those jobs at its next step, and refuses work that tries to start afterwards. A request whose work was
    stopped that way reports `ServerShuttingDownError` (503, or an error event in a stream) instead of
    `GenerationCancelledError`.
    """

    def __init__(self) -> None:
        # Re-entrant: a second Ctrl-C runs `stop_all` in a signal handler on the event loop's thread, which may
        # be inside `track` or `__len__` holding the lock at that moment.
        self._lock = threading.RLock()
        self._events: set[threading.Event] = set()
        self.draining = False  # a shutdown has begun: new model requests are refused
        self.stopped = False  # the deadline has passed: running work was cancelled

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)

    @contextlib.contextmanager
    def track(self, cancel: threading.Event) -> Iterator[None]:
        """Register `cancel` for the block's duration; ServerShuttingDownError if work has been stopped.

        A `GenerationCancelledError` raised in the block after `stop_all` becomes `ServerShuttingDownError`."""
        with self._lock:
            if self.stopped:
                raise ServerShuttingDownError(STOPPED_MESSAGE)
            self._events.add(cancel)
        try:
            yield
        except GenerationCancelledError as exc:
            if self.stopped:
                raise ServerShuttingDownError(STOPPED_MESSAGE) from exc
            raise
        finally:
            with self._lock:
                self._events.discard(cancel)

    def shutdown_error(self, error: BaseException) -> BaseException:
        """`error` as the client should see it: a cancellation caused by `stop_all` is the shutdown's."""
        if self.stopped and isinstance(error, GenerationCancelledError):
            return ServerShuttingDownError(STOPPED_MESSAGE)
        return error

    def drain(self) -> None:
        """A shutdown has begun: new model requests are refused (running ones go on)."""
        self.draining = True

    def stop_all(self) -> None:
        """Cancel every running piece of model work, and any that would start later."""
        with self._lock:
            self.draining = self.stopped = True
            events = list(self._events)
        for event in events:
            event.set()
