"""`python -m voxtral_local`: serve with the settings from the environment and `.env`."""

from __future__ import annotations

import logging

import uvicorn

from .api import create_app
from .api.access import warn_if_exposed
from .api.connections import uvicorn_options
from .config import Settings


def main() -> None:
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warn_if_exposed(settings)
    options = uvicorn_options(settings)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level, **options)


if __name__ == "__main__":
    main()
