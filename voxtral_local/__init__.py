"""voxtral-local: a local, OpenAI-compatible speech-to-text server for Mistral's Voxtral models."""

__version__ = "0.1.0"
