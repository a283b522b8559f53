"""Which models this server serves and which names mean them.

`VOXTRAL_MODEL` is the default model; `VOXTRAL_MODELS` adds more. Each is a hub id (served under that id) or
a local checkpoint directory (served under the directory's name); `VOXTRAL_SERVED_MODEL_NAME` renames the
default. Aliases are names that mean a served model: the built-in ones (OpenAI's transcription model names
mean the default model, so that clients written for OpenAI work unchanged; `voxtral-mini`/`voxtral-small`/
`voxtral-realtime` mean Mistral's hub ids) and `VOXTRAL_MODEL_ALIASES`. An alias whose model is not served is left out.

A model is served by this process (`backend="transformers"`) or by upstream vLLM servers (`backend="vllm"`,
`remote`): with `VOXTRAL_BACKEND=vllm` the configured models are upstream model ids, and the models the upstreams
list are added as they are found (`add_remote`), also with `VOXTRAL_BACKEND=transformers` for those not served
here. The model tables are replaced, never changed in place, so that readers on other threads iterate safely.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..config import Settings
from ..errors import ModelNotFoundError

VOXTRAL_MINI = "mistralai/Voxtral-Mini-3B-2507"
VOXTRAL_SMALL = "mistralai/Voxtral-Small-24B-2507"
VOXTRAL_REALTIME = "mistralai/Voxtral-Mini-4B-Realtime-2602"
DEFAULT_MODEL_ALIASES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
HUB_ALIASES = {"voxtral-mini": VOXTRAL_MINI, "voxtral-small": VOXTRAL_SMALL, "voxtral-realtime": VOXTRAL_REALTIME}
BackendName = Literal["transformers", "vllm"]
PATH_PREFIXES = ("/", ".", "~")  # a model source starting so is a directory, whether it exists or not


def is_local_source(source: str) -> bool:
    """True when `source` names a directory rather than a hub id: it starts with `/`, `.` or `~`, or is an
    existing directory (a path that cannot be inspected counts as a path)."""
    if source.startswith(PATH_PREFIXES):
        return True
    try:
        return Path(source).expanduser().is_dir()
    except OSError:  # a name too long, no permission: still a path
        return True


@dataclass(frozen=True)
class ServedModel:
    """One model this server serves: the id clients send, and where its checkpoint comes from."""

    id: str
    source: str  # hub id, or the directory as configured; for a remote model, the id its upstreams list
    is_default: bool
    backend: BackendName = "transformers"

    @property
    def remote(self) -> bool:
        """Served by upstream model servers (VOXTRAL_VLLM_URLS), not in this process."""
        return self.backend == "vllm"

    @property
    def is_local(self) -> bool:
        """A checkpoint directory on this machine (never for a remote model)."""
        return not self.remote and is_local_source(self.source)

    @property
    def directory(self) -> Path:
        """The checkpoint directory of a local model (expanded, not resolved)."""
        return Path(self.source).expanduser()

    @property
    def owned_by(self) -> str:
        """The hub organisation, or `local` for a directory."""
        if self.remote:
            return self.source.split("/", 1)[0] if "/" in self.source else "vllm"
        return "local" if self.is_local or "/" not in self.source else self.source.split("/", 1)[0]


class ModelCatalog:
    """The served models and their aliases: the configured ones from the settings at startup, and remote models
    added as the upstreams list them (`add_remote`).

    Raises ValueError (at construction) when two models would share an id, an alias names no served model and
    is not built in, or (VOXTRAL_BACKEND=vllm) a configured model is a directory."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        backend: BackendName = settings.backend
        sources = [settings.model, *(s.strip() for s in settings.models.split(",") if s.strip())]
        models: dict[str, ServedModel] = {}
        self._sources: dict[str, str] = {}  # the configured source strings, also accepted as names
        self._lock = threading.Lock()  # serialises `add_remote` (the tables are replaced, not changed)
        for i, source in enumerate(sources):
            if backend == "vllm" and source.startswith(PATH_PREFIXES):
                raise ValueError(
                    f"'{source}' is a directory, but VOXTRAL_BACKEND=vllm serves the models of the upstreams: "
                    "name them by the id they list under /v1/models"
                )
            served_name = settings.served_model_name if i == 0 else None
            model_id = served_name or (source if backend == "vllm" else _model_id(source, None))
            if model_id in models:
                if models[model_id].source == source:
                    continue  # listed twice: served once
                raise ValueError(f"two served models would share the id '{model_id}': set different directories")
            models[model_id] = ServedModel(model_id, source, is_default=i == 0, backend=backend)
            self._sources.setdefault(source, model_id)
        self.models = models
        self.default = next(iter(self.models.values()))
        self.aliases: dict[str, str] = {}
        for alias in DEFAULT_MODEL_ALIASES:
            self.aliases[alias] = self.default.id
        for alias, hub_id in HUB_ALIASES.items():
            target = self._by_source(hub_id)
            if target is not None:
                self.aliases[alias] = target
        for item in (i.strip() for i in settings.model_aliases.split(",") if i.strip()):
            alias, _, target = (part.strip() for part in item.partition("="))
            target_id = self.default.id if not target else self._find(target)
            if not alias:
                raise ValueError(f"VOXTRAL_MODEL_ALIASES: '{item}' names no alias")
            if target_id is None:
                raise ValueError(f"VOXTRAL_MODEL_ALIASES: '{target}' (for '{alias}') is not a served model")
            if alias in self.models:
                raise ValueError(f"VOXTRAL_MODEL_ALIASES: '{alias}' is already a served model's id")
            self.aliases[alias] = target_id

    def add_remote(
        self, upstream_ids: Iterable[str], before: Callable[[list[ServedModel]], object] | None = None
    ) -> list[ServedModel]:
        """Serve the models an upstream lists (by the ids it lists) that no served model is or names as its
        source; the ones added. `before` is told them before any name resolves to them (the registry makes
        their slots). `voxtral-mini`/`voxtral-small`/`voxtral-realtime` come to mean Mistral's hub ids once those
        are served, unless VOXTRAL_MODEL_ALIASES gave those names."""
        added = []
        with self._lock:
            models, sources, aliases = dict(self.models), dict(self._sources), dict(self.aliases)
            for upstream_id in upstream_ids:
                if not upstream_id or upstream_id in models or upstream_id in sources or upstream_id in aliases:
                    continue
                model = ServedModel(upstream_id, upstream_id, is_default=False, backend="vllm")
                models[upstream_id] = model
                sources[upstream_id] = upstream_id
                added.append(model)
                for alias, hub_id in HUB_ALIASES.items():
                    if hub_id == upstream_id and alias not in aliases:
                        aliases[alias] = upstream_id
            if added and before is not None:
                before(added)
            self.models = models  # then the names that lead to them
            self._sources, self.aliases = sources, aliases
        return added

    def _by_source(self, source: str) -> str | None:
        return self._sources.get(source)

    def _find(self, name: str) -> str | None:
        if name in self.models:
            return name
        return self.aliases.get(name) or self._by_source(name)

    def resolve(self, name: str) -> ServedModel:
        """The served model a request's `model` names (its id, an alias, or its configured source);
        ModelNotFoundError (404) for any other name."""
        model_id = self._find(name)
        if model_id is None:
            raise ModelNotFoundError(name, list(self.models))
        return self.models[model_id]

    def names(self) -> frozenset[str]:
        """Every name a request may use."""
        return frozenset({*self.models, *self.aliases, *self._sources})


def _model_id(source: str, served_name: str | None) -> str:
    if served_name:
        return served_name
    if is_local_source(source):
        return Path(source).expanduser().resolve().name
    return source
