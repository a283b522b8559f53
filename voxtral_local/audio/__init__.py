"""Audio as small pure functions: upload bytes → mono 16 kHz float32 (`decode`) → chunks carrying their
offset (`chunking`). Nothing here knows about HTTP or the model."""
