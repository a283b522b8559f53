"""Download the served checkpoint from the Hugging Face Hub (or the mirror `HF_ENDPOINT` names), once at a time.

`huggingface_hub.snapshot_download` does the work: its cache layout, its file locks, resuming of partial
files, and a check of what is already there, so pulling a complete model again only asks the hub for the
file list. Progress comes from the byte and file counters it reports through its `tqdm_class`. A pull that
starts while one is running joins it instead of starting a second.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import ModelDownloadError, StorageFullError, VoxtralError

logger = logging.getLogger(__name__)

# Mistral's own checkpoint format, which vLLM reads and transformers does not: in Voxtral's repositories it is
# a second copy of the weights (consolidated.safetensors, 9 GB for Mini-3B) and is not downloaded.
MISTRAL_FORMAT_FILES = ["consolidated*.safetensors", "consolidated*.pth", "params.json"]
# Listeners hear at most this often while bytes arrive (the first and the last state always).
PROGRESS_INTERVAL_S = 0.25


@dataclass(frozen=True)
class PullProgress:
    """Bytes and files of the files that needed downloading (totals grow as downloads start)."""

    completed: int = 0
    total: int = 0
    files_completed: int = 0
    files_total: int = 0


ProgressListener = Callable[[PullProgress], None]


class Download:
    """One running (or finished) snapshot download; listeners hear its progress, and once `done` is set,
    `error` says whether it failed."""

    def __init__(self, repo_id: str) -> None:
        self.repo_id = repo_id
        self.progress = PullProgress()
        self.error: VoxtralError | None = None
        self.done = threading.Event()
        self._listeners: list[ProgressListener] = []
        self._lock = threading.Lock()
        self._last_told = 0.0

    def subscribe(self, listener: ProgressListener) -> Callable[[], None]:
        """Tell `listener` the progress so far and every change from now on; returns the unsubscriber."""
        with self._lock:
            self._listeners.append(listener)
            progress = self.progress
        listener(progress)
        return lambda: self._unsubscribe(listener)

    def _unsubscribe(self, listener: ProgressListener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _advance(self, *, final: bool = False, **counts: int) -> None:
        with self._lock:
            before, self.progress = self.progress, replace(self.progress, **counts)
            now = time.monotonic()
            if not final and (self.progress == before or now - self._last_told < PROGRESS_INTERVAL_S):
                return
            self._last_told = now
            listeners, progress = list(self._listeners), self.progress
        for listener in listeners:
            try:
                listener(progress)
            except Exception:  # runs inside the download's progress counter: it must not break the download
                logger.exception("a pull progress listener failed")

    def _run(self) -> None:
        try:
            from huggingface_hub import snapshot_download

            counter = _counter_class(self)
            path = snapshot_download(self.repo_id, ignore_patterns=MISTRAL_FORMAT_FILES, tqdm_class=counter)
            logger.info("pulled %s into %s", self.repo_id, path)
        except Exception as exc:  # every failure is reported to the pullers, with the reason
            logger.warning("pulling %s failed: %s", self.repo_id, exc)
            self.error = download_error(self.repo_id, exc)
        finally:
            progress = self.progress
            if self.error is None:  # every byte counted, also when nothing needed downloading
                self._advance(completed=progress.total, files_completed=progress.files_total, final=True)
            self.done.set()
            self._advance(final=True)


class ModelDownloader:
    """Starts the download of one hub repository, or hands out the one already running."""

    def __init__(self, repo_id: str) -> None:
        self.repo_id = repo_id
        self._lock = threading.Lock()
        self._current: Download | None = None

    def start(self) -> Download:
        """The running download, or a new one started on its own thread."""
        with self._lock:
            if self._current is None or self._current.done.is_set():
                self._current = Download(self.repo_id)
                threading.Thread(target=self._current._run, name="model-download", daemon=True).start()
            return self._current


def cached_path(repo_id: str) -> Path | None:
    """The snapshot directory of the hub repository in the cache when it is complete (as far as the file list
    cached by the last pull tells) and has a config.json; None otherwise. No network is used."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, ignore_patterns=MISTRAL_FORMAT_FILES, local_files_only=True))
    except Exception:  # not in the cache, incomplete, or an id the hub would refuse
        return None
    return folder if (folder / "config.json").is_file() else None


def is_cached(repo_id: str) -> bool:
    """Whether `cached_path` finds the repository's snapshot complete in the cache; no network is used."""
    return cached_path(repo_id) is not None


def download_error(repo_id: str, exc: Exception) -> VoxtralError:
    """What went wrong, said for the client: the hub's answer, the network, or the disk."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(exc, GatedRepoError):
        reason = "the repository is gated or private; set HF_TOKEN to a token that may read it"
    elif isinstance(exc, RepositoryNotFoundError):
        reason = "the hub has no such repository (or it is private and no token was given)"
    elif isinstance(exc, RevisionNotFoundError):
        reason = "the hub has no such revision of it"
    elif isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return StorageFullError(f"Pulling '{repo_id}' failed: no space left in the Hugging Face cache ({exc}).")
    else:
        reason = f"{type(exc).__name__}: {exc}".strip()
    return ModelDownloadError(f"Pulling '{repo_id}' from {constants.ENDPOINT} failed: {reason}.")


def _counter_class(download: Download) -> type[tqdm]:
    """A silent tqdm that hands `snapshot_download`'s counters to `download`: its byte counter (bytes
    written to the cache, in unit "B", the one whose description is not "Downloading bytes") and its
    file counter (no unit)."""

    class Counter(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.role = _role(kwargs)
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self.count = int(kwargs.get("initial") or 0)
            if self.role == "files":
                download._advance(files_total=int(kwargs.get("total") or 0), final=True)

        def update(self, n: float | None = 1) -> bool | None:
            self.count += int(n or 0)
            if self.role == "bytes":
                download._advance(completed=self.count, total=int(self.total or 0))
            elif self.role == "files":
                download._advance(files_completed=self.count, final=True)
            return None

        def refresh(self, *args: Any, **kwargs: Any) -> None:
            if self.role == "bytes":  # the total grows as each file's download starts
                download._advance(total=int(self.total or 0))

    return Counter


def _role(kwargs: dict[str, Any]) -> str:
    if kwargs.get("unit") == "B":
        return "transfer" if str(kwargs.get("desc", "")).startswith("Downloading") else "bytes"
    return "files"
