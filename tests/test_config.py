"""Settings: environment prefix, documentation in .env.example and the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from voxtral_local.config import Settings
from voxtral_local.errors import ModelNotFoundError
from voxtral_local.models.catalog import VOXTRAL_MINI, VOXTRAL_SMALL, ModelCatalog

ROOT = Path(__file__).resolve().parent.parent


def env_names() -> set[str]:
    return {f"VOXTRAL_{name.upper()}" for name in Settings.model_fields}


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in env_names():
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=None)
    assert settings.model == "mistralai/Voxtral-Mini-3B-2507"
    assert (settings.host, settings.port) == ("127.0.0.1", 11344)
    assert (settings.model_ttl, settings.models_memory_gb, settings.auto_download) == (300.0, 0.0, False)
    assert settings.max_upload_bytes == 100 * 1024 * 1024
    assert settings.max_audio_seconds == 3 * 3600
    assert settings.chunk_seconds == 30.0
    assert not settings.preload


def test_environment_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("VOXTRAL_PORT=12000\nVOXTRAL_DEVICE=cpu\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VOXTRAL_MODEL", str(tmp_path))
    monkeypatch.setenv("VOXTRAL_MODEL_ALIASES", "whisper-1, gpt-4o-transcribe")
    settings = Settings()
    assert settings.port == 12000 and settings.device == "cpu"
    catalog = ModelCatalog(settings)
    assert catalog.default.id == tmp_path.name and catalog.default.is_local
    assert catalog.names() >= {tmp_path.name, "whisper-1", "gpt-4o-transcribe"}


@pytest.mark.parametrize(
    ("name", "value"),
    [("VOXTRAL_DEVICE", "tpu"), ("VOXTRAL_PORT", "0"), ("VOXTRAL_MODEL", " "), ("VOXTRAL_MODEL_TTL", "-2")],
)
def test_invalid_settings_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError):
        Settings(_env_file=None)


def test_every_setting_is_in_env_example_and_readme() -> None:
    example = set(re.findall(r"^#?\s*(VOXTRAL_[A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    readme = set(re.findall(r"`(VOXTRAL_[A-Z_]+)`", (ROOT / "README.md").read_text()))
    assert example == env_names()
    assert env_names() <= readme


# ---- the catalog: served models, their ids and aliases --------------------------------------------------------


def catalog(**settings: object) -> ModelCatalog:
    return ModelCatalog(Settings(_env_file=None, **settings))  # type: ignore[arg-type]


def test_the_default_hub_model_and_the_built_in_aliases() -> None:
    models = catalog()
    assert list(models.models) == [VOXTRAL_MINI] and models.default.owned_by == "mistralai"
    assert models.aliases == {
        "whisper-1": VOXTRAL_MINI,
        "gpt-4o-transcribe": VOXTRAL_MINI,
        "gpt-4o-mini-transcribe": VOXTRAL_MINI,
        "voxtral-mini": VOXTRAL_MINI,
    }, "voxtral-small is left out while that model is not served"
    assert models.resolve("whisper-1").id == VOXTRAL_MINI
    with pytest.raises(ModelNotFoundError):
        models.resolve("voxtral-small")


def test_voxtral_models_adds_directories_and_hub_ids(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    models = catalog(model=str(tmp_path / "a"), models=f" {tmp_path / 'b'} , {VOXTRAL_SMALL},")
    assert list(models.models) == ["a", "b", VOXTRAL_SMALL]
    assert models.default.id == "a" and models.models["b"].is_local and not models.models[VOXTRAL_SMALL].is_local
    assert models.aliases["whisper-1"] == "a" and models.aliases["voxtral-small"] == VOXTRAL_SMALL
    assert models.resolve(str(tmp_path / "b")).id == "b", "the configured source is a name too"
    named = catalog(model=str(tmp_path / "a"), served_model_name=VOXTRAL_MINI)
    assert named.default.id == VOXTRAL_MINI and named.default.is_local


def test_configured_aliases_add_and_override(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    models = catalog(models=str(tmp_path / "b"), model_aliases="whisper-1=b, fast = b, mine")
    assert models.aliases["whisper-1"] == "b", "a configured alias overrides a built-in one"
    assert models.aliases["fast"] == "b" and models.aliases["mine"] == VOXTRAL_MINI  # bare: the default
    assert models.resolve("fast").id == "b"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"models": "/x/same", "model": "/y/same"}, "share the id"),
        ({"model_aliases": "x=not-served"}, "is not a served model"),
        ({"model_aliases": "=b"}, "names no alias"),
        ({"models": VOXTRAL_SMALL, "model_aliases": f"{VOXTRAL_SMALL}=whisper-1"}, "already a served model"),
    ],
)
def test_catalog_refuses_ambiguous_names(settings: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        catalog(**settings)
