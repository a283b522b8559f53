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
from voxtral_local.errors import GenerationCancelledError, InvalidRequestError, ModelUnavailableError
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


def test_audio_sent_ahead_of_real_time_is_not_behind_and_loses_nothing(realtime_dir: Path, speech: np.ndarray) -> None:
    backend = make(realtime_dir, realtime_lag_s=0.5)
    try:
        expected = reference(backend, speech)
        listener = stream(backend, speech, [speech.size])  # 6.5 s at once, on an idle engine
        output = listener.wait()
        assert listener.behind == [], "a client ahead of real time is not a server behind it"
        assert output.token_ids == expected, "nothing was dropped"
    finally:
        backend.unload()


def test_a_stream_at_real_time_pace_on_an_engine_too_slow_for_it_is_told_it_is_behind(
    realtime_dir: Path, speech: np.ndarray
) -> None:
    backend = make(realtime_dir, realtime_lag_s=0.3)
    try:
        backend.load()
        assert backend.engine is not None
        stepper = backend.engine.stepper
        step, feeding = stepper.step, threading.Event()

        def slow_step(rows: list[int], steps: list[int], *args: Any) -> torch.Tensor:
            if feeding.is_set() and min(steps) >= 30:  # from its first own audio on: 80 ms of audio per 200 ms
                threading.Event().wait(0.2)
            return step(rows, steps, *args)

        stepper.step = slow_step  # type: ignore[method-assign,assignment]
        listener = Listener()
        live = backend.open_stream(language=None, listener=listener)
        feeding.set()
        for at in range(0, 24000, 1280):  # 1.5 s at real-time pace
            live.feed(speech[at : at + 1280])
            threading.Event().wait(0.08)
        feeding.clear()
        live.finish()
        listener.wait()
        assert len(listener.behind) == 1 and listener.behind[0] > 0.3, "told once, with how far behind"
    finally:
        backend.unload()


def test_a_stream_the_model_ended_early_keeps_no_audio_and_ends_at_finish(
    realtime_dir: Path, speech: np.ndarray
) -> None:
    backend = make(realtime_dir)
    try:
        expected = reference(backend, speech)
        prompt = set(backend.layout.prompt)  # type: ignore[union-attr]
        first_new = next(j for j in range(len(expected)) if expected[j] not in {*expected[:j], *prompt})
        assert first_new < len(expected) - 20, "the tiny model says something new early"
        head = backend.model.lm_head.weight  # this variant says end-of-sequence where it said that token
        with torch.no_grad():
            head[[expected[first_new], backend.eos_token_id]] = head[[backend.eos_token_id, expected[first_new]]]
        listener = Listener()
        live = backend.open_stream(language=None, listener=listener)
        live.feed(speech)
        inner = live.stream  # type: ignore[attr-defined]
        for _ in range(int(WAIT_S / 0.01)):
            if inner.stopped is not None:
                break
            threading.Event().wait(0.01)
        assert inner.stopped == "stop"
        end = inner.end
        for _ in range(20):
            live.feed(speech[:16000])
        assert live.pending_s == 0 and inner.incoming == [] and inner.end == end, "fed audio is not kept"
        assert not listener.done.is_set(), "on_done still waits for finish"
        for _ in range(int(WAIT_S / 0.01)):
            if inner.row is None:
                break
            threading.Event().wait(0.01)
        assert inner.row is None, "its row is given back meanwhile"
        live.finish()
        output = listener.wait()
        assert output.token_ids == expected[:first_new] and output.finish_reason == "stop"
        assert output.text == "".join(text for text, _ in listener.deltas)
    finally:
        backend.unload()


def test_rows_stay_within_the_batch_size_and_live_streams_go_first(realtime_dir: Path, speech: np.ndarray) -> None:
    backend = make(realtime_dir, batch_size=4)
    try:
        chunks = [speech[i * 8000 : (i + 1) * 8000] for i in range(12)]  # 0.5 s each
        expected = [reference(backend, c) for c in chunks]
        assert backend.engine is not None
        engine, stepper = backend.engine, backend.engine.stepper
        step = stepper.step
        forwards: list[list[tuple[bool, int, int | None, int]]] = []  # per forward: (live, index, row, step)

        def recording_step(*args: Any) -> torch.Tensor:
            forwards.append([(s.live, s.index, s.row, s.step) for s in list(engine.streams)])
            assert len(args[0]) <= 4 and engine.rows <= 4 and stepper.encoder_cache.rows <= 4
            return step(*args)

        stepper.step = recording_step  # type: ignore[method-assign,assignment]
        listener = Listener()
        opened: list[Any] = []

        def later() -> Iterator[list[np.ndarray]]:
            opened.append(backend.open_stream(language=None, listener=listener))
            opened[0].feed(speech)  # 6.5 s ready at once: it could step every forward
            yield chunks[4:]

        outputs = backend.transcribe(chunks[:4], language=None, more=later())
        assert [o.token_ids for o in outputs] == expected
        assert engine.rows <= 4 and stepper.encoder_cache.rows <= 4
        opened[0].finish()
        listener.wait()
        live = [
            (f, next(e for e in streams if e[0])) for f, streams in enumerate(forwards) if any(e[0] for e in streams)
        ]
        holding = [(f, entry[3]) for f, entry in live if entry[2] is not None]
        assert holding, "the live stream got a row"
        first = holding[0][0]
        assert not any(e[1] >= 4 and e[2] is not None and not e[0] for e in forwards[first]), "live before chunks"
        layout = backend.layout
        assert layout is not None
        ready_steps = sum(1 for t in range(10_000) if layout.ready_end(t) <= layout.audio_start + speech.size)
        stepped = [s for _, s in holding if s < ready_steps]
        assert stepped == list(range(stepped[0], stepped[0] + len(stepped))), "stepped every forward while chunks wait"
        assert any(e[2] is None and not e[0] for f in forwards[first:] for e in f), "while chunks wait for rows"
    finally:
        backend.unload()


def test_the_caches_stop_growing_at_the_sliding_windows(tmp_path: Path, speech: np.ndarray) -> None:
    model_dir = build_tiny_realtime_model(tmp_path / "windowed", windows=(40, 30))
    backend = make(model_dir)
    try:
        audio = np.concatenate([speech, speech])  # 13 s: over 200 decoder positions, 800 encoder ones
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


def test_unloading_ends_open_streams_with_an_unavailable_error(realtime_dir: Path, clip: np.ndarray) -> None:
    backend = make(realtime_dir)
    listener = Listener()
    live = backend.open_stream(language=None, listener=listener)
    live.feed(clip[:8000])  # not enough for its first text: it waits for more
    backend.unload()
    assert listener.done.wait(WAIT_S)
    assert isinstance(listener.error, ModelUnavailableError) and listener.output is None
    assert not backend.loaded and backend.status().memory_bytes == 0
