"""Model backends: what a model server must do for the services (`base.ModelBackend`), and its
implementations (`transformers`: Voxtral in this process, with its own batched decode loop)."""
