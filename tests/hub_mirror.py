"""A Hugging Face Hub mirror on a loopback port, serving checkpoint directories as model repositories.

`huggingface_hub` talks to any mirror named by `HF_ENDPOINT` (hf-mirror.com and company mirrors work this
way); this one answers the calls `snapshot_download` makes with the files of local directories, so that the
server's real pull path (huggingface_hub's own downloader, its cache layout and locks) runs without network:
repository info, the recursive file tree, and `resolve` for each file (HEAD and GET, with ranges).
Requests are recorded, and files can be served slowly, or cut off, to test progress and failures.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


@dataclass
class Repo:
    """A directory served as one model repository at one commit."""

    root: Path
    sha: str = "0123456789abcdef0123456789abcdef01234567"

    def files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.is_file())

    def oid(self, path: Path) -> str:
        return hashlib.sha1(path.read_bytes()).hexdigest()

    def entry(self, path: Path) -> dict[str, object]:
        """The file as the hub's tree listing describes it."""
        return {"type": "file", "oid": self.oid(path), "size": path.stat().st_size, "path": self.name(path)}

    def name(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


@dataclass
class HubMirror:
    """The served repositories, what was asked, and how files are served."""

    repos: dict[str, Repo] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    bytes_per_second: float | None = None  # serve file bodies at this rate (None: at once)
    fail_after_bytes: int | None = None  # drop the connection when a file body reaches this offset
    release: threading.Event = field(default_factory=threading.Event)  # with `hold`, files wait for it
    hold: bool = False
    url: str = ""


def _handler(mirror: HubMirror) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, *, body: bool) -> None:
            path = unquote(urlparse(self.path).path)
            mirror.requests.append((self.command, path))
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"]:
                self._api(parts[2:])
            elif "resolve" in parts:
                at = parts.index("resolve")
                self._file("/".join(parts[:at]), "/".join(parts[at + 2 :]), body=body)
            else:
                self._error(404, "EntryNotFound", "not found")

        def _api(self, parts: list[str]) -> None:
            for split in ("revision", "tree"):
                if split in parts:
                    at = parts.index(split)
                    repo_id, rest = "/".join(parts[:at]), parts[at:]
                    break
            else:
                repo_id, rest = "/".join(parts), []
            repo = mirror.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
                return
            if rest and rest[0] == "tree":
                tree = [
                    {
                        "type": "file",
                        "oid": repo.oid(p),
                        "size": p.stat().st_size,
                        "path": p.relative_to(repo.root).as_posix(),
                    }
                    for p in repo.files()
                ]
                self._json(tree)
                return
            siblings = [{"rfilename": repo.name(p)} for p in repo.files()]
            self._json({"id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False, "siblings": siblings})

        def _file(self, repo_id: str, name: str, *, body: bool) -> None:
            repo = mirror.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
                return
            path = repo.root / name
            if not path.is_file():
                self._error(404, "EntryNotFound", f"{name} not found")
                return
            data = path.read_bytes()
            start = 0
            ranged = self.headers.get("Range", "")
            if ranged.startswith("bytes="):
                start = int(ranged[6:].split("-")[0])
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(data) - start))
            self.send_header("ETag", f'"{repo.oid(path)}"')
            self.send_header("X-Repo-Commit", repo.sha)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if not body:
                return
            if mirror.hold:
                mirror.release.wait(30)
            self._send_slowly(data, start)

        def _send_slowly(self, data: bytes, start: int) -> None:
            step = 64 * 1024
            for offset in range(start, len(data), step):
                if mirror.fail_after_bytes is not None and offset >= mirror.fail_after_bytes:
                    self.close_connection = True
                    self.connection.shutdown(2)  # also every retry, which resumes past this point
                    return
                self.wfile.write(data[offset : offset + step])
                if mirror.bytes_per_second:
                    time.sleep(step / mirror.bytes_per_second)

        def _json(self, payload: object) -> None:
            raw = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(raw)

        def _error(self, status: int, code: str, message: str) -> None:
            raw = json.dumps({"error": message}).encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(raw)

    return Handler


@contextmanager
def serve_mirror(mirror: HubMirror) -> Iterator[HubMirror]:
    """Serve `mirror` on a free loopback port until the block ends; its `url` is set."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(mirror))
    server.daemon_threads = True
    mirror.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield mirror
    finally:
        mirror.release.set()
        server.shutdown()
        server.server_close()
