"""What the model registry knows of the served models without loading any: names, slots, which are loaded,
the device and its memory, and what is on disk (`RegistryState`, the base of `registry.ModelRegistry`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..backends.base import ModelBackend
from ..devices import resolve_device, resolve_dtype
from ..errors import ModelNotDownloadedError, ModelUnavailableError
from .catalog import ModelCatalog, ServedModel
from .memory import DeviceMemory, device_memory, disk_bytes, weights_bytes
from .slots import ModelState, Slot

logger = logging.getLogger(__name__)


class RegistryState:
    """The served models' slots and what is known of them: names, loaded or not, device, disk. Thread-safe
    reads; `add_remote` adds slots by replacing the table."""

    def __init__(self, catalog: ModelCatalog, locate: Callable[[ServedModel], Path]) -> None:
        self.catalog = catalog
        self.settings = catalog.settings
        self._locate = locate
        self._slots = {model_id: Slot(model) for model_id, model in catalog.models.items()}
        self._cond = threading.Condition()
        self._runtime: tuple[torch.device, torch.dtype] | None = None

    def resolve(self, name: str) -> ServedModel:
        """The served model `name` means (id, alias or configured source); ModelNotFoundError otherwise."""
        return self.catalog.resolve(name)

    def add_remote(self, upstream_ids: list[str]) -> list[str]:
        """Serve the models an upstream lists that are not served yet (`ModelCatalog.add_remote`); their ids.
        Their slots exist before any name resolves to them."""

        def make_slots(models: list[ServedModel]) -> None:
            with self._cond:
                self._slots = {**self._slots, **{model.id: Slot(model) for model in models}}

        added = self.catalog.add_remote(upstream_ids, before=make_slots)
        if added:
            logger.info("serving %s from the upstreams", ", ".join(model.id for model in added))
        return [model.id for model in added]

    def slot(self, model_id: str) -> Slot:
        """The state of a served model (by id)."""
        return self._slots[model_id]

    def is_loaded(self, model_id: str) -> bool:
        """Whether the served model `model_id` (an id, not an alias) is loaded now."""
        return self._slots[model_id].backend is not None

    def loaded(self) -> list[tuple[Slot, ModelBackend]]:
        """The loaded models with their backends, in the catalog's order."""
        return [(slot, slot.backend) for slot in self._slots.values() if slot.backend is not None]

    def runtime(self) -> tuple[torch.device, torch.dtype]:
        """The device the models run on and the dtype their weights load in (VOXTRAL_DEVICE, VOXTRAL_DTYPE);
        the CPU and float32 when the device asked for is missing (loading then fails and says why)."""
        if self._runtime is None:
            try:
                device = resolve_device(self.settings.device)
            except RuntimeError:
                device = torch.device("cpu")
            self._runtime = (device, resolve_dtype(self.settings.dtype, device))
        return self._runtime

    def device_name(self) -> str:
        """The device the models run on, as `str(torch.device)`; the setting when that device is missing."""
        try:
            return str(resolve_device(self.settings.device))
        except RuntimeError:
            return self.settings.device

    def memory(self) -> DeviceMemory:
        """The device's total and available memory in bytes (None where unknown)."""
        return device_memory(self.runtime()[0])

    def locate(self, model_id: str) -> Path:
        """The checkpoint directory of the served model `model_id`, from the disk alone: ModelNotDownloadedError
        (a hub model not in the cache) or ModelUnavailableError (a local directory missing or unreadable, or a
        remote model, which has none)."""
        model = self._slots[model_id].model
        if model.remote:
            raise ModelUnavailableError(f"The model '{model_id}' is served by the upstreams: no checkpoint here.")
        return self._locate(model)

    def availability(self, model_id: str) -> tuple[bool, str | None]:
        """Whether the served model `model_id` is on disk, and why it cannot be used when that is known: `state`
        without the sizes (no directory walk, no safetensors header read), for `/health`. No network. A remote
        model counts as there (whether an upstream serves it now is the upstreams' state)."""
        if self._slots[model_id].model.remote:
            return True, None
        try:
            self.locate(model_id)
        except ModelNotDownloadedError:
            return False, None
        except ModelUnavailableError as exc:
            return False, exc.message
        return True, None

    def state(self, model_id: str) -> ModelState:
        """What is on disk for the served model `model_id`, without network: downloaded or not, bytes on disk
        (files followed to the cache's blobs), the memory its weights need, its config.json's time. A remote
        model: there, with nothing known of its size."""
        if self._slots[model_id].model.remote:
            return ModelState(True)
        try:
            path = self._locate(self._slots[model_id].model)
        except ModelNotDownloadedError:
            return ModelState(False)
        except ModelUnavailableError as exc:
            return ModelState(False, problem=exc.message)
        try:
            created = int((path / "config.json").stat().st_mtime)
        except OSError:  # unreadable since `locate` looked: no date, not a failure
            created = 0
        return ModelState(True, disk_bytes(path), weights_bytes(path, self.runtime()[1]), created)

    def expires_in(self, slot: Slot) -> float | None:
        """Seconds until the idle unload of a loaded model (VOXTRAL_MODEL_TTL, counted from when its last user
        let go); None when it never expires (a remote model never does), and the full TTL while a request uses it."""
        ttl = self.settings.model_ttl
        if ttl < 0 or slot.model.remote:
            return None
        if slot.users:
            return ttl
        return max(0.0, slot.last_used + ttl - time.monotonic())
