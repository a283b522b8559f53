"""`VoxtralEngine`: one model instance, loaded once, shared by all requests."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from ..audio import SAMPLE_RATE
from ..config import Settings
from ..errors import GenerationCancelledError, InvalidRequestError, ModelUnavailableError
from ..streaming import OrderedText
from .features import TranscriptionFeatures
from .generation import FinishReason, RowResult, Sampling, generate_rows
from .prompts import Conversation, chat_inputs
from .runtime import resolve_device, resolve_dtype

logger = logging.getLogger(__name__)

# Added to every chunk's token cap so that very short chunks still have room.
CAP_MARGIN_TOKENS = 32
# Tokens the first chunk of a streamed batch generates alone before the batch starts: a few words.
HEAD_START_TOKENS = 8

GREEDY = Sampling()

T = TypeVar("T")
# Called with the global index of the first row of a batch and each row's new token at one step.
RowStepCallback = Callable[[int, list[int]], None]


@dataclass(frozen=True)
class ChunkOutput:
    """What one prompt (a chunk, or a chat conversation) generated."""

    text: str
    token_ids: list[int]
    avg_logprob: float
    no_speech_prob: float
    finish_reason: FinishReason
    prompt_tokens: int
    audio_tokens: int

    @property
    def hit_cap(self) -> bool:
        return self.finish_reason == "length"


class VoxtralEngine:
    """Loads `VoxtralForConditionalGeneration` and its processor, and runs batched generation.

    Thread-safe: loading happens once under a lock, and one generation runs at a time.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model: Any = None
        self.processor: Any = None
        self.device: torch.device | None = None
        self.dtype: torch.dtype | None = None
        self.features: TranscriptionFeatures | None = None
        self._load_lock = threading.Lock()
        self._inference_lock = threading.Lock()
        self._busy = threading.Event()

    @property
    def loaded(self) -> bool:
        return self.model is not None

    @property
    def busy(self) -> bool:
        """True while a generation runs."""
        return self._busy.is_set()

    def device_name(self) -> str:
        """The device the model runs (or will run) on."""
        if self.device is not None:
            return str(self.device)
        try:
            return str(resolve_device(self.settings.device))
        except RuntimeError:
            return self.settings.device

    def is_downloaded(self) -> bool:
        """Whether the checkpoint is on this machine (local directory or the Hugging Face cache)."""
        if self.settings.model_is_local:
            return (Path(self.settings.model).expanduser() / "config.json").is_file()
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(self.settings.model, "config.json")
        return isinstance(cached, str)

    def load(self) -> None:
        """Load model and processor if not yet loaded; raise ModelUnavailableError when that fails."""
        if self.model is not None:
            return
        with self._load_lock:
            if self.model is not None:
                return
            source = self._source()
            try:
                device = resolve_device(self.settings.device)
                dtype = resolve_dtype(self.settings.dtype, device)
                from transformers import AutoProcessor, VoxtralForConditionalGeneration

                logger.info("loading %s on %s (%s)", source, device, dtype)
                processor = AutoProcessor.from_pretrained(source)
                model = VoxtralForConditionalGeneration.from_pretrained(source, dtype=dtype, attn_implementation="sdpa")
                model.to(device).eval()
            except Exception as exc:  # any failure to load means "unavailable", with the reason
                logger.exception("could not load %s", source)
                raise ModelUnavailableError(
                    f"The model '{self.settings.model}' could not be loaded: {type(exc).__name__}: {exc}"
                ) from exc
            self.processor, self.device, self.dtype = processor, device, dtype
            self.features = TranscriptionFeatures(processor, self.settings.model)
            self.model = model

    def adopt(self, model: Any, processor: Any) -> None:
        """Serve a model already in memory (the benchmark builds one without writing it to disk)."""
        with self._load_lock:
            self.model, self.processor = model, processor
            self.device, self.dtype = model.device, model.dtype
            self.features = TranscriptionFeatures(processor, self.settings.model)

    def token_cap(self, duration_s: float) -> int:
        """New-token cap for a chunk of this length; generous enough for very fast speech."""
        return math.ceil(duration_s * self.settings.max_tokens_per_audio_second) + CAP_MARGIN_TOKENS

    @property
    def eos_token_id(self) -> int:
        return int(self.processor.tokenizer.eos_token_id)

    def stream_text(
        self,
        caps: Sequence[int],
        on_delta: Callable[[str], None] | None,
        run: Callable[[RowStepCallback | None], list[ChunkOutput]],
        stop: Sequence[str] = (),
    ) -> list[ChunkOutput]:
        """Call `run(on_step)`; with `on_delta`, turn its per-step tokens into ordered text deltas."""
        if on_delta is None:
            return run(None)
        assembler = OrderedText(len(caps), self.decode, eos_token_id=self.eos_token_id, caps=caps, stop=stop)
        outputs = run(assembler.forward_to(on_delta))
        for delta in assembler.finish([out.text for out in outputs]):
            on_delta(delta)
        return outputs

    def decode(self, token_ids: list[int]) -> str:
        """Text of generated tokens, special tokens left out."""
        return str(self.processor.tokenizer.decode(token_ids, skip_special_tokens=True))

    def transcribe(
        self,
        chunks: Sequence[np.ndarray],
        *,
        language: str | None,
        sampling: Sampling = GREEDY,
        on_step: RowStepCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> list[ChunkOutput]:
        """Transcribe chunks (mono 16 kHz) with the official transcription prompt, in batches."""

        def build(batch: Sequence[np.ndarray]) -> Any:
            assert self.features is not None and self.device is not None
            return self.features(batch, language=language, device=self.device)

        caps = [self.token_cap(chunk.shape[0] / SAMPLE_RATE) for chunk in chunks]
        return self.generate(chunks, build, caps=caps, sampling=sampling, on_step=on_step, cancel=cancel)

    def chat(
        self,
        conversations: Sequence[Conversation],
        *,
        caps: Sequence[int],
        sampling: Sampling = GREEDY,
        on_step: RowStepCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> list[ChunkOutput]:
        """Generate a reply to each conversation, in batches."""

        return self.generate(
            conversations, self._chat_inputs, caps=caps, sampling=sampling, on_step=on_step, cancel=cancel
        )

    def _chat_inputs(self, conversations: Sequence[Conversation]) -> Any:
        try:
            return chat_inputs(self.processor, conversations)
        except (ValueError, TypeError, AssertionError) as exc:  # mistral-common's message validation
            raise InvalidRequestError(f"Invalid messages: {exc}", param="messages") from exc

    def chat_one(
        self,
        conversation: Conversation,
        *,
        max_new_tokens: int | None,
        sampling: Sampling,
        on_delta: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> ChunkOutput:
        """Reply to one conversation; the prompt and the reply must fit the context window."""
        self.load()
        inputs = self._chat_inputs([conversation])
        prompt_tokens = int(inputs["attention_mask"][0].sum())
        context = self.settings.max_context_tokens
        room = context - prompt_tokens
        if room <= 0 or (max_new_tokens is not None and max_new_tokens > room):
            raise InvalidRequestError(
                f"This model's context is {context} tokens; the messages take {prompt_tokens} "
                f"(375 per 30 s of audio) and max_tokens asks for {max_new_tokens or 'at least 1'} more.",
                param="messages",
                code="context_length_exceeded",
            )
        cap = max_new_tokens or room

        def run(on_step: RowStepCallback | None) -> list[ChunkOutput]:
            step = None if on_step is None else _offset(on_step, 0)
            return self._outputs(inputs, self._run(inputs, [cap], sampling, step, cancel))

        (out,) = self.stream_text([cap], on_delta, run, stop=sampling.stop)
        return out

    def generate(
        self,
        items: Sequence[T],
        build_inputs: Callable[[Sequence[T]], Any],
        *,
        caps: Sequence[int],
        sampling: Sampling,
        on_step: RowStepCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> list[ChunkOutput]:
        """Build inputs for up to `batch_size` items at a time and generate; outputs in item order.

        Raises GenerationCancelledError once `cancel` is set.
        """
        self.load()
        outputs: list[ChunkOutput] = []
        size = self.settings.batch_size
        for first in range(0, len(items), size):
            part, part_caps = items[first : first + size], caps[first : first + size]
            if first == 0 and on_step is not None and len(part) > 1:
                outputs.extend(self._with_head_start(part, build_inputs, part_caps, sampling, on_step, cancel))
                continue
            step = None if on_step is None else _offset(on_step, first)
            inputs = build_inputs(part)
            outputs.extend(self._outputs(inputs, self._run(inputs, part_caps, sampling, step, cancel)))
        return outputs

    def _with_head_start(
        self,
        items: Sequence[T],
        build_inputs: Callable[[Sequence[T]], Any],
        caps: Sequence[int],
        sampling: Sampling,
        on_step: RowStepCallback,
        cancel: threading.Event | None,
    ) -> list[ChunkOutput]:
        """Stream the first chunk at once, then decode the whole batch.

        The first chunk alone gets a short head start (one window through the encoder, so its first words
        do not wait for the whole batch's prefill); the batch then runs with those tokens forced for row 0,
        which keeps the text exactly what decoding the batch alone would give under greedy decoding.
        """
        eos = self.eos_token_id
        head_inputs = build_inputs(items[:1])
        (head,) = self._run(head_inputs, [min(HEAD_START_TOKENS, caps[0])], sampling, _offset(on_step, 0), cancel)
        prefix = head.token_ids + ([eos] if head.finish_reason == "stop" else [])
        if head.finish_reason == "stop" or len(prefix) >= caps[0]:  # the first chunk is already complete
            (first,) = self._outputs(head_inputs, [head])
            rest_inputs = build_inputs(items[1:])
            rest = self._run(rest_inputs, caps[1:], sampling, _offset(on_step, 1), cancel)
            return [first, *self._outputs(rest_inputs, rest)]

        def step(tokens: list[int]) -> None:
            generated = len(step_count)
            step_count.append(1)
            if generated < len(prefix):
                on_step(1, tokens[1:])  # row 0's tokens here were streamed in the head start
            else:
                on_step(0, tokens)

        step_count: list[int] = []
        inputs = build_inputs(items)
        rows = self._run(inputs, caps, sampling, step, cancel, row0_prefix=prefix)
        n = len(prefix)  # row 0's log-probs and P(no speech) for the forced steps come from the head start
        rows[0] = replace(
            rows[0], logprobs=head.logprobs[:n] + rows[0].logprobs[n:], no_speech_prob=head.no_speech_prob
        )
        return self._outputs(inputs, rows)

    def _run(
        self,
        inputs: Any,
        caps: Sequence[int],
        sampling: Sampling,
        on_step: Callable[[list[int]], None] | None,
        cancel: threading.Event | None,
        row0_prefix: Sequence[int] = (),
    ) -> list[RowResult]:
        """One `generate` under the inference lock."""
        batch = self._on_device(inputs)
        tokenizer = self.processor.tokenizer
        with self._inference_lock:
            if cancel is not None and cancel.is_set():
                raise GenerationCancelledError("The client went away before generation started.")
            self._busy.set()
            try:
                with torch.inference_mode():
                    rows = generate_rows(
                        self.model,
                        batch,
                        caps=caps,
                        sampling=sampling,
                        eos_token_id=self.eos_token_id,
                        pad_token_id=int(tokenizer.pad_token_id),
                        decode=self.decode,
                        on_step=on_step,
                        cancel=cancel,
                        row0_prefix=row0_prefix,
                    )
            finally:
                self._busy.clear()
        if any(row.finish_reason == "cancelled" for row in rows):
            raise GenerationCancelledError("The client went away; generation was stopped.")
        return rows

    def _on_device(self, inputs: Any) -> dict[str, torch.Tensor]:
        batch = {
            "input_ids": inputs["input_ids"].to(self.device),
            "attention_mask": inputs["attention_mask"].to(self.device),
        }
        if "input_features" in inputs:
            batch["input_features"] = inputs["input_features"].to(self.device, dtype=self.dtype)
        return batch

    def _outputs(self, inputs: Any, rows: list[RowResult]) -> list[ChunkOutput]:
        audio_token_id = int(self.model.config.audio_token_id)
        outputs = []
        for i, row in enumerate(rows):
            text = self.decode(row.token_ids)
            if row.stop_at is not None:
                text = text[: row.stop_at]
            outputs.append(
                ChunkOutput(
                    text=text.strip(),
                    token_ids=row.token_ids,
                    avg_logprob=float(np.mean(row.logprobs)) if row.logprobs else 0.0,
                    no_speech_prob=row.no_speech_prob,
                    finish_reason=row.finish_reason,
                    prompt_tokens=int(inputs["attention_mask"][i].sum()),
                    audio_tokens=int((inputs["input_ids"][i] == audio_token_id).sum()),
                )
            )
        return outputs

    def _source(self) -> str:
        if self.settings.model_is_local:
            path = Path(self.settings.model).expanduser()
            if not (path / "config.json").is_file():
                raise ModelUnavailableError(
                    f"The model directory '{self.settings.model}' does not exist or holds no config.json."
                )
            return str(path)
        return self.settings.model


def _offset(on_step: RowStepCallback, first: int) -> Callable[[list[int]], None]:
    def call(tokens: list[int]) -> None:
        on_step(first, tokens)

    return call
