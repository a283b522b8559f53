"""The web page's static files (`static/`), served by `api/routes_web.py` at `/` and `/web/`."""

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
