"""The model store without a server: a deletion and a pull of the same repository exclude each other, a
failed pull is reported as a failure even when describing the failure fails, and a name lookup that does not
answer fails the hub probe."""

from __future__ import annotations

import socket
import threading

import pytest

from voxtral_local.errors import HubUnreachableError, ModelConflictError, ModelDownloadError
from voxtral_local.models import store as store_module
from voxtral_local.models.store import ModelStore

REPO = "org/not-in-the-cache"


def test_a_pull_of_a_repository_being_deleted_is_a_conflict() -> None:
    store = ModelStore()
    with store.deleting(REPO):
        with pytest.raises(ModelConflictError) as info:
            store.start(REPO)
        assert info.value.code == "model_being_deleted" and REPO in info.value.message
        with pytest.raises(ModelConflictError) as again, store.deleting(REPO):
            pass
        assert again.value.code == "model_being_deleted"


def test_a_failed_pull_is_a_failure_even_when_describing_it_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The download fails at its first step (no network is used); its description then raises."""

    def failing_probe(repo_id: str) -> None:
        raise RuntimeError("the hub answered nonsense")

    def broken(repo_id: str, exc: Exception) -> ModelDownloadError:
        raise RuntimeError("a bug in the description")

    monkeypatch.setattr(store_module, "probe_hub", failing_probe)
    monkeypatch.setattr(store_module, "download_error", broken)
    download = ModelStore().start(REPO)
    assert download.done.wait(60)
    assert isinstance(download.error, ModelDownloadError)
    assert download.error.code == "model_download_failed"
    assert REPO in download.error.message and "the hub answered nonsense" in download.error.message


def test_a_deletion_while_the_repository_is_pulled_is_a_conflict(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def waiting_probe(repo_id: str) -> None:  # the pull waits here, then fails without asking any hub
        release.wait(60)
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr(store_module, "probe_hub", waiting_probe)
    store = ModelStore()
    download = store.start(REPO)
    try:
        with pytest.raises(ModelConflictError) as info, store.deleting(REPO):
            pass
        assert info.value.code == "model_download_in_progress"
    finally:
        release.set()
    assert download.done.wait(60)
    with store.deleting(REPO):  # the pull has ended: the deletion may go ahead
        pass


def test_a_name_lookup_that_does_not_answer_fails_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """The resolver never answers (a stand-in for a DNS server that does not): the probe gives up after its
    timeout, shortened here, with `hub_unreachable`; no request is sent."""
    from huggingface_hub import constants

    stuck = threading.Event()
    looked_up: list[str] = []

    def silent_resolver(host: str, *args: object, **kwargs: object) -> list[object]:
        looked_up.append(host)
        stuck.wait(60)
        raise socket.gaierror("no answer")

    for proxy in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", silent_resolver)
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.example.test")
    monkeypatch.setattr(constants, "is_offline_mode", lambda: False)
    monkeypatch.setattr(store_module, "PROBE_TIMEOUT_S", 0.2)
    try:
        with pytest.raises(HubUnreachableError) as info:
            store_module.probe_hub(REPO)
    finally:
        stuck.set()
    assert looked_up == ["hub.example.test"]
    assert "looking up the name hub.example.test" in info.value.message and "VOXTRAL_MODEL" in info.value.message


def test_a_pull_refused_by_offline_mode_says_how_to_pull(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants
    from huggingface_hub.errors import OfflineModeIsEnabled

    monkeypatch.setattr(constants, "is_offline_mode", lambda: True)

    error = store_module.download_error("mistralai/Voxtral-Mini-3B-2507", OfflineModeIsEnabled("offline"))

    assert isinstance(error, HubUnreachableError) and error.code == "hub_unreachable"
    assert "HF_HUB_OFFLINE is set" in error.message and "VOXTRAL_MODEL" in error.message
