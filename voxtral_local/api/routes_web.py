"""The web page: `GET /` serves `index.html`, `/web/...` its scripts and stylesheet, all from the package's
`web/static` folder (nothing from elsewhere, so the page works offline). Both paths are open without the API
key (api/access.py): the files hold no data, and the page sends the key the user enters with its requests."""

from __future__ import annotations

import os
from os import PathLike

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from ..web import STATIC_DIR

# Only this origin's scripts, styles and connections (HTTP and its WebSocket); no inline script, no frames.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",  # revalidated (ETag), so a server upgrade is seen at once
}

router = APIRouter()


@router.get("/", include_in_schema=False)
async def web_page() -> FileResponse:
    """The page (HTML; not part of the API, so left out of the OpenAPI schema)."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


class _StaticFiles(StaticFiles):
    """StaticFiles whose answers are revalidated and never sniffed."""

    def file_response(
        self, full_path: PathLike[str] | str, stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update({"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})
        return response


def install_web_page(app: FastAPI) -> None:
    """Serve the page at `/` and its files under `/web/` (a missing file is the usual 404 envelope)."""
    app.include_router(router)
    app.mount("/web", _StaticFiles(directory=STATIC_DIR), name="web")
