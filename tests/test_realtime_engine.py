"""The realtime backend on the tiny random-weight Voxtral Realtime checkpoint: streamed audio, in pieces of any
size, gives exactly the tokens of transformers' own offline `generate` on the same audio (mistral-common's
"offline streaming" request: the whole audio with the left and right padding, which is what a stream fed to
its end and finished is); streams batch, start at any time, cancel, fall behind, and keep bounded caches."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from voxtral_local.backends.base import ChunkOutput
from voxtral_local.backends.live import is_live
from voxtral_local.backends.realtime import RealtimeBackend, is_realtime_checkpoint
from voxtral_local.config import Settings
from voxtral_local.errors import GenerationCancelledError, InvalidRequestError
from voxtral_local.testing.tiny_realtime import build_tiny_realtime_model

WAIT_S = 60.0  # generous: a step of the tiny model takes milliseconds


class Listener:
    """Records what a live stream tells."""

    def __init__(self) -> None:
        self.deltas: list[tuple[str, float]] = []
        self.behind: list[float] = []
        self.output: ChunkOutput | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.first_delta = threading.Event()

    def on_delta(self, text: str, audio_end_s: float) -> None:
        self.deltas.append((text, audio_end_s))
        self.first_delta.set()

    def on_behind(self, behind_s: float) -> None:
        self.behind.append(behind_s)

    def on_done(self, output: ChunkOutput | None, error: BaseException | None) -> None:
        self.output, self.error = output, error
        self.done.set()

    def wait(self) -> ChunkOutput:
        assert self.done.wait(WAIT_S), "the stream did not end"
        assert self.error is None, self.error
        assert self.output is not None
        return self.output


@pytest.fixture(scope="module")
def realtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_realtime_model(tmp_path_factory.mktemp("models") / "voxtral-realtime-tiny")


def make(model_dir: Path, **overrides: Any) -> RealtimeBackend:
    return RealtimeBackend(model_dir.name, model_dir, Settings(_env_file=None, model=str(model_dir), **overrides))


@pytest.fixture(scope="module")
def backend(realtime_dir: Path) -> Iterator[RealtimeBackend]:
    backend = make(realtime_dir)
    backend.load()
    yield backend
    backend.unload()


@pytest.fixture(scope="module")
def clip(speech: np.ndarray) -> np.ndarray:
    return speech[: int(2.5 * 16000)]


def reference(backend: RealtimeBackend, audio: np.ndarray) -> list[int]:
    """transformers' offline generate on the whole audio (the processor pads it left and right)."""
    backend.load()
    inputs = backend.processor(audio, return_tensors="pt").to(backend.model.device)
    with torch.no_grad():
        out = backend.model.generate(**inputs)
    generated: list[int] = out[0, inputs["input_ids"].shape[1] :].tolist()
    eos = backend.eos_token_id
    return generated[: generated.index(eos)] if eos in generated else generated


def stream(backend: RealtimeBackend, audio: np.ndarray, pieces: list[int]) -> Listener:
    """Feed `audio` in pieces of the given sizes (cycled), then finish."""
    listener = Listener()
    live = backend.open_stream(language=None, listener=listener)
    at, i = 0, 0
    while at < audio.size:
        live.feed(audio[at : at + pieces[i % len(pieces)]])
        at += pieces[i % len(pieces)]
        i += 1
    live.finish()
    return listener


def test_a_realtime_checkpoint_is_recognised_and_serves_live_streams(realtime_dir: Path, tiny_model_dir: Path) -> None:
    assert is_realtime_checkpoint(realtime_dir) and not is_realtime_checkpoint(tiny_model_dir)
    assert not is_realtime_checkpoint(realtime_dir / "missing")
    backend = make(realtime_dir)
    assert is_live(backend) and not backend.loaded
    assert backend.delay_s == pytest.approx(0.48), "the checkpoint's 480 ms delay"
    assert not backend.loaded, "asking is no reason to load the model"
    backend.load()
    assert backend.delay_s == pytest.approx(0.48) and backend.status().loaded
    backend.unload()
    assert not backend.loaded and backend.status().memory_bytes == 0


@pytest.mark.parametrize(
    "pieces", [[1280], [16000], [1, 7, 333, 1280, 5000, 2], [1]], ids=["80ms", "1s", "uneven", "1"]
)
def test_streamed_pieces_give_the_tokens_of_transformers_offline_generate(
    backend: RealtimeBackend, clip: np.ndarray, pieces: list[int]
) -> None:
    audio = clip[:16000] if pieces == [1] else clip  # one sample at a time: a shorter clip
    expected = reference(backend, audio)
    listener = stream(backend, audio, pieces)
    output = listener.wait()
    assert output.token_ids == expected
    assert any(t >= 1000 for t in expected), "the tiny model writes text, not only streaming pads"
    assert output.text == "".join(text for text, _ in listener.deltas) == backend.decode(expected).strip()
    ends = [end for _, end in listener.deltas]
    assert ends == sorted(ends) and 0 < ends[-1] <= audio.size / 16000


def test_several_streams_batch_and_give_what_each_gives_alone(backend: RealtimeBackend, speech: np.ndarray) -> None:
    audios = [speech[:32000], speech[8000:40000], speech[16000:60000] * 0.5]
    expected = [reference(backend, a) for a in audios]
    engine = backend.engine
    assert engine is not None
    before = engine.steps
    listeners = [stream(backend, a, [4000]) for a in audios]
    outputs = [listener.wait() for listener in listeners]
    assert [o.token_ids for o in outputs] == expected
    one_by_one = sum(o.audio_tokens for o in outputs)
    assert engine.steps - before < one_by_one, "the streams' steps were decoded together"


def test_streams_starting_at_different_times_batch(backend: RealtimeBackend, speech: np.ndarray) -> None:
    first, second = speech[:48000], speech[24000:72000]
    expected = [reference(backend, first), reference(backend, second)]
    a, b = Listener(), Listener()
    live_a = backend.open_stream(language=None, listener=a)
    live_a.feed(first[:24000])
    assert a.first_delta.wait(WAIT_S), "the first stream is decoding (its first text came out)"
    live_b = backend.open_stream(language=None, listener=b)
    for at in range(0, 24000, 1280):
        live_a.feed(first[24000 + at : min(24000 + at + 1280, 48000)])
        live_b.feed(second[at : min(at + 1280, 24000)])
    live_b.feed(second[24000:])
    live_a.finish()
    live_b.finish()
    assert [a.wait().token_ids, b.wait().token_ids] == expected


def test_deltas_come_before_the_stream_is_finished(backend: RealtimeBackend, clip: np.ndarray) -> None:
    listener = Listener()
    live = backend.open_stream(language=None, listener=listener)
    live.feed(clip)
    assert listener.first_delta.wait(WAIT_S)
    assert not listener.done.is_set()
    assert live.pending_s < clip.size / 16000
    live.finish()
    listener.wait()


def test_cancel_ends_the_stream_with_a_cancelled_error(backend: RealtimeBackend, clip: np.ndarray) -> None:
    listener = Listener()
    live = backend.open_stream(language=None, listener=listener)
    live.feed(clip)
    live.cancel()
    live.cancel()  # idempotent
    assert listener.done.wait(WAIT_S)
    assert isinstance(listener.error, GenerationCancelledError) and listener.output is None
    with pytest.raises(ValueError):
        live.feed(clip)
    engine = backend.engine
    assert engine is not None
    engine_idle = threading.Event()
    for _ in range(200):
        if not backend.busy:
            engine_idle.set()
            break
        threading.Event().wait(0.05)
    assert engine_idle.is_set() and backend.status().details["streams"] == 0


def test_finishing_a_stream_with_no_audio_decodes_the_padding_only(backend: RealtimeBackend) -> None:
    listener = Listener()
    live = backend.open_stream(language=None, listener=listener)
    live.finish()
    output = listener.wait()
    assert output.text == "".join(text for text, _ in listener.deltas)
    assert output.audio_tokens == backend.layout.total_steps(0)  # type: ignore[union-attr]


def test_a_stream_fed_faster_than_it_decodes_is_told_it_is_behind_and_loses_nothing(
    realtime_dir: Path, speech: np.ndarray
) -> None:
    backend = make(realtime_dir, realtime_lag_s=0.5)
    try:
        expected = reference(backend, speech)
        listener = stream(backend, speech, [speech.size])
        output = listener.wait()
        assert len(listener.behind) == 1 and listener.behind[0] > 0.5, "told once, with how far behind"
        assert output.token_ids == expected, "nothing was dropped"
    finally:
        backend.unload()


def test_the_caches_stop_growing_at_the_sliding_windows(tmp_path: Path, speech: np.ndarray) -> None:
    model_dir = build_tiny_realtime_model(tmp_path / "windowed", windows=(40, 30))
    backend = make(model_dir)
    try:
        audio = np.concatenate([speech, speech, speech])  # 20 s: 250 decoder positions, 1000 encoder ones
        expected = reference(backend, audio)
        listener = Listener()
        live = backend.open_stream(language=None, listener=listener)
        engine = backend.engine
        assert engine is not None
        sizes = []
        for at in range(0, audio.size, 16000):
            live.feed(audio[at : at + 16000])
            while live.pending_s > 0.2:
                threading.Event().wait(0.01)
            caches = engine.stepper
            sizes.append((caches.encoder_cache.slots, caches.decoder_cache.slots, caches.cache_bytes()))
        live.finish()
        assert listener.wait().token_ids == expected, "past the windows, still transformers' tokens"
        assert max(s[0] for s in sizes) <= 40 + 4 and max(s[1] for s in sizes) <= 30 + 1
        assert sizes[-1] == sizes[len(sizes) // 2], "no growth in the second half of the stream"
        assert backend.status().details["cache_bytes"] == 0, "the caches are dropped once no stream is open"
    finally:
        backend.unload()


def test_files_are_transcribed_as_concurrent_streams(backend: RealtimeBackend, speech: np.ndarray) -> None:
    chunks = [speech[:32000], speech[32000:80000], speech[80000:]]
    expected = [reference(backend, c) for c in chunks]
    tokens: list[tuple[int, int]] = []
    caps: list[int] = []
    outputs = backend.transcribe(
        chunks[:1],
        language=None,
        on_token=lambda i, t, lp, top: tokens.append((i, t)),
        on_rows=caps.extend,
        more=iter([chunks[1:]]),
    )
    assert [o.token_ids for o in outputs] == expected
    assert [o.text for o in outputs] == [backend.decode(e).strip() for e in expected]
    assert caps == [backend.token_cap(c.size / 16000) for c in chunks] == [len(e) + 1 for e in expected]
    assert all(o.finish_reason == "stop" for o in outputs)
    for i, ids in enumerate(expected):
        assert [t for row, t in tokens if row == i] == [*ids, backend.eos_token_id], "each row ends with EOS"
    capped = backend.transcribe(chunks[:1], language=None, max_tokens=5)
    assert capped[0].token_ids == expected[0][:5] and capped[0].finish_reason == "length"


def test_a_cancelled_file_job_raises_and_chat_is_refused(backend: RealtimeBackend, speech: np.ndarray) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(GenerationCancelledError):
        backend.transcribe([speech], language=None, cancel=cancel)
    with pytest.raises(InvalidRequestError, match="realtime"):
        backend.chat([[{"role": "user", "content": "hi"}]], caps=[10])
    with pytest.raises(InvalidRequestError):
        backend.prompt_tokens([{"role": "user", "content": "hi"}])
