"""The Voxtral engine: model loading and batched generation. Nothing here knows about HTTP."""

from ..base import ChunkOutput
from .backend import TransformersBackend

__all__ = ["ChunkOutput", "TransformersBackend"]
