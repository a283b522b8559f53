"""Offline helpers for tests and benchmarks: a random-weight Voxtral checkpoint and audio files."""
