"""The Voxtral engine: model loading and batched generation. Nothing here knows about HTTP."""

from .backend import ChunkOutput, TransformersBackend

__all__ = ["ChunkOutput", "TransformersBackend"]
