"""The served models: which names mean which checkpoint, what is on disk (`store`), and what is loaded."""
