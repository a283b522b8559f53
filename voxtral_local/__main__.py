"""`python -m voxtral_local`: serve with the settings from the environment and `.env`."""

from __future__ import annotations

import logging

from .api import create_app
from .api.access import warn_if_exposed
from .api.connections import uvicorn_options
from .api.shutdown import serve
from .config import Settings


def main() -> None:
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warn_if_exposed(settings)
    # returns after a graceful shutdown on SIGTERM/SIGINT: exit 0
    serve(create_app(settings), settings, **uvicorn_options(settings))


if __name__ == "__main__":
    main()
