"""The services routes talk to: transcription and chat. They own text (deltas, joins); the backends give tokens."""
