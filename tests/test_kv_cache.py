"""The in-place KV cache: same contents as transformers' concatenating cache, same tokens as `generate()`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers.cache_utils import DynamicLayer

from voxtral_local.audio.decode import SAMPLE_RATE
from voxtral_local.backends.base import Sampling
from voxtral_local.backends.transformers import TransformersBackend
from voxtral_local.backends.transformers.decoding import DecodeBatch
from voxtral_local.backends.transformers.kv_cache import RoomyLayer, layout, roomy_cache
from voxtral_local.backends.transformers.prompts import transcription_inputs

from .conftest import make_backend


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


def test_layout_of_picked_rows_writes_them_straight_into_place() -> None:
    rows = states(5, 6, 0)[:, :, 2:]  # a slice, as `keep` passes after dropping padding columns
    picked = torch.tensor([4, 1, 3])
    out = layout([rows], length=4, room=3, rows=picked)
    assert out.shape == (3, 2, 7, 4)
    assert torch.equal(out[:, :, :4], rows.index_select(0, picked))


def test_left_padding_is_zero_even_in_reused_memory() -> None:
    for _ in range(20):  # freshly freed buffers of the same size come back holding the old values
        garbage = torch.full((3, 2, 9, 4), float("nan"))
        del garbage
        out = layout([states(1, 2, 0), states(2, 5, 1)], length=5, room=4)
        assert torch.equal(out[0, :, :3], torch.zeros(2, 3, 4))


def _resident_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))


def _peak_growth(action: Callable[[], object]) -> int:
    """How far the process's resident memory rose above where it started while `action` ran (Linux's
    high-water mark, reset through /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = _resident_bytes("VmRSS")
    action()
    return _resident_bytes("VmHWM") - start


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's clear_refs")
def test_rows_joining_and_leaving_need_one_more_layer_not_a_second_cache() -> None:
    layers, rows, heads, length, dim = 6, 16, 8, 640, 128  # 40 MiB per layer's keys: past glibc's mmap
    # threshold, so a freed buffer leaves resident memory at once

    def filled(count: int, value: float) -> torch.Tensor:  # row r holds value + r
        return (
            (torch.arange(count, dtype=torch.float32).view(count, 1, 1, 1) + value)
            .expand(count, heads, length, dim)
            .contiguous()
        )

    def batch(count: int, first: float) -> DecodeBatch:
        cache = roomy_cache(
            [((filled(count, first + 100 * i),), (filled(count, first + 100 * i + 50),)) for i in range(layers)], 0
        )
        return DecodeBatch(cache, torch.ones(count, length, dtype=torch.long), torch.full((count,), length))

    big, joining = batch(rows, 0), batch(2, 1000)
    layer_bytes = 2 * (rows + 2) * heads * length * dim * 4  # one layer of the merged cache (a second cache: 6)
    first, last, joined = (
        layer.keys.clone() for layer in (big.cache.layers[0], big.cache.layers[5], joining.cache.layers[0])
    )

    assert _peak_growth(lambda: big.merge(joining, room=8)) < 2 * layer_bytes
    assert torch.equal(big.cache.layers[0].keys[:rows], first)
    assert torch.equal(big.cache.layers[0].keys[rows:], joined)
    assert _peak_growth(lambda: big.keep([1, 3, 17], room=8)) < 2 * layer_bytes
    assert torch.equal(big.cache.layers[5].keys[:2], last[[1, 3]])
    assert torch.equal(big.cache.layers[0].keys[2], joined[1])


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def engine(tiny_model_dir: Path, request: pytest.FixtureRequest) -> TransformersBackend:
    """The engine in float32 (a CPU's default) and in bfloat16 (a GPU's: its casts run here too)."""
    engine = make_backend(tiny_model_dir, dtype=request.param)
    engine.load()
    assert engine.model.dtype == getattr(torch, request.param)
    return engine


def generate_alone(engine: TransformersBackend, chunk: np.ndarray, tokens: int) -> list[int]:
    """transformers' own greedy `generate()` on the official transcription prompt, forced to `tokens` tokens."""
    inputs = transcription_inputs(engine.processor, [chunk], language="en", model_id="voxtral")
    with torch.inference_mode():
        out = engine.model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    return [int(t) for t in out[0, inputs["input_ids"].shape[1] :]]


def test_the_decode_loop_gives_generates_tokens(engine: TransformersBackend, speech: np.ndarray) -> None:
    """Rows of different lengths decoding together in the in-place cache give exactly `generate()`'s tokens
    (rows 1-3 join in one prefill whose three windows the CPU encodes two at a time)."""
    chunks = [speech, speech[: 2 * SAMPLE_RATE], np.tile(speech, 4)[: 25 * SAMPLE_RATE], speech[::-1].copy()]
    outputs = engine.transcribe(chunks, language="en", sampling=Sampling(min_new_tokens=10_000))
    for chunk, output in zip(chunks, outputs, strict=True):
        assert output.token_ids == generate_alone(engine, chunk, len(output.token_ids))
    assert len({len(o.token_ids) for o in outputs}) > 1  # rows left the batch at different steps
