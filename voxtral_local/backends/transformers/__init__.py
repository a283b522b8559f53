"""The transformers backend: Voxtral in this process, loaded from a checkpoint directory, decoding every
request's rows in one continuous batch. Nothing here knows about HTTP, the services or the model store."""

from ..base import ChunkOutput
from .backend import TransformersBackend

__all__ = ["ChunkOutput", "TransformersBackend"]
