"""The FastAPI application: routes, error envelopes and request limits."""

from .app import create_app

__all__ = ["create_app"]
