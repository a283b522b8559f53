"""The served models' lifecycle: which are loaded, loading each once on first use, unloading on demand, when
idle (`VOXTRAL_MODEL_TTL`) or to make room for another (`VOXTRAL_MODELS_MEMORY_GB`).

Requests hold a model while they use it (`ModelRegistry.use`); an unload waits until no request holds it, and
requests that arrive meanwhile wait for the unload to end and then load the model again. Each model has its own
load lock, and the registry's lock is held only to count users and memory, so requests to a loaded model go on
while another loads or unloads; only a load that unloads idle models to make room holds up requests for those.

Before a load, the weights' memory is estimated from the safetensors headers (`models.memory`) and compared
with what is free: the device's free memory, or what `VOXTRAL_MODELS_MEMORY_GB` leaves beside the loaded
models. Idle loaded models are unloaded, least recently used first, to make room; a model in use never is.
When even that is not enough, the load fails with `InsufficientMemoryError` (503) and nothing is unloaded.

A hub model not in the cache is never downloaded inside a request unless `VOXTRAL_AUTO_DOWNLOAD` is on:
`store.locate` answers `ModelNotDownloadedError` (404) from the cache alone.

A remote model (served by upstream vLLM servers) has no checkpoint here and holds no memory: loading it builds
its client backend, it is never unloaded to make room nor when idle, and it cannot be deleted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..backends.base import ModelBackend
from ..errors import (
    InsufficientMemoryError,
    ModelConflictError,
    ModelIsRemoteError,
    ModelNotDownloadedError,
    ModelNotLoadedError,
    ModelUnavailableError,
)
from .catalog import ModelCatalog, ServedModel
from .memory import gib, return_freed_memory, weights_bytes
from .slots import Lease, Slot
from .state import RegistryState
from .store import ModelStore, cached_path, locate

logger = logging.getLogger(__name__)

GIB = 1024**3
# Builds the backend for a served model from its checkpoint directory (not yet loaded); None for a remote model.
BackendFactory = Callable[[ServedModel, Path | None], ModelBackend]


class ModelRegistry(RegistryState):
    """Loads served models on first use, once, and unloads them on demand, when idle, or to make room.

    `start` starts the idle reaper (a daemon thread; none with VOXTRAL_MODEL_TTL=-1), `close` stops it and
    unloads every model."""

    def __init__(
        self,
        catalog: ModelCatalog,
        factory: BackendFactory,
        locate: Callable[[ServedModel], Path] = locate,
        store: ModelStore | None = None,
    ) -> None:
        super().__init__(catalog, locate)
        self.factory = factory
        self.store = store or ModelStore()
        self._closing = False
        self._reaper: threading.Thread | None = None

    # ---- using, loading, unloading ----------------------------------------------------------------------

    @contextmanager
    def use(self, name: str) -> Iterator[ModelBackend]:
        """The model `name` means, loaded (loading it first if needed) and held until the block ends: it is not
        unloaded meanwhile. Raises ModelNotFoundError, ModelNotDownloadedError, ModelUnavailableError (also
        InsufficientMemoryError), and with VOXTRAL_AUTO_DOWNLOAD the download's ModelDownloadError."""
        with self.acquire(name) as lease:
            yield lease.backend

    def acquire(self, name: str) -> Lease:
        """Like `use`, for a hold that outlives one block (a request loads its model before its stream starts
        and keeps it until the stream ends): the model `name` means, loaded and held until `Lease.release`
        (or the end of a `with` block on the lease). Raises as `use` does, holding nothing then."""
        slot = self._slots[self.resolve(name).id]
        held = self._held(slot)
        held.__enter__()
        try:
            backend = self._ensure_loaded(slot)
        except BaseException:
            held.__exit__(None, None, None)
            raise
        return Lease(slot.model.id, backend, lambda: held.__exit__(None, None, None))

    def load(self, name: str) -> bool:
        """Load the model `name` means unless it is loaded; whether this call loaded it (of many calls at once,
        one loads it and the others find it loaded)."""
        slot = self._slots[self.resolve(name).id]
        with self._held(slot):
            return self._load_slot(slot)

    @contextmanager
    def _held(self, slot: Slot) -> Iterator[Slot]:
        """Count a user of `slot` for the block (after any unload under way has ended)."""
        with self._cond:
            self._cond.wait_for(lambda: not slot.unloading)
            slot.users += 1
        try:
            yield slot
        finally:
            with self._cond:
                slot.users -= 1
                slot.last_used = time.monotonic()
                self._cond.notify_all()

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
        self._finish_unload(slot, "on request")
        return True

    def unload_loaded(self, name: str) -> None:
        """`unload`, but ModelNotLoadedError (404) when the model is not loaded."""
        if not self.unload(name):
            raise ModelNotLoadedError(name)

    def delete(self, name: str) -> int:
        """Delete the hub model `name` means from the cache, unloading it first (once no request holds it);
        the bytes freed. ModelConflictError for a local directory (never deleted) or while it is being pulled;
        ModelNotDownloadedError when it is not in the cache."""
        model = self.resolve(name)
        if model.remote:
            raise ModelIsRemoteError(model.id, "its files are on their machines, not here.")
        if model.is_local:
            raise ModelConflictError(
                f"The model '{model.id}' is the local directory '{model.source}'; voxtral-local deletes only "
                "what it downloaded into the Hugging Face cache. Remove the directory yourself.",
                param="model",
                code="model_is_local",
            )
        slot = self._slots[model.id]
        with self._cond:
            self._cond.wait_for(lambda: not slot.unloading)
            slot.unloading = True  # new users wait until the files are gone, then find it not downloaded
            self._cond.wait_for(lambda: slot.users == 0)
        try:
            with self.store.deleting(model.source):  # 409 while it is pulled; no pull of it starts meanwhile
                if cached_path(model.source) is None and not self.store.cached_folder(model.source):
                    raise ModelNotDownloadedError(
                        model.id, f"The model '{model.id}' is not downloaded: nothing to delete."
                    )
                self._drop_backend(slot, "before deleting it")
                return self.store.delete(model.source)
        finally:
            self._release(slot)

    def _ensure_loaded(self, slot: Slot) -> ModelBackend:
        backend = slot.backend
        if backend is not None:
            return backend
        self._load_slot(slot)
        assert slot.backend is not None  # a user holds it: nothing unloads it meanwhile
        return slot.backend

    def _load_slot(self, slot: Slot) -> bool:
        """Load the slot's model unless it is loaded (the caller holds it as a user); whether this call did.

        A failure of the model's own (its directory, its checkpoint) is kept as `Slot.load_error` for
        `/health`; a memory refusal or a failed eviction is about the other models at that moment and is not."""
        with slot.load_lock:
            if slot.backend is not None:
                return False
            if slot.model.remote:
                path, need = None, 0  # nothing here: the upstreams hold the weights
            else:
                try:
                    path = self._checkpoint(slot.model)
                    need = weights_bytes(path, self.runtime()[1]) or 0
                except ModelUnavailableError as exc:
                    slot.load_error = exc.message
                    raise
                self._make_room(slot, need)  # reserves `need`: given back below whatever happens
            try:
                backend = self.factory(slot.model, path)
                backend.load()
            except BaseException as exc:
                with self._cond:
                    slot.reserved = 0
                    self._cond.notify_all()
                if isinstance(exc, ModelUnavailableError):
                    slot.load_error = exc.message
                raise
            with self._cond:  # the reservation becomes the loaded weights in one step
                slot.backend, slot.load_error, slot.memory_bytes, slot.reserved = backend, None, need, 0
                slot.last_used = time.monotonic()
                self._cond.notify_all()
            logger.info("loaded %s (weights about %s)", slot.model.id, gib(need))
            return True

    def _checkpoint(self, model: ServedModel) -> Path:
        """`locate`, downloading the model first when it is not in the cache and VOXTRAL_AUTO_DOWNLOAD is on
        (joining a pull of it already running)."""
        try:
            return self._locate(model)
        except ModelNotDownloadedError:
            if not self.settings.auto_download or model.is_local:
                raise
        logger.info("downloading %s for a request (VOXTRAL_AUTO_DOWNLOAD)", model.id)
        download = self.store.start(model.source)
        download.done.wait()
        if download.error is not None:
            raise download.error
        return self._locate(model)

    def _make_room(self, slot: Slot, need: int) -> None:
        """Reserve `need` bytes for `slot`'s load, unloading idle models (least recently used first) when that
        makes enough room; InsufficientMemoryError, with nothing unloaded, when it cannot. When unloading one
        of them fails, the others are left loaded, nothing is reserved, and ModelUnavailableError says why."""
        cap = int(self.settings.models_memory_gb * GIB)
        with self._cond:
            others = [s for s in self._slots.values() if s is not slot]
            reserved = sum(s.reserved for s in others)
            if cap:
                free: int | None = cap - reserved - sum(s.memory_bytes for s in others if s.backend is not None)
            else:
                available = self.memory().available
                free = None if available is None else available - reserved
            if free is None or need <= free:
                slot.reserved = need
                return
            victims, room = [], free
            for other in sorted((s for s in others if s.idle and not s.model.remote), key=lambda s: s.last_used):
                if room >= need:
                    break
                victims.append(other)
                room += other.memory_bytes
            if room < need:
                raise InsufficientMemoryError(self._refusal(slot, need, free, cap, others))
            for victim in victims:
                victim.unloading = True
            slot.reserved = need
        for done, victim in enumerate(victims, 1):
            try:
                self._finish_unload(victim, f"to make room for {slot.model.id}")  # releases the victim
            except BaseException as exc:  # the rest stay loaded and usable; the reservation is given back
                for rest in victims[done:]:
                    self._release(rest)
                with self._cond:
                    slot.reserved = 0
                    self._cond.notify_all()
                if not isinstance(exc, Exception):
                    raise
                logger.exception("unloading %s to make room for %s failed", victim.model.id, slot.model.id)
                raise ModelUnavailableError(
                    f"Cannot load the model '{slot.model.id}': unloading the idle model '{victim.model.id}' to make "
                    f"room for it failed ({type(exc).__name__}: {exc}). Try again, or unload a model first "
                    "(DELETE /api/ps/{model_id})."
                ) from exc

    def _refusal(self, slot: Slot, need: int, free: int, cap: int, others: list[Slot]) -> str:
        where = f"of VOXTRAL_MODELS_MEMORY_GB={self.settings.models_memory_gb:g}" if cap else f"on {self.device_name()}"
        busy = [
            f"'{s.model.id}' ({gib(s.memory_bytes)}, {s.users} request{'' if s.users == 1 else 's'})"
            for s in others
            if s.backend and s.users
        ]
        held = f"; in use, so not unloaded: {', '.join(busy)}" if busy else ""
        remedy = "raise VOXTRAL_MODELS_MEMORY_GB" if cap else "free memory on the device"
        if busy:
            advice = (
                f"Try again when those requests have ended, unload a model (DELETE /api/ps/{{model_id}}), or {remedy}."
            )
        else:  # every idle model is unloaded already: waiting does not help
            advice = f"No model in use holds the room, so waiting does not help: {remedy}."
        return (
            f"Not enough memory to load the model '{slot.model.id}': its weights need about {gib(need)}, and "
            f"{gib(max(0, free))} is free {where}{held}. {advice}"
        )

    def _finish_unload(self, slot: Slot, why: str) -> None:
        """Unload a slot marked `unloading` that no request holds, then let waiting users in."""
        try:
            self._drop_backend(slot, why)
        finally:
            self._release(slot)

    def _drop_backend(self, slot: Slot, why: str) -> None:
        with slot.load_lock:
            backend, slot.backend = slot.backend, None
            if backend is not None:
                backend.unload()
                del backend
                return_freed_memory()
                logger.info("unloaded %s %s", slot.model.id, why)

    def _release(self, slot: Slot) -> None:
        with self._cond:
            slot.unloading = False
            if slot.backend is None:
                slot.memory_bytes = 0
            self._cond.notify_all()

    # ---- the idle reaper --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start unloading models idle for VOXTRAL_MODEL_TTL seconds (nothing to start with -1)."""
        if self.settings.model_ttl < 0 or self._reaper is not None:
            return
        self._reaper = threading.Thread(target=self._reap, name="model-reaper", daemon=True)
        self._reaper.start()

    def _reap(self) -> None:
        ttl = self.settings.model_ttl
        while True:
            with self._cond:
                while True:
                    if self._closing:
                        return
                    now = time.monotonic()
                    idle = [s for s in self._slots.values() if s.idle and not s.model.remote]
                    victims = [s for s in idle if now - s.last_used >= ttl]
                    if victims:
                        for victim in victims:
                            victim.unloading = True
                        break
                    self._cond.wait(min((s.last_used + ttl - now for s in idle), default=None))
            for victim in victims:
                try:
                    self._finish_unload(victim, f"after {ttl:g} s idle")
                except Exception:  # an unload that fails must not end the reaper
                    logger.exception("unloading %s failed", victim.model.id)

    def close(self) -> None:
        """Stop the reaper and unload every model (at shutdown), without waiting for users."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._reaper is not None:
            self._reaper.join(timeout=10)
        for slot in self._slots.values():
            backend, slot.backend = slot.backend, None
            if backend is not None:
                backend.unload()
