"""Voxtral Realtime served in this process: live streams and file chunks as rows of one decode thread."""

from .backend import RealtimeBackend, is_realtime_checkpoint

__all__ = ["RealtimeBackend", "is_realtime_checkpoint"]
