"""Which models this server serves and which names mean them.

`VOXTRAL_MODEL` is the default model; `VOXTRAL_MODELS` adds more. Each is a hub id (served under that id) or
a local checkpoint directory (served under the directory's name); `VOXTRAL_SERVED_MODEL_NAME` renames the
default. Aliases are names that mean a served model: the built-in ones (OpenAI's transcription model names
mean the default model, so that clients written for OpenAI work unchanged; `voxtral-mini`/`voxtral-small`
mean Mistral's hub ids) and `VOXTRAL_MODEL_ALIASES`. An alias whose model is not served is left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import Settings
from ..errors import ModelNotFoundError

VOXTRAL_MINI = "mistralai/Voxtral-Mini-3B-2507"
VOXTRAL_SMALL = "mistralai/Voxtral-Small-24B-2507"
DEFAULT_MODEL_ALIASES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
HUB_ALIASES = {"voxtral-mini": VOXTRAL_MINI, "voxtral-small": VOXTRAL_SMALL}


def is_local_source(source: str) -> bool:
    """True when `source` names a directory rather than a hub id: it starts with `/`, `.` or `~`, or is an
    existing directory (a path that cannot be inspected counts as a path)."""
    if source.startswith(("/", ".", "~")):
        return True
    try:
        return Path(source).expanduser().is_dir()
    except OSError:  # a name too long, no permission: still a path
        return True


@dataclass(frozen=True)
class ServedModel:
    """One model this server serves: the id clients send, and where its checkpoint comes from."""

    id: str
    source: str  # hub id, or the directory as configured
    is_default: bool

    @property
    def is_local(self) -> bool:
        return is_local_source(self.source)

    @property
    def directory(self) -> Path:
        """The checkpoint directory of a local model (expanded, not resolved)."""
        return Path(self.source).expanduser()

    @property
    def owned_by(self) -> str:
        """The hub organisation, or `local` for a directory."""
        return "local" if self.is_local or "/" not in self.source else self.source.split("/", 1)[0]


class ModelCatalog:
    """The served models and their aliases, fixed at startup from the settings.

    Raises ValueError (at construction) when two models would share an id, or an alias names no served model
    and is not built in."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        sources = [settings.model, *(s.strip() for s in settings.models.split(",") if s.strip())]
        self.models: dict[str, ServedModel] = {}
        self._sources: dict[str, str] = {}  # the configured source strings, also accepted as names
        for i, source in enumerate(sources):
            model_id = _model_id(source, settings.served_model_name if i == 0 else None)
            if model_id in self.models:
                if self.models[model_id].source == source:
                    continue  # listed twice: served once
                raise ValueError(f"two served models would share the id '{model_id}': set different directories")
            self.models[model_id] = ServedModel(model_id, source, is_default=i == 0)
            self._sources.setdefault(source, model_id)
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
