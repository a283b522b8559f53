"""The registry's record of each served model (`Slot`), what is on disk for one (`ModelState`), and a request's
hold on a loaded model (`Lease`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..backends.base import ModelBackend
from .catalog import ServedModel


@dataclass
class Slot:
    """One served model's state in the registry."""

    model: ServedModel
    backend: ModelBackend | None = None
    users: int = 0  # requests holding the model now
    unloading: bool = False  # an unload (or a deletion) is under way: new users wait
    last_used: float = 0.0  # time.monotonic() when it loaded or the last user let go
    load_error: str | None = None  # why the last load failed for a reason of its own (not memory)
    memory_bytes: int = 0  # the estimated weights of the loaded model
    reserved: int = 0  # the estimate while it loads

    def __post_init__(self) -> None:
        self.load_lock = threading.Lock()

    @property
    def idle(self) -> bool:
        """Loaded, used by no request, and not being unloaded."""
        return self.backend is not None and self.users == 0 and not self.unloading


@dataclass(frozen=True)
class ModelState:
    """What is on disk for a served model: whether it is there, its size, the memory its weights need (bytes),
    when it was written (Unix time), and why it cannot be used when that is known."""

    downloaded: bool
    size_bytes: int | None = None
    memory_bytes: int | None = None
    created: int = 0
    problem: str | None = None


class Lease:
    """A hold on a loaded model (`ModelRegistry.acquire`): it is not unloaded until released. Releasing twice
    is harmless; a `with` block releases at its end."""

    def __init__(self, model_id: str, backend: ModelBackend, release: Callable[[], object]) -> None:
        self.model_id = model_id
        self.backend = backend
        self._release: Callable[[], object] | None = release
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            release, self._release = self._release, None
        if release is not None:
            release()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
