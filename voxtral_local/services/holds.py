"""A request's model, checked before its audio is decoded and held from its preparation to the end of its work.

A request that must fail before its stream starts (a model that will not load, or that no upstream serves now,
is an error status, not an error event) loads its model first, in a preparation step, and keeps it until its
work ends: without the hold the idle unload (`VOXTRAL_MODEL_TTL=0` right after the preparation), a
`DELETE /api/ps/{id}` or a load that makes room could take the model in between, and the work would load it
again. A hold that is never let go blocks every unload of that model, so each path lets it go: the work at its
end, `close` when the work never starts, and garbage collection as the last resort.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..backends.base import ModelBackend
from ..errors import GenerationCancelledError, ModelNotDownloadedError, ModelNotFoundError
from ..models.catalog import ServedModel
from ..models.registry import Lease, ModelRegistry


def check_available(models: ModelRegistry, name: str) -> ServedModel:
    """The served model `name` means, when a request can use it without the network: loaded, on disk, or a
    hub model that VOXTRAL_AUTO_DOWNLOAD will download on load. Raises ModelNotFoundError (404),
    ModelNotDownloadedError (404) or ModelUnavailableError (503, a local directory that is missing). Reads the
    disk (the hub cache) but never the network: call it on a worker thread, before decoding any audio. A remote
    model passes (its upstreams answer for it when it is used)."""
    model = models.resolve(name)
    if model.remote or models.is_loaded(model.id):
        return model
    try:
        models.locate(model.id)
    except ModelNotDownloadedError:
        if model.is_local or not models.settings.auto_download:
            raise
    return model


def model_id_of(models: ModelRegistry, name: str) -> str:
    """The id of the served model `name` means, for a log line; `name` itself when no served model has it."""
    try:
        return models.resolve(name).id
    except ModelNotFoundError:
        return name


class ModelHold:
    """A request's hold on its loaded model (`ModelRegistry.acquire`), from its preparation to the end of its
    work: the model is not unloaded meanwhile.

    The work enters `work()` once; the hold is let go when that block ends, however it ends. `close()` lets
    it go at once if the work has not begun (the stream never started, the client left, the route failed in
    between) and does nothing otherwise; after it, `work()` raises GenerationCancelledError. A hold that
    neither reaches is let go when it is garbage-collected. Thread-safe."""

    def __init__(self, lease: Lease) -> None:
        self.model_id = lease.model_id
        self._lease = lease
        self._lock = threading.Lock()
        self._state = "held"  # then "working" or "closed"
        self._finalizer = weakref.finalize(self, lease.release)

    @classmethod
    def acquire(
        cls, models: ModelRegistry, name: str, check: Callable[[ModelBackend], None] | None = None
    ) -> ModelHold:
        """Load the model `name` means (unless loaded) and hold it, once its backend says it can take a request
        now (`check_ready`) and `check` (the request's own checks) passes; raises as `ModelRegistry.acquire`, or
        what a check raises, holding nothing then."""
        lease = models.acquire(name)
        try:
            lease.backend.check_ready()
            if check is not None:
                check(lease.backend)
        except BaseException:
            lease.release()
            raise
        return cls(lease)

    @contextmanager
    def work(self) -> Iterator[ModelBackend]:
        """The held model's backend for the block; the hold is let go when the block ends. Raises
        GenerationCancelledError once `close` has let go (the request ended before its work began) and
        RuntimeError when entered twice."""
        with self._lock:
            if self._state == "closed":
                raise GenerationCancelledError("The request ended before its work began.")
            if self._state == "working":
                raise RuntimeError("a model hold's work is entered once")
            self._state = "working"
        try:
            yield self._lease.backend
        finally:
            self._finalizer()

    def close(self) -> None:
        """Let the hold go unless the work has begun (the work lets it go at its end); idempotent."""
        with self._lock:
            if self._state != "held":
                return
            self._state = "closed"
        self._finalizer()

    @property
    def released(self) -> bool:
        """Whether the hold has been let go."""
        return not self._finalizer.alive
