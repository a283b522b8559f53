"""Settings: environment prefix, documentation in .env.example and the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from voxtral_local.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def env_names() -> set[str]:
    return {f"VOXTRAL_{name.upper()}" for name in Settings.model_fields}


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in env_names():
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=None)
    assert settings.model == "mistralai/Voxtral-Mini-3B-2507"
    assert (settings.host, settings.port) == ("127.0.0.1", 11344)
    assert settings.model_name == "mistralai/Voxtral-Mini-3B-2507"
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
    assert settings.model_is_local and settings.model_name == tmp_path.name
    assert settings.accepted_model_names >= {tmp_path.name, "whisper-1", "gpt-4o-transcribe"}


@pytest.mark.parametrize(("name", "value"), [("VOXTRAL_DEVICE", "tpu"), ("VOXTRAL_PORT", "0"), ("VOXTRAL_MODEL", " ")])
def test_invalid_settings_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError):
        Settings(_env_file=None)


def test_every_setting_is_in_env_example_and_readme() -> None:
    example = set(re.findall(r"^#?\s*(VOXTRAL_[A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    readme = set(re.findall(r"`(VOXTRAL_[A-Z_]+)`", (ROOT / "README.md").read_text()))
    assert example == env_names()
    assert env_names() <= readme
