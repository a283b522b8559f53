"""`VoxtralEngine`: one model instance, loaded once, shared by all requests."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..audio import SAMPLE_RATE
from ..config import Settings
from ..errors import ModelUnavailableError
from .generation import generate_rows
from .prompts import transcription_inputs
from .runtime import resolve_device, resolve_dtype

logger = logging.getLogger(__name__)

# Added to every chunk's token cap so that very short chunks still have room.
CAP_MARGIN_TOKENS = 32


@dataclass(frozen=True)
class ChunkOutput:
    """The transcription of one chunk."""

    text: str
    token_ids: list[int]
    avg_logprob: float
    no_speech_prob: float
    hit_cap: bool


class VoxtralEngine:
    """Loads `VoxtralForConditionalGeneration` and its processor, and transcribes batches of chunks.

    Thread-safe: loading happens once under a lock, and one generation runs at a time.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model: Any = None
        self.processor: Any = None
        self.device: torch.device | None = None
        self.dtype: torch.dtype | None = None
        self._load_lock = threading.Lock()
        self._inference_lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self.model is not None

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
            self.model = model

    def token_cap(self, duration_s: float) -> int:
        """New-token cap for a chunk of this length; generous enough for very fast speech."""
        return math.ceil(duration_s * self.settings.max_tokens_per_audio_second) + CAP_MARGIN_TOKENS

    def transcribe(
        self, chunks: Sequence[np.ndarray], *, language: str | None, temperature: float = 0.0
    ) -> list[ChunkOutput]:
        """Transcribe chunks (mono 16 kHz) in batches of up to `batch_size`; outputs in input order."""
        self.load()
        outputs: list[ChunkOutput] = []
        size = self.settings.batch_size
        for first in range(0, len(chunks), size):
            outputs.extend(self._transcribe_batch(chunks[first : first + size], language, temperature))
        return outputs

    def _transcribe_batch(
        self, chunks: Sequence[np.ndarray], language: str | None, temperature: float
    ) -> list[ChunkOutput]:
        inputs = transcription_inputs(self.processor, chunks, language=language, model_id=self.settings.model)
        batch = {
            "input_ids": inputs["input_ids"].to(self.device),
            "attention_mask": inputs["attention_mask"].to(self.device),
            "input_features": inputs["input_features"].to(self.device, dtype=self.dtype),
        }
        caps = [self.token_cap(chunk.shape[0] / SAMPLE_RATE) for chunk in chunks]
        tokenizer = self.processor.tokenizer
        with self._inference_lock, torch.inference_mode():
            rows = generate_rows(
                self.model,
                batch,
                caps=caps,
                temperature=temperature,
                eos_token_id=int(tokenizer.eos_token_id),
                pad_token_id=int(tokenizer.pad_token_id),
            )
        return [
            ChunkOutput(
                text=tokenizer.decode(row.token_ids, skip_special_tokens=True).strip(),
                token_ids=row.token_ids,
                avg_logprob=float(np.mean(row.logprobs)) if row.logprobs else 0.0,
                no_speech_prob=row.no_speech_prob,
                hit_cap=row.hit_cap,
            )
            for row in rows
        ]

    def _source(self) -> str:
        if self.settings.model_is_local:
            path = Path(self.settings.model).expanduser()
            if not (path / "config.json").is_file():
                raise ModelUnavailableError(
                    f"The model directory '{self.settings.model}' does not exist or holds no config.json."
                )
            return str(path)
        return self.settings.model
