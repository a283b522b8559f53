"""The vLLM backend: the served models run on upstream OpenAI-compatible servers (vLLM), one request per row."""

from .backend import VllmBackend
from .upstreams import UpstreamPool

__all__ = ["UpstreamPool", "VllmBackend"]
