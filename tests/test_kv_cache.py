"""The in-place KV cache: same contents as transformers' concatenating cache, same tokens as `generate()`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers.cache_utils import DynamicLayer

from voxtral_local.audio import SAMPLE_RATE
from voxtral_local.config import Settings
from voxtral_local.engine import VoxtralEngine
from voxtral_local.engine.generation import Sampling
from voxtral_local.engine.kv_cache import RoomyLayer, layout, roomy_cache
from voxtral_local.engine.prompts import transcription_inputs


def states(rows: int, length: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, 2, length, 4, generator=torch.Generator().manual_seed(seed))


def test_steps_write_in_place_and_match_concatenation() -> None:
    keys, values = states(3, 5, 0), states(3, 5, 1)
    reference = DynamicLayer()
    reference.update(keys, values)
    cache = roomy_cache([((keys,), (values,))], room=4)
    layer = cache.layers[0]
    assert isinstance(layer, RoomyLayer)
    buffer = layer.keys.data_ptr()
    for step in range(10):  # four steps fit in the room, then the buffer grows
        new_k, new_v = states(3, 1, 10 + step), states(3, 1, 20 + step)
        got_k, got_v = cache.update(new_k, new_v, 0)
        want_k, want_v = reference.update(new_k, new_v)
        assert torch.equal(got_k, want_k) and torch.equal(got_v, want_v)
        assert cache.get_seq_length() == 6 + step
        if step < 4:
            assert layer.keys.data_ptr() == buffer  # written in place, nothing copied
    assert layer.room > 0


def test_layout_right_aligns_rows_of_different_lengths() -> None:
    short, long = states(1, 2, 0), states(2, 4, 1)
    out = layout([short, long], length=4, room=3)
    assert out.shape == (3, 2, 7, 4)
    assert torch.equal(out[0, :, 2:4], short[0]) and torch.equal(out[0, :, :2], torch.zeros(2, 2, 4))
    assert torch.equal(out[1:, :, :4], long)


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> VoxtralEngine:
    engine = VoxtralEngine(Settings(_env_file=None, model=str(tiny_model_dir)))
    engine.load()
    return engine


def generate_alone(engine: VoxtralEngine, chunk: np.ndarray, tokens: int) -> list[int]:
    """transformers' own greedy `generate()` on the official transcription prompt, forced to `tokens` tokens."""
    inputs = transcription_inputs(engine.processor, [chunk], language="en", model_id="voxtral")
    with torch.inference_mode():
        out = engine.model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    return [int(t) for t in out[0, inputs["input_ids"].shape[1] :]]


def test_the_decode_loop_gives_generates_tokens(engine: VoxtralEngine, speech: np.ndarray) -> None:
    """Rows of different lengths decoding together in the in-place cache give exactly `generate()`'s tokens
    (rows 1-3 join in one prefill whose three windows the CPU encodes two at a time)."""
    chunks = [speech, speech[: 2 * SAMPLE_RATE], np.tile(speech, 4)[: 25 * SAMPLE_RATE], speech[::-1].copy()]
    outputs = engine.transcribe(chunks, language="en", sampling=Sampling(min_new_tokens=10_000))
    for chunk, output in zip(chunks, outputs, strict=True):
        assert output.token_ids == generate_alone(engine, chunk, len(output.token_ids))
    assert len({len(o.token_ids) for o in outputs}) > 1  # rows left the batch at different steps
