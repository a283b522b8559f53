"""The served hub models on this machine: download them from the Hugging Face Hub (or the mirror `HF_ENDPOINT`
names), find them in the cache without network, and delete them from it.

`huggingface_hub.snapshot_download` does the work: its cache layout, its file locks, resuming of partial
files, and a check of what is already there, so pulling a complete model again only asks the hub for the
file list. Progress comes from the byte and file counters it reports through its `tqdm_class`. One download
per repository runs at a time: a pull that starts while one of the same repository runs joins it; pulls of
different repositories run side by side.

huggingface_hub asks the hub without a timeout for the repository's file list, and retries a connection that
fails: a hub that accepts connections and never answers would hold a pull for minutes. So every download first
asks the hub for anything, with a timeout of `PROBE_TIMEOUT_S`; no answer fails the pull at once with
`HubUnreachableError`, which says what to do instead, in one log line.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import (
    HubUnreachableError,
    ModelConflictError,
    ModelDownloadError,
    ModelNotDownloadedError,
    ModelUnavailableError,
    StorageFullError,
    VoxtralError,
)
from .catalog import ServedModel

logger = logging.getLogger(__name__)

# Mistral's own checkpoint format, which vLLM reads and transformers does not: in Voxtral's repositories it is
# a second copy of the weights (consolidated.safetensors, 9 GB for Mini-3B) and is not downloaded.
MISTRAL_FORMAT_FILES = ["consolidated*.safetensors", "consolidated*.pth", "params.json"]
# Listeners hear at most this often while bytes arrive (the first and the last state always).
PROGRESS_INTERVAL_S = 0.25
# How long the hub gets to answer the probe before a download (connect and first byte, each).
PROBE_TIMEOUT_S = 4.0


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

            probe_hub(self.repo_id)
            counter = _counter_class(self)
            path = snapshot_download(self.repo_id, ignore_patterns=MISTRAL_FORMAT_FILES, tqdm_class=counter)
            logger.info("pulled %s into %s", self.repo_id, path)
        except Exception as exc:  # every failure is reported to the pullers, with the reason
            self.error = ModelDownloadError(f"Pulling '{self.repo_id}' failed: {type(exc).__name__}: {exc}")
            try:
                self.error = exc if isinstance(exc, HubUnreachableError) else download_error(self.repo_id, exc)
            except Exception:  # describing the failure failed: the generic error above stands
                logger.exception("describing the failed pull of %s failed", self.repo_id)
            logger.warning("%s", " ".join(self.error.message.split()))  # one line, no traceback
        finally:
            progress = self.progress
            if self.error is None:  # every byte counted, also when nothing needed downloading
                self._advance(completed=progress.total, files_completed=progress.files_total, final=True)
            self.done.set()
            self._advance(final=True)


class ModelStore:
    """Starts downloads of hub repositories (one at a time per repository, handing out the one running to a
    second puller) and deletes them from the cache."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._downloads: dict[str, Download] = {}
        self._deleting: set[str] = set()

    def start(self, repo_id: str) -> Download:
        """The running download of `repo_id`, or a new one started on its own thread. ModelConflictError
        (`model_being_deleted`) while the repository is being deleted from the cache."""
        with self._lock:
            if repo_id in self._deleting:
                raise ModelConflictError(
                    f"The model '{repo_id}' is being deleted from the cache; pull it again once that has ended.",
                    param="model",
                    code="model_being_deleted",
                )
            current = self._downloads.get(repo_id)
            if current is None or current.done.is_set():
                current = self._downloads[repo_id] = Download(repo_id)
                threading.Thread(target=current._run, name=f"download {repo_id}", daemon=True).start()
            return current

    @contextmanager
    def deleting(self, repo_id: str) -> Iterator[None]:
        """Mark `repo_id` as being deleted for the block: `start` refuses to pull it meanwhile. Raises
        ModelConflictError (`model_download_in_progress`) when a pull of it runs, or another deletion does."""
        with self._lock:
            current = self._downloads.get(repo_id)
            if current is not None and not current.done.is_set():
                raise ModelConflictError(
                    f"The model '{repo_id}' is being pulled; delete it once the pull has ended.",
                    param="model",
                    code="model_download_in_progress",
                )
            if repo_id in self._deleting:
                raise ModelConflictError(
                    f"The model '{repo_id}' is being deleted already.", param="model", code="model_being_deleted"
                )
            self._deleting.add(repo_id)
        try:
            yield
        finally:
            with self._lock:
                self._deleting.discard(repo_id)

    def cached_folder(self, repo_id: str) -> bool:
        """Whether the cache holds anything of `repo_id` (a complete snapshot, or part of a download)."""
        return _cache_folder(repo_id).is_dir()

    def delete(self, repo_id: str) -> int:
        """Remove every cached revision of the hub repository `repo_id` (snapshots, blobs, refs; the
        repository's cache folder goes with the last one); the bytes freed, 0 when it was not cached. Call it
        inside `deleting(repo_id)`, so that no pull of it writes meanwhile."""
        from huggingface_hub import scan_cache_dir

        freed = 0
        folder = _cache_folder(repo_id)
        if folder.is_dir():
            cache = scan_cache_dir()
            revisions = [
                revision.commit_hash
                for repo in cache.repos
                if repo.repo_id == repo_id and repo.repo_type == "model"
                for revision in repo.revisions
            ]
            if revisions:
                strategy = cache.delete_revisions(*revisions)
                freed = strategy.expected_freed_size
                strategy.execute()
            shutil.rmtree(folder, ignore_errors=True)  # a partial download has no revision to delete
            logger.info("deleted %s from the cache (%d bytes)", repo_id, freed)
        return freed


def _cache_folder(repo_id: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))


def probe_hub(repo_id: str) -> None:
    """Ask the hub for anything (a HEAD of its root, any HTTP answer will do) within `PROBE_TIMEOUT_S`;
    HubUnreachableError when it does not answer. Nothing is asked in offline mode (HF_HUB_OFFLINE), where
    `snapshot_download` says so itself."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.is_offline_mode():
        return
    look_up_within(repo_id, constants.ENDPOINT, PROBE_TIMEOUT_S)
    try:
        get_session().head(constants.ENDPOINT + "/", timeout=PROBE_TIMEOUT_S)
    except Exception as exc:  # refused, timed out, no route, a name that does not resolve, TLS
        raise hub_unreachable(repo_id, f"{type(exc).__name__}: {exc}") from exc


def look_up_within(repo_id: str, endpoint: str, seconds: float) -> None:
    """Resolve the endpoint's host name on a daemon thread and wait `seconds` for it: the HTTP client's timeouts
    do not cover the system resolver, which can take tens of seconds when no DNS server answers.
    HubUnreachableError when the lookup takes longer; a lookup that fails is left for the request to report.
    Nothing is looked up when a proxy serves the endpoint (the proxy resolves it)."""
    url = urllib.parse.urlsplit(endpoint)
    host = url.hostname
    if not host or _proxied(url.scheme, host):
        return
    done = threading.Event()

    def look_up() -> None:
        with contextlib.suppress(OSError, UnicodeError):
            socket.getaddrinfo(host, url.port or (443 if url.scheme == "https" else 80), type=socket.SOCK_STREAM)
        done.set()

    threading.Thread(target=look_up, name=f"look up {host}", daemon=True).start()
    if not done.wait(seconds):
        raise hub_unreachable(repo_id, f"looking up the name {host} took more than {seconds:g} s")


def _proxied(scheme: str, host: str) -> bool:
    """Whether the environment's proxy settings (as HTTP clients read them) send requests to `host` through a
    proxy."""
    proxies = urllib.request.getproxies()
    return bool(proxies.get(scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(host)


def hub_unreachable(repo_id: str, reason: str) -> HubUnreachableError:
    """The error for a hub that cannot be reached, saying what to do instead."""
    from huggingface_hub import constants

    return HubUnreachableError(
        f"Cannot pull '{repo_id}': the Hugging Face Hub at {constants.ENDPOINT} cannot be reached "
        f"({' '.join(reason.split())[:200]}). Pull the model on a machine with network access (`hf download "
        f"{repo_id} --local-dir <dir>`), copy the directory here and set VOXTRAL_MODEL (or VOXTRAL_MODELS) to "
        'it; to try the server without a download, use the tiny test model (README, "Without network access").'
    )


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
    elif _is_connection_error(exc):
        return hub_unreachable(repo_id, str(exc))
    elif constants.is_offline_mode():  # huggingface_hub refuses every hub request while HF_HUB_OFFLINE is set
        return hub_unreachable(repo_id, "HF_HUB_OFFLINE is set in the server's environment; unset it to pull")
    else:
        reason = f"{type(exc).__name__}: {exc}".strip()
    return ModelDownloadError(f"Pulling '{repo_id}' from {constants.ENDPOINT} failed: {reason}.")


# The HTTP client's exceptions for a connection that could not be made, by class name (huggingface_hub's client
# library is its own business: httpx, httpx2 and requests all name them so).
CONNECTION_ERRORS = frozenset({"ConnectError", "ConnectTimeout", "ConnectionError"})


def _is_connection_error(exc: BaseException) -> bool:
    """Whether `exc` (or its cause) says the hub could not be reached (refused, timed out, no route, a name
    that does not resolve): the HTTP client's connect errors by class name, or the OS's connection errors.
    huggingface_hub's offline mode is not one (it says so itself)."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    seen: BaseException | None = exc
    for _ in range(8):  # a chain of causes is short; a cycle must not loop
        if seen is None or isinstance(seen, OfflineModeIsEnabled):
            return False
        if isinstance(seen, ConnectionError | socket.gaierror):
            return True
        if any(cls.__name__ in CONNECTION_ERRORS for cls in type(seen).__mro__):
            return True
        seen = seen.__cause__ or seen.__context__
    return any(name in str(exc) for name in ("ConnectError", "ConnectTimeout"))  # a message that quotes one


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
