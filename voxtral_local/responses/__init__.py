"""OpenAI response bodies built from service results by pure functions (tested without a model)."""
