"""`TransformersBackend`: Voxtral in this process, loaded once from a checkpoint directory, shared by all
requests. It gives tokens (and their text per row); the services turn them into streamed text."""

from __future__ import annotations

import gc
import logging
import math
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mistral_common.exceptions import MistralCommonException

from ...audio.decode import SAMPLE_RATE
from ...config import Settings
from ...devices import resolve_device, resolve_dtype
from ...errors import InvalidRequestError, ModelUnavailableError, UndecodableOutputError, shorten
from ..base import BackendStatus, ChunkOutput, RowsCallback, Sampling, TokenCallback, chunk_token_cap
from .features import TranscriptionFeatures, window_count, windows_for
from .generation import RowResult
from .inputs import Inputs, merge_inputs, split_rows
from .memory import MemoryPlan
from .prompts import Conversation, chat_inputs
from .scheduler import Footprint, Job, Scheduler

logger = logging.getLogger(__name__)


GREEDY = Sampling()


class TransformersBackend:
    """Loads `VoxtralForConditionalGeneration` and its processor, and runs batched generation.

    Thread-safe: loading happens once under a lock; every request's rows go to one `Scheduler`, which
    decodes them together (continuous batching).
    """

    def __init__(self, model_id: str, path: Path, settings: Settings) -> None:
        """`model_id`: the served model's id (for logs and the transcription request); `path`: its checkpoint
        directory (a `save_pretrained` layout); `settings`: device, dtype, memory budget, token caps."""
        self.model_id = model_id
        self.path = path
        self.settings = settings
        self.model: Any = None
        self.processor: Any = None
        self.device: torch.device | None = None
        self.dtype: torch.dtype | None = None
        self.features: TranscriptionFeatures | None = None
        self.scheduler: Scheduler | None = None
        self._load_lock = threading.Lock()
        self._prompts = threading.local()  # the chat rows `prompt_tokens` built, for `chat` on the same thread

    @property
    def loaded(self) -> bool:
        return self.model is not None

    @property
    def busy(self) -> bool:
        """True while any request's rows wait or decode."""
        return self.scheduler is not None and self.scheduler.busy

    def device_name(self) -> str:
        """The device the model runs (or will run) on."""
        if self.device is not None:
            return str(self.device)
        try:
            return str(resolve_device(self.settings.device))
        except RuntimeError:
            return self.settings.device

    def status(self) -> BackendStatus:
        """Where the model runs and the bytes its weights (and buffers) take; 0 bytes when unloaded."""
        model = self.model
        memory = 0
        if model is not None:
            tensors = [*model.parameters(), *model.buffers()]
            memory = sum(t.numel() * t.element_size() for t in tensors)
        details: dict[str, Any] = {"path": str(self.path)}
        rows = self.row_capacity()
        if rows is not None:
            details["row_capacity"] = rows
        dtype = None if self.dtype is None else str(self.dtype).removeprefix("torch.")
        return BackendStatus(model is not None, self.device_name(), dtype, memory, self.busy, details)

    @property
    def context_tokens(self) -> int:
        """The context window for a chat's prompt plus reply (`VOXTRAL_MAX_CONTEXT_TOKENS`)."""
        return self.settings.max_context_tokens

    def load(self) -> None:
        """Load model and processor from `path` if not yet loaded, once (under a lock); ModelUnavailableError
        with the reason when that fails."""
        if self.model is not None:
            return
        with self._load_lock:
            if self.model is not None:
                return
            source = self.path
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
                reason = f"The model '{self.model_id}' could not be loaded: {type(exc).__name__}: {exc}"
                raise ModelUnavailableError(shorten(reason, 1000)) from exc
            self._serve(model, processor)

    def adopt(self, model: Any, processor: Any) -> None:
        """Serve a model already in memory (the benchmark builds one without writing it to disk)."""
        with self._load_lock:
            self._serve(model, processor)

    def _serve(self, model: Any, processor: Any) -> None:
        self.processor, self.device, self.dtype = processor, model.device, model.dtype
        self.features = TranscriptionFeatures(processor, self.model_id)
        self.plan = MemoryPlan.for_model(
            model, model.device, self.settings.memory_budget_gb, max_rows=self.settings.batch_size
        )
        if self.scheduler is not None:
            self.scheduler.close()
        tokenizer = processor.tokenizer
        self.scheduler = Scheduler(
            model,
            self.plan,
            eos_token_id=int(tokenizer.eos_token_id),
            pad_token_id=int(tokenizer.pad_token_id),
            decode=self.decode,
            decodable=self._tekken(processor).n_words,
        )
        self.model = model
        plan = self.plan
        logger.info("memory budget %.1f GiB, KV cache %d bytes per token", plan.budget / 2**30, plan.kv_per_token)

    def close(self, timeout: float) -> bool:
        """Stop decoding for good (at process exit): the decoder thread ends after its current step, and work
        still queued is abandoned. Whether it ended within `timeout` seconds; a thread still inside torch
        when the interpreter finalizes aborts the process, so the caller must not exit normally otherwise."""
        if self.scheduler is None:
            return True
        self.scheduler.close()
        return self.scheduler.join(timeout)

    def unload(self) -> None:
        """Free the model: the decoder thread ends, and the weights, processor, features and memory plan are
        dropped (with a garbage collection and, on CUDA, the allocator's cache emptied), so the process's
        memory goes back down. The caller makes sure no request uses the model; the next `load` loads it
        again."""
        with self._load_lock:
            scheduler, self.scheduler = self.scheduler, None
            if scheduler is not None:
                scheduler.close()
                if not scheduler.join(timeout=60.0):
                    logger.warning("the decoder thread of %s did not end within 60 s", self.model_id)
            device = self.device
            self.model = self.processor = self.features = None
            self.device = self.dtype = None
            if hasattr(self, "plan"):
                del self.plan
        gc.collect()
        if device is not None and device.type == "cuda":
            torch.cuda.empty_cache()

    def check_ready(self) -> None:
        """A loaded model is ready."""

    def check_transcription(self, sampling: Sampling) -> None:
        """Every sampling is served here."""

    def row_capacity(self) -> int | None:
        """Rows of full-length chunks (prompt plus token cap) the memory plan holds at once, within
        VOXTRAL_BATCH_SIZE; None until the model is loaded (the budget depends on the memory left then)."""
        if self.features is None or self.scheduler is None:
            return None
        seconds = self.settings.chunk_seconds
        windows = windows_for(math.ceil(seconds * SAMPLE_RATE))
        return self.plan.rows(self.features.prompt_length(windows, None) + self.token_cap(seconds))

    def token_cap(self, duration_s: float, max_tokens: int | None = None) -> int:
        """New-token cap for a chunk of this length (generous enough for very fast speech), at most
        `max_tokens`."""
        return chunk_token_cap(duration_s, self.settings.max_tokens_per_audio_second, max_tokens)

    @property
    def eos_token_id(self) -> int:
        return int(self.processor.tokenizer.eos_token_id)

    @staticmethod
    def _tekken(processor: Any) -> Any:
        """mistral-common's Tekkenizer behind the processor's tokenizer."""
        return processor.tokenizer.tokenizer.instruct_tokenizer.tokenizer

    def token_bytes(self, token_ids: Sequence[int]) -> list[bytes]:
        """Each token's own bytes, as the vocabulary holds them (none for a special token);
        UndecodableOutputError for an id the tokenizer does not have."""
        tekken = self._tekken(self.processor)
        try:
            return [tekken.id_to_byte_piece(int(token)) for token in token_ids]
        except Exception as exc:  # mistral-common raises KeyError for an unknown id
            raise UndecodableOutputError(tekken.n_words) from exc

    def decode(self, token_ids: list[int]) -> str:
        """Text of generated tokens, special tokens left out; UndecodableOutputError if the tokenizer cannot
        decode them (generation never chooses such ids, see `suppression`: this is the last guard)."""
        try:
            return str(self.processor.tokenizer.decode(token_ids, skip_special_tokens=True))
        except Exception as exc:  # mistral-common raises KeyError for an unknown id
            raise UndecodableOutputError(self._tekken(self.processor).n_words) from exc

    def transcribe(
        self,
        chunks: Sequence[np.ndarray],
        *,
        language: str | None,
        sampling: Sampling = GREEDY,
        max_tokens: int | None = None,
        on_token: TokenCallback | None = None,
        cancel: threading.Event | None = None,
        more: Iterable[Sequence[np.ndarray]] | None = None,
        on_rows: RowsCallback | None = None,
    ) -> list[ChunkOutput]:
        """Transcribe chunks (mono 16 kHz) with the official transcription prompt; outputs in chunk order.
        Each chunk generates at most its `token_cap` (and `max_tokens`) new tokens.

        With `more`, the first chunks start decoding at once and each part `more` yields (produced on this
        thread meanwhile, e.g. by decoding the rest of the upload) joins them; an error it raises ends the
        request with that error."""
        self.load()
        assert self.features is not None and self.device is not None
        features, device = self.features, self.device
        audio = list(chunks)

        def rows(part: Sequence[np.ndarray]) -> tuple[list[Footprint], list[int]]:
            windows = [window_count(chunk) for chunk in part]
            footprints = [Footprint(features.prompt_length(w, language), w) for w in windows]
            return footprints, [self.token_cap(chunk.shape[0] / SAMPLE_RATE, max_tokens) for chunk in part]

        def parts(more: Iterable[Sequence[np.ndarray]]) -> Iterator[tuple[list[Footprint], list[int]]]:
            for part in more:
                audio.extend(part)  # before the scheduler hears of these rows and builds their inputs
                yield rows(part)

        footprints, caps = rows(audio)
        job = Job(
            build=lambda indices: features([audio[i] for i in indices], language=language, device=device),
            footprints=footprints,
            caps=caps,
            sampling=sampling,
            on_token=on_token,
            cancel=cancel,
            open=more is not None,
        )
        return self._run(job, on_rows, None if more is None else parts(more))

    def chat(
        self,
        conversations: Sequence[Conversation],
        *,
        caps: Sequence[int],
        sampling: Sampling = GREEDY,
        on_token: TokenCallback | None = None,
        cancel: threading.Event | None = None,
        on_rows: RowsCallback | None = None,
    ) -> list[ChunkOutput]:
        """Generate a reply to each conversation, at most `caps[i]` new tokens each; outputs in conversation
        order. InvalidRequestError for a conversation the chat template refuses."""
        self.load()
        built: tuple[Conversation, list[Inputs]] | None = getattr(self._prompts, "built", None)
        self._prompts.built = None
        if built is not None and len(conversations) == 1 and built[0] is conversations[0]:
            rows = built[1]  # `prompt_tokens` just built them on this thread
        else:
            rows = self._chat_inputs(conversations)
        job = self._chat_job(rows, caps, sampling, on_token, cancel)
        return self._run(job, on_rows)

    def prompt_tokens(self, conversation: Conversation) -> int:
        """Tokens the conversation's prompt takes (375 per 30 s of audio); InvalidRequestError for one the
        chat template refuses. The inputs built are kept for a `chat` of this conversation on this thread."""
        self.load()
        rows = self._chat_inputs([conversation])
        self._prompts.built = (conversation, rows)
        return int(rows[0]["input_ids"].shape[1])

    def _chat_inputs(self, conversations: Sequence[Conversation]) -> list[Inputs]:
        try:
            inputs = chat_inputs(self.processor, conversations)
        except (ValueError, TypeError, AssertionError, MistralCommonException) as exc:  # mistral-common's checks
            raise InvalidRequestError(f"Invalid messages: {shorten(str(exc))}", param="messages") from exc
        return split_rows(inputs, int(self.model.config.audio_token_id))

    def _chat_job(
        self,
        rows: list[Inputs],
        caps: Sequence[int],
        sampling: Sampling,
        on_token: TokenCallback | None,
        cancel: threading.Event | None,
    ) -> Job:
        device, dtype, pad = self.device, self.dtype, int(self.processor.tokenizer.pad_token_id)

        def build(indices: Sequence[int]) -> Inputs:
            merged = merge_inputs([rows[i] for i in indices], pad)
            return {k: v.to(device, dtype=dtype if k == "input_features" else None) for k, v in merged.items()}

        footprints = [Footprint(int(r["input_ids"].shape[1]), len(r.get("input_features", ()))) for r in rows]
        return Job(build, footprints, list(caps), sampling, on_token, cancel)

    def _run(
        self,
        job: Job,
        on_rows: RowsCallback | None,
        more: Iterator[tuple[list[Footprint], list[int]]] | None = None,
    ) -> list[ChunkOutput]:
        """Submit the job, add `more`'s rows to it as they come, and wait for every row's output."""
        scheduler = self.scheduler
        assert scheduler is not None
        if on_rows is not None:
            on_rows(job.caps)
        scheduler.submit(job)
        if more is not None:
            try:
                for footprints, caps in more:
                    if job.done.is_set():  # cancelled or failed: producing the rest is wasted work
                        break
                    if on_rows is not None:
                        on_rows(caps)
                    scheduler.extend(job, footprints, caps)
            except Exception as exc:  # producing the rest failed (a corrupt upload): the job ends with it
                scheduler.abort(job, exc)
            finally:
                scheduler.seal(job)
        return [self._output(row) for row in job.wait()]

    def _output(self, row: RowResult) -> ChunkOutput:
        text = self.decode(row.token_ids)
        if row.stop_at is not None:
            text = text[: row.stop_at]
        return ChunkOutput(
            text=text.strip(),
            token_ids=row.token_ids,
            logprobs=row.logprobs[: len(row.token_ids)],
            top=row.top[: len(row.token_ids)],
            avg_logprob=float(np.mean(row.logprobs)) if row.logprobs else 0.0,
            no_speech_prob=row.no_speech_prob,
            finish_reason=row.finish_reason,
            prompt_tokens=row.prompt_tokens,
            audio_tokens=row.audio_tokens,
        )
