"""The engine on an accelerator: decode loop, KV cache, scheduler, memory plan and a streamed request.

Marked `gpu`. They run on the device named by the environment variable `GPU_TEST_DEVICE` (default `cuda`)
and are skipped where that device is missing, so CI (no GPU) skips them. `scripts/device_check.sh` runs them
on the GPU machine; its `--cpu-smoke` mode runs them here with `GPU_TEST_DEVICE=cpu`, so that they cannot rot
between GPU runs. Every model here is the tiny random-weight checkpoint in bfloat16, a GPU's dtype.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from openai import OpenAI
from openai.types.audio import TranscriptionTextDeltaEvent, TranscriptionTextDoneEvent
from transformers.cache_utils import DynamicLayer

from voxtral_local.audio.decode import SAMPLE_RATE
from voxtral_local.backends.base import Sampling
from voxtral_local.backends.transformers import TransformersBackend
from voxtral_local.backends.transformers.decoding import DecodeBatch
from voxtral_local.backends.transformers.kv_cache import RoomyLayer, roomy_cache
from voxtral_local.backends.transformers.memory import DEFAULT_BUDGET, FREE_FRACTION, MemoryPlan, free_bytes
from voxtral_local.backends.transformers.prompts import transcription_inputs

from .conftest import FIXTURES, make_backend, running_server
from .spies import spy_forward
from .test_scheduler import together

DEVICE = torch.device(os.environ.get("GPU_TEST_DEVICE", "cuda"))
ON_CUDA = DEVICE.type == "cuda"
FORCED = Sampling(min_new_tokens=10_000)  # random weights: every row runs to its cap

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(ON_CUDA and not torch.cuda.is_available(), reason="no CUDA device (GPU_TEST_DEVICE=cuda)"),
]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> TransformersBackend:
    engine = make_backend(tiny_model_dir, device=DEVICE.type, dtype="bfloat16")
    engine.load()
    assert engine.model.device.type == DEVICE.type and engine.model.dtype == torch.bfloat16
    return engine


def generate_alone(engine: TransformersBackend, chunk: np.ndarray, tokens: int) -> list[int]:
    """transformers' greedy `generate()` on the official prompt (built on the CPU, moved to the device)."""
    inputs = transcription_inputs(engine.processor, [chunk], language="en", model_id="voxtral")
    batch = {k: v.to(DEVICE) for k, v in inputs.items()}
    batch["input_features"] = batch["input_features"].to(torch.bfloat16)
    with torch.inference_mode():
        out = engine.model.generate(**batch, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    return [int(t) for t in out[0, batch["input_ids"].shape[1] :]]


def test_device_features_match_the_official_ones(engine: TransformersBackend, speech: np.ndarray) -> None:
    """Log-mels computed on the device (one batched STFT) against `apply_transcription_request`'s, on the CPU."""
    chunks = [speech, np.tile(speech, 8)[: 44 * SAMPLE_RATE], speech[:4000]]
    assert engine.features is not None
    official = transcription_inputs(engine.processor, chunks, language="en", model_id="voxtral")
    fast = engine.features(chunks, language="en", device=DEVICE)
    assert fast["input_features"].device.type == DEVICE.type
    assert torch.equal(fast["input_ids"].cpu(), official["input_ids"])
    assert torch.equal(fast["attention_mask"].cpu(), official["attention_mask"])
    torch.testing.assert_close(fast["input_features"].cpu(), official["input_features"], rtol=0, atol=2e-3)


def test_decode_loop_equals_generate_in_bfloat16(engine: TransformersBackend, speech: np.ndarray) -> None:
    """Rows of different lengths decoding together in the in-place cache give `generate()`'s tokens."""
    chunks = [speech, speech[: 2 * SAMPLE_RATE], np.tile(speech, 4)[: 25 * SAMPLE_RATE], speech[::-1].copy()]
    outputs = engine.transcribe(chunks, language="en", sampling=FORCED)
    for chunk, output in zip(chunks, outputs, strict=True):
        assert output.token_ids == generate_alone(engine, chunk, len(output.token_ids))
    assert len({len(o.token_ids) for o in outputs}) > 1  # rows left the batch at different steps


def device_states(rows: int, length: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 2, length, 8, generator=generator).to(DEVICE, torch.bfloat16)


def test_kv_cache_writes_in_place_on_the_device() -> None:
    keys, values = device_states(3, 5, 0), device_states(3, 5, 1)
    reference = DynamicLayer()
    reference.update(keys, values)
    cache = roomy_cache([((keys,), (values,))], room=4)
    layer = cache.layers[0]
    assert isinstance(layer, RoomyLayer) and layer.keys.device.type == DEVICE.type
    buffer = layer.keys.data_ptr()
    for step in range(10):  # four steps fit in the room, then the buffer grows
        new_k, new_v = device_states(3, 1, 10 + step), device_states(3, 1, 20 + step)
        got_k, got_v = cache.update(new_k, new_v, 0)
        want_k, want_v = reference.update(new_k, new_v)
        assert torch.equal(got_k, want_k) and torch.equal(got_v, want_v)
        if step < 4:
            assert layer.keys.data_ptr() == buffer


def test_kv_cache_rows_join_and_leave_on_the_device() -> None:
    def batch(rows: int, length: int, seed: int) -> DecodeBatch:
        layers = [
            ((device_states(rows, length, seed + i),), (device_states(rows, length, seed + 50 + i),)) for i in range(3)
        ]
        mask = torch.ones(rows, length, dtype=torch.long, device=DEVICE)
        return DecodeBatch(roomy_cache(layers, 0), mask, torch.full((rows,), length, device=DEVICE))

    big, joining = batch(4, 6, 0), batch(2, 3, 100)
    before = [(layer.keys.clone(), layer.values.clone()) for layer in big.cache.layers]
    joined = [layer.keys.clone() for layer in joining.cache.layers]
    big.merge(joining, room=8)
    assert big.size == 6 and big.length == 6
    for i, layer in enumerate(big.cache.layers):
        assert layer.keys.device.type == DEVICE.type
        assert torch.equal(layer.keys[:4], before[i][0]) and torch.equal(layer.values[:4], before[i][1])
        assert torch.equal(layer.keys[4:, :, 3:], joined[i]) and not layer.keys[4:, :, :3].any()
    assert big.mask[4:, :3].sum() == 0
    big.keep([1, 5], room=8)  # row 5 joined with 3 columns: none of the padding columns is dropped
    assert big.size == 2
    assert torch.equal(big.cache.layers[2].keys[0], before[2][0][1])
    assert torch.equal(big.cache.layers[2].keys[1, :, 3:], joined[2][1])


@pytest.mark.skipif(not ON_CUDA, reason="CUDA's allocator statistics")
def test_kv_cache_merge_needs_one_more_layer_not_a_second_cache() -> None:
    layers, rows, heads, length, dim = 6, 16, 8, 640, 128

    def cache(count: int) -> Any:
        def states() -> torch.Tensor:
            return torch.zeros(count, heads, length, dim, device=DEVICE, dtype=torch.bfloat16)

        return roomy_cache([((states(),), (states(),)) for _ in range(layers)], 0)

    def batch(count: int) -> DecodeBatch:
        mask = torch.ones(count, length, dtype=torch.long, device=DEVICE)
        return DecodeBatch(cache(count), mask, torch.full((count,), length, device=DEVICE))

    big, joining = batch(rows), batch(2)
    layer_bytes = 2 * (rows + 2) * heads * (length + 8) * dim * 2
    torch.cuda.synchronize()
    start = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    big.merge(joining, room=8)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - start < 2 * layer_bytes


def test_scheduler_pools_concurrent_requests_on_the_device(engine: TransformersBackend, speech: np.ndarray) -> None:
    step = speech.shape[0] // 10
    audio = [speech[i * step // 2 : speech.shape[0] - i * step // 2].copy() for i in range(8)]
    alone = [engine.transcribe([a], language="en", sampling=FORCED)[0].token_ids for a in audio]
    sizes: list[int] = []
    with spy_forward(engine.model, lambda args, kwargs: sizes.append(int(kwargs["input_ids"].shape[0]))):
        pooled = together([functools.partial(engine.transcribe, [a], language="en", sampling=FORCED) for a in audio])
    assert [p[0].token_ids for p in pooled] == alone
    assert max(sizes) == 8  # at some step all eight decoded together
    assert not engine.busy


def test_memory_plan_reads_the_devices_free_memory(engine: TransformersBackend) -> None:
    """The automatic budget is min(16 GiB, 85 % of free memory), free memory as the device reports it."""
    plan = MemoryPlan.for_model(engine.model, DEVICE, budget_gb=0, max_rows=0)
    if ON_CUDA:
        free, total = torch.cuda.mem_get_info(DEVICE)
        assert free_bytes(DEVICE) == free
        assert plan.budget == min(DEFAULT_BUDGET, int(FREE_FRACTION * free))
        assert 0 < plan.budget < total
    else:
        assert 0 < plan.budget <= DEFAULT_BUDGET
    text = engine.model.config.text_config
    assert plan.kv_per_token == 2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim * 2


@pytest.mark.skipif(not ON_CUDA, reason="CUDA's allocator statistics")
def test_memory_plan_bounds_what_a_long_request_allocates(tiny_model_dir: Path, speech: np.ndarray) -> None:
    """A budget that admits a few rows at a time: the device's peak allocation above the weights stays within
    it (the plan's per-token and per-window figures are upper bounds)."""
    engine = make_backend(tiny_model_dir, device="cuda", dtype="bfloat16")
    engine.load()
    assert engine.features is not None
    audio = [np.tile(speech, 10)[: 30 * SAMPLE_RATE]] * 12
    plan = engine.plan
    row = engine.features.prompt_length(1, "en") + engine.token_cap(30)
    budget = 3 * row * plan.kv_per_token + 3 * row * plan.prefill_per_token + 3 * plan.encoder_per_window
    limited = make_backend(tiny_model_dir, device="cuda", dtype="bfloat16", memory_budget_gb=budget / 2**30)
    limited.adopt(engine.model, engine.processor)
    torch.cuda.synchronize()
    start = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    outputs = limited.transcribe(audio, language="en", sampling=FORCED)
    torch.cuda.synchronize()
    assert len(outputs) == 12
    assert torch.cuda.max_memory_allocated() - start <= budget


def test_a_streamed_request_end_to_end(tiny_model_dir: Path) -> None:
    """Upload through the OpenAI SDK to a real server on the device: deltas stream, and they add up to the
    plain request's transcript."""
    with running_server(model=str(tiny_model_dir), device=DEVICE.type, dtype="bfloat16") as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)
        mp3 = (FIXTURES / "speech.mp3").read_bytes()
        events = list(
            client.audio.transcriptions.create(model="voxtral-tiny", file=("a.mp3", mp3, "audio/mpeg"), stream=True)
        )
        plain = client.audio.transcriptions.create(model="voxtral-tiny", file=("a.mp3", mp3, "audio/mpeg"))
        health = httpx.get(f"{url}/health", timeout=30).json()
    deltas = [e for e in events[:-1] if isinstance(e, TranscriptionTextDeltaEvent)]
    done = events[-1]
    assert len(deltas) == len(events) - 1 > 5 and isinstance(done, TranscriptionTextDoneEvent)
    assert done.text == "".join(e.delta for e in deltas) == plain.text
    assert health["device"].startswith(DEVICE.type)
