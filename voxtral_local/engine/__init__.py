"""The Voxtral engine: model loading and batched generation. Nothing here knows about HTTP."""

from .core import ChunkOutput, VoxtralEngine

__all__ = ["ChunkOutput", "VoxtralEngine"]
