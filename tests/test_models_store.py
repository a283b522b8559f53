"""The model store without a server: a deletion and a pull of the same repository exclude each other, and a
failed pull is reported as a failure even when describing the failure fails."""

from __future__ import annotations

import threading

import pytest

from voxtral_local.errors import ModelConflictError, ModelDownloadError
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
