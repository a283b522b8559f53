"""Continuous batching on the tiny real checkpoint: pooling across requests, fairness, memory budget."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import VoxtralConfig

from voxtral_local.audio.chunking import split_audio
from voxtral_local.audio.decode import SAMPLE_RATE
from voxtral_local.backends.base import Sampling
from voxtral_local.backends.transformers import TransformersBackend
from voxtral_local.backends.transformers.memory import MemoryPlan
from voxtral_local.errors import GenerationCancelledError

from .conftest import make_backend
from .spies import spy_forward
from .test_chunking import speech_with_gaps


def make_engine(model_dir: Path, **overrides: Any) -> TransformersBackend:
    engine = make_backend(model_dir, **overrides)
    engine.load()
    return engine


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> TransformersBackend:
    return make_engine(tiny_model_dir)


@contextmanager
def batch_sizes(engine: TransformersBackend) -> Iterator[list[int]]:
    """The number of rows in each forward pass of the model (prefills and decoding steps)."""
    sizes: list[int] = []
    with spy_forward(engine.model, lambda args, kwargs: sizes.append(int(kwargs["input_ids"].shape[0]))):
        yield sizes


def together(work: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls in threads released at the same moment; results in call order."""
    barrier = threading.Barrier(len(work))
    results: list[Any] = [None] * len(work)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = work[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(work))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def clips(speech: np.ndarray, count: int) -> list[np.ndarray]:
    """Different short clips: the fixture sentence cut at different places."""
    step = speech.shape[0] // (count + 2)
    return [speech[i * step // 2 : speech.shape[0] - i * step // 2].copy() for i in range(count)]


def long_chunks(speech: np.ndarray, minutes: int) -> list[np.ndarray]:
    """A long recording cut into its (up to) 30 s chunks, as the transcription service cuts it."""
    audio, _ = speech_with_gaps(speech, minutes=minutes)
    return [c.samples for c in split_audio(audio, max_chunk_s=30)]


FORCED = Sampling(min_new_tokens=10_000)  # every row runs to its cap: a fixed number of steps


def test_concurrent_requests_share_decoding_steps(engine: TransformersBackend, speech: np.ndarray) -> None:
    audio = clips(speech, 8)
    alone = [engine.transcribe([a], language="en", sampling=FORCED)[0] for a in audio]
    with batch_sizes(engine) as sizes:
        engine.transcribe([audio[0]], language="en", sampling=FORCED)
        one = len(sizes)
        sizes.clear()
        pooled = together([functools.partial(engine.transcribe, [a], language="en", sampling=FORCED) for a in audio])
    assert [p[0].token_ids for p in pooled] == [a.token_ids for a in alone]
    assert len(sizes) < 2 * one  # eight requests took less than twice the forward passes of one, not eight times
    assert max(sizes) == 8  # at some step all eight decoded together


def test_requests_of_different_prompt_lengths_pool_and_stay_exact(
    engine: TransformersBackend, speech: np.ndarray
) -> None:
    """A chat (longer prompt, left-padded caches) and transcriptions decode together without changing a token."""
    conversation = [{"role": "user", "content": [{"type": "text", "text": "Say something about the weather."}]}]
    long_audio = long_chunks(speech, 1)
    work: list[Callable[[], Any]] = [
        lambda: engine.chat([conversation], caps=[40], sampling=FORCED)[0].token_ids,
        lambda: [o.token_ids for o in engine.transcribe(long_audio, language=None)],
        lambda: [o.token_ids for o in engine.transcribe([speech[: 2 * SAMPLE_RATE]], language="fr")],
    ]
    alone = [w() for w in work]
    for _ in range(2):
        assert together(work) == alone


def test_a_short_request_is_not_starved_by_a_long_one(tiny_model_dir: Path, speech: np.ndarray) -> None:
    engine = make_engine(tiny_model_dir, batch_size=2)  # only two rows at a time: the long job queues
    long_audio = long_chunks(speech, 4)
    finished: list[str] = []
    started = threading.Event()

    def long_job() -> None:
        engine.transcribe(long_audio, language=None, on_token=lambda row, token, logprob, top: started.set())
        finished.append("long")

    thread = threading.Thread(target=long_job)
    thread.start()
    assert started.wait(30)
    (out,) = engine.transcribe([speech[: 3 * SAMPLE_RATE]], language=None)
    finished.append("short")
    thread.join()
    assert finished == ["short", "long"]
    (alone,) = make_engine(tiny_model_dir).transcribe([speech[: 3 * SAMPLE_RATE]], language=None)
    assert out.token_ids == alone.token_ids


def test_the_memory_budget_limits_rows_in_flight(tiny_model_dir: Path, speech: np.ndarray) -> None:
    audio = long_chunks(speech, 3)
    unlimited = make_engine(tiny_model_dir)
    expected = [o.token_ids for o in unlimited.transcribe(audio, language=None)]
    plan = unlimited.plan
    assert unlimited.features is not None
    prompt = unlimited.features.prompt_length(1, None)
    row = prompt + unlimited.token_cap(30)  # a row's cache at most: room for two rows and one's prefill, not three
    budget = 2.5 * row * plan.kv_per_token + prompt * plan.prefill_per_token + plan.encoder_per_window
    budget_gb = budget / 2**30
    limited = make_engine(tiny_model_dir, memory_budget_gb=budget_gb)
    with batch_sizes(limited) as sizes:
        got = [o.token_ids for o in limited.transcribe(audio, language=None)]
    assert got == expected
    assert len(expected) >= 6 and max(sizes) == 2


def test_memory_plan_for_voxtral_mini() -> None:
    """KV bytes per token of the real Voxtral-Mini-3B layout in bf16: 2 x 30 layers x 8 KV heads x 128 x 2 B."""
    config = VoxtralConfig(audio_token_id=24)

    class Model:
        pass

    model: Any = Model()
    model.config, model.dtype = config, __import__("torch").bfloat16
    plan = MemoryPlan.for_model(model, __import__("torch").device("cpu"), budget_gb=16, max_rows=0)
    assert plan.kv_per_token == 2 * 30 * 8 * 128 * 2
    assert plan.budget == 16 * 2**30
    # a 30-minute file: 60 rows of ~390 prompt + 332 new tokens fit the default budget with a prefill of all
    assert plan.fits(60, 390 + 332, prefill_tokens=0, prefill_windows=0)
    assert not plan.fits(2000, 390 + 332, prefill_tokens=0, prefill_windows=0)
    assert not MemoryPlan(plan.budget, 1, 1, 1, max_rows=4).fits(5, 1, 0, 0)


def test_cancelling_one_request_leaves_the_others_exact(engine: TransformersBackend, speech: np.ndarray) -> None:
    long_audio = long_chunks(speech, 2)
    expected = [o.token_ids for o in engine.transcribe(long_audio, language=None)]
    cancel = threading.Event()

    def doomed() -> str:
        try:
            engine.transcribe(
                long_audio, language=None, on_token=lambda row, token, logprob, top: cancel.set(), cancel=cancel
            )
        except GenerationCancelledError:
            return "cancelled"
        return "finished"

    def kept() -> list[list[int]]:
        return [o.token_ids for o in engine.transcribe(long_audio, language=None)]

    assert together([doomed, kept]) == ["cancelled", expected]
    assert not engine.busy


def test_a_seeded_sample_does_not_depend_on_the_company_it_keeps(
    engine: TransformersBackend, speech: np.ndarray
) -> None:
    seeded = Sampling(temperature=1.0, seed=7)

    def sample() -> list[int]:
        return engine.transcribe([speech], language=None, sampling=seeded)[0].token_ids

    alone = sample()
    others = [functools.partial(engine.transcribe, [a], language=None) for a in clips(speech, 3)]
    assert together([sample, *others])[0] == alone
    assert engine.transcribe([speech], language=None, sampling=Sampling(temperature=1.0, seed=8))[0].token_ids != alone
