"""`RealtimeBackend`: Voxtral Realtime (Voxtral-Mini-4B-Realtime-2602) in this process, through transformers'
`VoxtralRealtimeForConditionalGeneration` and `VoxtralRealtimeProcessor`. Live streams (`open_stream`) and the
file endpoints' chunks (`transcribe`, each chunk a stream fed at once) are rows of one decode thread (`Engine`).
See docs/realtime.md."""

from __future__ import annotations

import gc
import json
import logging
import math
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...audio.decode import SAMPLE_RATE
from ...config import Settings
from ...devices import resolve_device, resolve_dtype
from ...errors import InvalidRequestError, ModelUnavailableError, UndecodableOutputError, shorten
from ..base import BackendStatus, ChunkOutput, Conversation, RowsCallback, Sampling, TokenCallback
from ..live import LiveListener, LiveStream
from .engine import Engine
from .files import FileJob
from .layout import StreamLayout
from .stepper import Stepper
from .streams import LiveStreamHandle

logger = logging.getLogger(__name__)

GREEDY = Sampling()
DEFAULT_ROWS = 64  # rows per step when VOXTRAL_BATCH_SIZE is 0 (auto)
NO_CHAT = (
    "The model '{model}' is a realtime model: it serves transcription only (/v1/audio/transcriptions and "
    "/v1/realtime), with no chat, no translation and no `audio` instructions. Use a standard Voxtral model for those."
)


def is_realtime_checkpoint(path: Path) -> bool:
    """Whether the checkpoint directory holds a Voxtral Realtime model (config.json's model_type)."""
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == "voxtral_realtime"


class RealtimeBackend:
    """A `LiveBackend` (and so a `ModelBackend`) serving a Voxtral Realtime checkpoint. Thread-safe: loading
    happens once under a lock; every stream and file chunk is a row of the one decode thread."""

    def __init__(self, model_id: str, path: Path, settings: Settings) -> None:
        """`model_id`: the served model's id; `path`: its checkpoint directory; `settings`: device, dtype,
        VOXTRAL_BATCH_SIZE (rows per step; 0: 64), VOXTRAL_REALTIME_LAG_S."""
        self.model_id, self.path, self.settings = model_id, path, settings
        self.model: Any = None
        self.processor: Any = None
        self.layout: StreamLayout | None = None
        self.engine: Engine | None = None
        self.device: torch.device | None = None
        self.dtype: torch.dtype | None = None
        self._load_lock = threading.Lock()

    # -- lifecycle --

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory."""
        return self.model is not None

    @property
    def busy(self) -> bool:
        """True while any stream or file chunk decodes."""
        return self.engine is not None and self.engine.busy

    def load(self) -> None:
        """Load model and processor if not loaded (once, under a lock); ModelUnavailableError with the reason."""
        if self.model is not None:
            return
        with self._load_lock:
            if self.model is not None:
                return
            try:
                device = resolve_device(self.settings.device)
                dtype = resolve_dtype(self.settings.dtype, device)
                from transformers import AutoProcessor, VoxtralRealtimeForConditionalGeneration

                logger.info("loading %s on %s (%s)", self.path, device, dtype)
                processor = AutoProcessor.from_pretrained(self.path)
                model = VoxtralRealtimeForConditionalGeneration.from_pretrained(
                    self.path, dtype=dtype, attn_implementation="sdpa"
                )
                model.to(device).eval()
                layout = StreamLayout.from_processor(processor)
                self._serve(model, processor, layout)
            except Exception as exc:  # any failure to load means "unavailable", with the reason
                logger.exception("could not load %s", self.path)
                reason = f"The model '{self.model_id}' could not be loaded: {type(exc).__name__}: {exc}"
                raise ModelUnavailableError(shorten(reason, 1000)) from exc

    def _serve(self, model: Any, processor: Any, layout: StreamLayout) -> None:
        rows = self.settings.batch_size or DEFAULT_ROWS
        stepper = Stepper(model, processor, layout)
        warm_up(stepper, layout)
        engine = Engine(stepper, layout, eos_token_id=int(processor.tokenizer.eos_token_id), max_rows=rows)
        engine.start()
        self.processor, self.layout, self.device, self.dtype = processor, layout, model.device, model.dtype
        self.engine = engine
        self.model = model

    def adopt(self, model: Any, processor: Any) -> None:
        """Serve a model already in memory (a benchmark builds one without writing it to disk)."""
        with self._load_lock:
            self._serve(model, processor, StreamLayout.from_processor(processor))

    def unload(self) -> None:
        """Free the model: the decode thread ends and the weights are dropped; the next use loads it again."""
        with self._load_lock:
            engine, self.engine = self.engine, None
            if engine is not None:
                engine.close()
                if not engine.join(60.0):
                    logger.warning("the decode thread of %s did not end within 60 s", self.model_id)
            device = self.device
            self.model = self.processor = self.layout = None
            self.device = self.dtype = None
        gc.collect()
        if device is not None and device.type == "cuda":
            torch.cuda.empty_cache()

    def close(self, timeout: float) -> bool:
        """Stop decoding for good (at process exit); whether the thread ended within `timeout` seconds."""
        if self.engine is None:
            return True
        self.engine.close()
        return self.engine.join(timeout)

    def status(self) -> BackendStatus:
        """Where it runs and the bytes its weights, buffers and the streams' caches take (0 when unloaded)."""
        model, engine = self.model, self.engine
        memory, details = 0, {"path": str(self.path), "realtime": True}
        if model is not None:
            memory = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        if engine is not None:
            caches = engine.stepper.cache_bytes()
            memory += caches
            details |= {"cache_bytes": caches, "streams": len(engine.streams), "row_capacity": engine.max_rows}
        if self.layout is not None:
            details["delay_s"] = self.layout.delay_s
        dtype = None if self.dtype is None else str(self.dtype).removeprefix("torch.")
        device = str(self.device) if self.device is not None else self._device_name()
        return BackendStatus(model is not None, device, dtype, memory, self.busy, details)

    def _device_name(self) -> str:
        try:
            return str(resolve_device(self.settings.device))
        except RuntimeError:
            return self.settings.device

    def check_ready(self) -> None:
        """A loaded model is ready."""

    def check_transcription(self, sampling: Sampling) -> None:
        """Every transcription sampling is served (greedy or at a temperature)."""

    def row_capacity(self) -> int | None:
        """Streams decoded per step (VOXTRAL_BATCH_SIZE, 64 when 0); None until loaded."""
        return None if self.engine is None else self.engine.max_rows

    @property
    def context_tokens(self) -> int:
        """VOXTRAL_MAX_CONTEXT_TOKENS (the protocol's; no chat is served)."""
        return self.settings.max_context_tokens

    # -- tokens --

    @property
    def delay_s(self) -> float:
        """Seconds its text comes out behind the audio: the checkpoint's transcription delay (read from its
        tekken.json while the model is not loaded; 0.48 s on the hub's checkpoint)."""
        if self.layout is not None:
            return self.layout.delay_s
        try:
            tekken = json.loads((self.path / "tekken.json").read_text(encoding="utf-8"))
            return float(tekken["audio"]["transcription_delay_ms"]) / 1000
        except (OSError, ValueError, KeyError, TypeError):
            return 0.0

    @property
    def eos_token_id(self) -> int:
        """The end-of-sequence id (the tokenizer's; Tekken's 2 while not loaded)."""
        processor = self.processor
        return 2 if processor is None else int(processor.tokenizer.eos_token_id)

    def _tekken(self) -> Any:
        return self.processor.tokenizer.tokenizer.instruct_tokenizer.tokenizer

    def token_cap(self, duration_s: float, max_tokens: int | None = None) -> int:
        """Tokens a chunk of `duration_s` seconds generates (one per 80 ms of audio plus the right padding's,
        streaming pads included) and the end-of-sequence that ends it, at most `max_tokens`."""
        self.load()
        assert self.layout is not None
        cap = self.layout.generated_tokens(math.ceil(duration_s * SAMPLE_RATE)) + 1
        return cap if max_tokens is None else min(cap, max_tokens)

    def token_bytes(self, token_ids: Sequence[int]) -> list[bytes]:
        """Each token's own bytes (none for a special token: the streaming pad and word markers)."""
        tekken = self._tekken()
        try:
            return [tekken.id_to_byte_piece(int(token)) for token in token_ids]
        except Exception as exc:  # mistral-common raises KeyError for an unknown id
            raise UndecodableOutputError(tekken.n_words) from exc

    def _one_token_bytes(self, token: int) -> bytes:
        return self.token_bytes([token])[0]

    def decode(self, token_ids: list[int]) -> str:
        """Text of generated tokens, special tokens (streaming pads and word markers) left out."""
        try:
            return str(self.processor.tokenizer.decode(token_ids, skip_special_tokens=True))
        except Exception as exc:
            raise UndecodableOutputError(self._tekken().n_words) from exc

    # -- work --

    def open_stream(self, *, language: str | None, listener: LiveListener) -> LiveStream:
        """Start a live utterance (loading the model if needed); `language` is ignored (the model is not told
        one). ModelUnavailableError when the model cannot be loaded."""
        self.load()
        engine = self.engine
        if engine is None:
            raise ModelUnavailableError(f"The model '{self.model_id}' was unloaded.")
        handle = LiveStreamHandle(engine, listener, self._one_token_bytes, self.settings.realtime_lag_s)
        try:
            engine.add(handle.stream, watcher=handle)
        except RuntimeError as exc:  # unloaded meanwhile
            raise ModelUnavailableError(f"The model '{self.model_id}' was unloaded.") from exc
        return handle

    def transcribe(
        self,
        chunks: Sequence[np.ndarray],
        *,
        language: str | None,
        sampling: Sampling = GREEDY,
        max_tokens: int | None = None,
        on_token: TokenCallback | None = None,
        on_rows: RowsCallback | None = None,
        cancel: threading.Event | None = None,
        more: Iterable[Sequence[np.ndarray]] | None = None,
    ) -> list[ChunkOutput]:
        """Each chunk (float32 mono 16 kHz, shape (n,)) streamed through the model at once, all chunks as
        concurrent rows; outputs in chunk order. `max_tokens` caps each chunk's generated tokens (streaming pads
        included); `on_token` is told every generated token and, when a chunk ends, the end-of-sequence id;
        `more` yields further chunks (an error it raises ends the request with it); GenerationCancelledError
        once `cancel` is set. `language` is ignored."""
        self.load()
        engine = self.engine
        if engine is None:
            raise ModelUnavailableError(f"The model '{self.model_id}' was unloaded.")
        job = FileJob(engine, self.decode, sampling, max_tokens, on_token, cancel)
        job.add(list(chunks), on_rows)
        if more is not None:
            try:
                for part in more:
                    if job.finished:
                        break
                    job.add(list(part), on_rows)
            except Exception as exc:  # producing the rest failed (a corrupt upload): the job ends with it
                job.fail(exc)
        return job.wait()

    def chat(
        self,
        conversations: Sequence[Conversation],
        *,
        caps: Sequence[int],
        sampling: Sampling = GREEDY,
        on_token: TokenCallback | None = None,
        on_rows: RowsCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> list[ChunkOutput]:
        """A realtime model does not chat: InvalidRequestError."""
        raise InvalidRequestError(NO_CHAT.format(model=self.model_id), param="model", code="model_cannot_chat")

    def prompt_tokens(self, conversation: Conversation) -> int:
        """A realtime model does not chat: InvalidRequestError."""
        raise InvalidRequestError(NO_CHAT.format(model=self.model_id), param="model", code="model_cannot_chat")


def warm_up(stepper: Stepper, layout: StreamLayout) -> None:
    """One step of one row on silence, then the caches dropped: the first forward's one-time costs (kernel
    selection, allocator pools, lazy initialisation; a second or more on a GPU) are paid at load, not by the
    first live session's first words."""
    stepper.allocate(1)
    try:
        stepper.step([0], [0], [layout.prompt[0]], np.zeros((1, layout.window), dtype=np.float32))
    finally:
        stepper.reset()
