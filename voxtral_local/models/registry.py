"""The served models' lifecycle: which are loaded, loading each once on first use, unloading on demand.

Requests hold a model while they use it (`ModelRegistry.use`); an unload waits until no request holds it, and
requests that arrive meanwhile wait for the unload to end and then load the model again. Loading or unloading
one model never blocks requests to another: each model has its own load lock, and the registry's lock is held
only to count users.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..backends.base import ModelBackend
from ..errors import ModelNotDownloadedError, ModelUnavailableError
from .catalog import ModelCatalog, ServedModel
from .store import cached_path

logger = logging.getLogger(__name__)

# Builds the backend for a served model from its checkpoint directory (not yet loaded).
BackendFactory = Callable[[ServedModel, Path], ModelBackend]


def locate(model: ServedModel) -> Path:
    """The checkpoint directory of a served model, without any network: a local directory with a config.json,
    or the hub snapshot complete in the cache. ModelUnavailableError for a local directory that is missing or
    unreadable; ModelNotDownloadedError for a hub model not in the cache."""
    if model.is_local:
        config = model.directory / "config.json"
        try:
            present = config.is_file()
        except OSError as exc:  # permission denied, a name too long, an I/O error: not just "missing"
            raise ModelUnavailableError(
                f"The model directory '{model.source}' cannot be read: {exc.strerror or exc}."
            ) from exc
        if not present:
            raise ModelUnavailableError(f"The model directory '{model.source}' does not exist or holds no config.json.")
        return model.directory
    path = cached_path(model.source)
    if path is None:
        raise ModelNotDownloadedError(model.id)
    return path


@dataclass
class Slot:
    """One served model's state in the registry."""

    model: ServedModel
    backend: ModelBackend | None = None
    users: int = 0  # requests holding the model now
    unloading: bool = False
    last_used: float = 0.0  # time.monotonic() when the last user let go
    load_error: str | None = None  # why the last load failed

    def __post_init__(self) -> None:
        self.load_lock = threading.Lock()


class ModelRegistry:
    """Loads served models on first use, once, and unloads them on demand."""

    def __init__(
        self, catalog: ModelCatalog, factory: BackendFactory, locate: Callable[[ServedModel], Path] = locate
    ) -> None:
        self.catalog = catalog
        self._factory = factory
        self._locate = locate
        self._slots = {model_id: Slot(model) for model_id, model in catalog.models.items()}
        self._cond = threading.Condition()

    def resolve(self, name: str) -> ServedModel:
        """The served model `name` means (id, alias or configured source); ModelNotFoundError otherwise."""
        return self.catalog.resolve(name)

    def slot(self, model_id: str) -> Slot:
        """The state of a served model (by id)."""
        return self._slots[model_id]

    @contextmanager
    def use(self, name: str) -> Iterator[ModelBackend]:
        """The model `name` means, loaded (loading it first if needed) and held until the block ends: it is not
        unloaded meanwhile. Raises ModelNotFoundError, ModelNotDownloadedError or ModelUnavailableError."""
        slot = self._slots[self.resolve(name).id]
        with self._cond:
            self._cond.wait_for(lambda: not slot.unloading)
            slot.users += 1
        try:
            yield self._ensure_loaded(slot)
        finally:
            with self._cond:
                slot.users -= 1
                slot.last_used = time.monotonic()
                self._cond.notify_all()

    def load(self, name: str) -> bool:
        """Load the model `name` means unless it is loaded; whether this call loaded it."""
        slot = self._slots[self.resolve(name).id]
        was_loaded = slot.backend is not None
        with self.use(name):
            pass
        return not was_loaded

    def unload(self, name: str) -> bool:
        """Unload the model `name` means once no request holds it (requests that arrive meanwhile wait, then
        load it again); whether it was loaded."""
        slot = self._slots[self.resolve(name).id]
        with self._cond:
            self._cond.wait_for(lambda: not slot.unloading)
            if slot.backend is None:
                return False
            slot.unloading = True
            self._cond.wait_for(lambda: slot.users == 0)
        try:
            with slot.load_lock:
                backend, slot.backend = slot.backend, None
                if backend is not None:
                    backend.unload()
                    logger.info("unloaded %s", slot.model.id)
        finally:
            with self._cond:
                slot.unloading = False
                self._cond.notify_all()
        return backend is not None

    def loaded(self) -> list[tuple[Slot, ModelBackend]]:
        """The loaded models with their backends, in the catalog's order."""
        return [(slot, slot.backend) for slot in self._slots.values() if slot.backend is not None]

    def close(self) -> None:
        """Unload every model (at shutdown), without waiting for users."""
        for slot in self._slots.values():
            backend, slot.backend = slot.backend, None
            if backend is not None:
                backend.unload()

    def _ensure_loaded(self, slot: Slot) -> ModelBackend:
        backend = slot.backend
        if backend is not None:
            return backend
        with slot.load_lock:
            if slot.backend is not None:
                return slot.backend
            try:
                path = self._locate(slot.model)
                backend = self._factory(slot.model, path)
                backend.load()
            except ModelUnavailableError as exc:
                slot.load_error = exc.message
                raise
            slot.backend, slot.load_error = backend, None
            return backend
