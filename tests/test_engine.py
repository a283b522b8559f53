"""The engine on the tiny real checkpoint: prompt layout, audio-token count, batching, caps, threads."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from voxtral_local.audio.decode import SAMPLE_RATE
from voxtral_local.backends.base import Sampling
from voxtral_local.backends.transformers import TransformersBackend
from voxtral_local.backends.transformers.prompts import transcription_inputs
from voxtral_local.devices import resolve_device, resolve_dtype
from voxtral_local.errors import ModelUnavailableError

from .conftest import make_backend

BOS, INST, END_INST, AUDIO, BEGIN_AUDIO, TRANSCRIBE = 1, 3, 4, 24, 25, 34


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> TransformersBackend:
    engine = make_backend(tiny_model_dir)
    engine.load()
    return engine


def mistral_common_tokens(model_dir: Path, audio: np.ndarray, language: str | None) -> list[int]:
    """mistral-common's own encoding of the official transcription request."""
    from mistral_common.protocol.transcription.request import TranscriptionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    buffer = io.BytesIO()
    sf.write(buffer, audio, SAMPLE_RATE, format="WAV")
    request = TranscriptionRequest(model="voxtral", audio=buffer.getvalue(), language=language)
    tokenizer = MistralTokenizer.from_file(str(model_dir / "tekken.json"))
    return list(tokenizer.encode_transcription(request).tokens)


@pytest.mark.parametrize("language", [None, "en", "fr"])
def test_prompt_layout_equals_mistral_common_encoding(
    engine: TransformersBackend, tiny_model_dir: Path, speech: np.ndarray, language: str | None
) -> None:
    inputs = transcription_inputs(engine.processor, [speech], language=language, model_id="voxtral")
    ids = inputs["input_ids"][0].tolist()
    assert ids == mistral_common_tokens(tiny_model_dir, speech, language)
    assert ids[:3] == [BOS, INST, BEGIN_AUDIO]
    assert ids[3 : 3 + 375] == [AUDIO] * 375  # one 30 s window: 3000 mel frames / 8
    assert ids[3 + 375] == END_INST
    assert ids[-1] == TRANSCRIBE
    tail = engine.processor.tokenizer.decode(ids[3 + 376 : -1])
    assert tail == (f"lang:{language}" if language else "")


@pytest.mark.parametrize("seconds", [3.0, 30.0, 45.0, 61.0])
def test_audio_token_count_matches_the_audio_embeddings(engine: TransformersBackend, seconds: float) -> None:
    audio = np.random.default_rng(0).standard_normal(int(seconds * SAMPLE_RATE)).astype(np.float32) * 0.1
    inputs = transcription_inputs(engine.processor, [audio], language=None, model_id="voxtral")
    windows = int(np.ceil(seconds / 30))
    mel_frames = inputs["input_features"].shape[0] * inputs["input_features"].shape[-1]
    n_audio_tokens = int((inputs["input_ids"] == AUDIO).sum())
    assert mel_frames == windows * 3000
    assert n_audio_tokens == mel_frames // 8 == windows * 375
    with torch.inference_mode():
        embeddings = engine.model.get_audio_features(inputs["input_features"]).pooler_output
    assert embeddings.shape[0] == n_audio_tokens


def test_batched_decoding_gives_the_same_tokens_as_each_chunk_alone(
    engine: TransformersBackend, speech: np.ndarray
) -> None:
    chunks = [speech, speech[: SAMPLE_RATE * 2], np.tile(speech, 5)[: SAMPLE_RATE * 30], speech[::-1].copy()]
    batched = engine.transcribe(chunks, language="en")
    alone = [engine.transcribe([chunk], language="en")[0] for chunk in chunks]
    assert [b.token_ids for b in batched] == [a.token_ids for a in alone]
    assert [b.text for b in batched] == [a.text for a in alone]
    assert len({tuple(b.token_ids) for b in batched}) > 1  # different audio, different output


def test_batched_decoding_with_left_padding_matches_single(tiny_model_dir: Path, speech: np.ndarray) -> None:
    # 45 s chunks: one chunk spans two windows (750 audio tokens), another one window, so rows are padded.
    engine = make_backend(tiny_model_dir, chunk_seconds=45)
    long_chunk = np.tile(speech, 8)[: SAMPLE_RATE * 44]
    chunks = [long_chunk, speech]
    inputs = transcription_inputs(engine_processor(engine), chunks, language=None, model_id="voxtral")
    assert int(inputs["attention_mask"][1].sum()) < inputs["attention_mask"].shape[1]  # the short row is padded
    batched = engine.transcribe(chunks, language=None)
    alone = [engine.transcribe([chunk], language=None)[0] for chunk in chunks]
    assert [b.token_ids for b in batched] == [a.token_ids for a in alone]


def engine_processor(engine: TransformersBackend) -> object:
    engine.load()
    return engine.processor


def test_token_cap_is_reported_when_hit(engine: TransformersBackend, speech: np.ndarray) -> None:
    # Random weights never say end-of-sequence: every chunk runs to its cap, and says so.
    (out,) = engine.transcribe([speech], language=None)
    assert out.hit_cap
    assert len(out.token_ids) == engine.token_cap(speech.shape[0] / SAMPLE_RATE)
    assert out.text
    assert -20 < out.avg_logprob < 0


def test_a_model_that_hears_nothing_stops_at_once(silent_model_dir: Path, speech: np.ndarray) -> None:
    engine = make_backend(silent_model_dir)
    (out,) = engine.transcribe([speech], language=None)
    assert out.text == "" and out.token_ids == [] and not out.hit_cap
    assert out.no_speech_prob == pytest.approx(1.0)


def test_sampling_with_temperature_differs_from_greedy(engine: TransformersBackend, speech: np.ndarray) -> None:
    greedy = engine.transcribe([speech], language=None)[0].token_ids
    torch.manual_seed(1)
    sampled = engine.transcribe([speech], language=None, sampling=Sampling(temperature=1.5))[0].token_ids
    assert sampled != greedy


def test_concurrent_requests_do_not_corrupt_each_other(engine: TransformersBackend, speech: np.ndarray) -> None:
    inputs = [speech, speech[::-1].copy(), speech[:SAMPLE_RATE]]
    expected = [engine.transcribe([x], language=None)[0].token_ids for x in inputs]
    results: dict[int, list[int]] = {}

    def work(i: int) -> None:
        results[i] = engine.transcribe([inputs[i % 3]], language=None)[0].token_ids

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(6)] == expected * 2


def test_missing_checkpoint_directory_is_unavailable(tmp_path: Path) -> None:
    engine = make_backend(tmp_path / "nothing")
    with pytest.raises(ModelUnavailableError, match="'nothing' could not be loaded"):
        engine.load()
    assert not engine.loaded


def test_broken_checkpoint_is_unavailable_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    engine = make_backend(tmp_path)
    with pytest.raises(ModelUnavailableError, match="could not be loaded"):
        engine.load()


def test_device_and_dtype_resolution_on_this_machine() -> None:
    device = resolve_device("auto")
    expected = "cuda" if torch.cuda.is_available() else device.type
    assert device.type == expected
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.parametrize("language", [None, "de"])
def test_fast_inputs_are_identical_to_apply_transcription_request(
    engine: TransformersBackend, speech: np.ndarray, language: str | None
) -> None:
    rng = np.random.default_rng(3)
    chunks = (
        [
            speech,
            np.tile(speech, 5)[: SAMPLE_RATE * 30],  # exactly one window
            speech[:4000],  # a quarter of a second
            (rng.standard_normal(SAMPLE_RATE * 29) * 0.3).astype(np.float32),
            np.tile(speech, 8)[: SAMPLE_RATE * 44],  # two windows: the other rows are left-padded
            np.clip(rng.standard_normal(SAMPLE_RATE * 10), -1.2, 1.2).astype(np.float32) * 0.99,  # near full scale
        ]
        + [speech] * 9
    )  # more than one CPU STFT group
    assert engine.features is not None
    official = transcription_inputs(engine.processor, chunks, language=language, model_id="voxtral")
    fast = engine.features(chunks, language=language, device=torch.device("cpu"))
    assert torch.equal(fast["input_ids"], official["input_ids"])
    assert torch.equal(fast["attention_mask"], official["attention_mask"])
    assert torch.equal(fast["input_features"], official["input_features"])
