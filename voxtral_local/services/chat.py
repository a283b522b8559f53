"""Chat completions with audio: OpenAI messages to Voxtral conversations, and lotti's `audio` extension."""

from __future__ import annotations

import base64
import binascii
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from ..audio.decode import SAMPLE_RATE, decode_audio
from ..backends.base import Alternatives, Conversation, ModelBackend, Sampling, audio_part
from ..config import Settings
from ..errors import AudioTooLongError, InvalidRequestError
from ..languages import language_name, normalize_language
from ..models.registry import ModelRegistry
from ..protocol import ChatCompletionContentPartText, ChatCompletionCreateParams, ChatCompletionMessageParam
from .holds import ModelHold, check_available, model_id_of
from .request_log import log_failure, log_request
from .streaming import OrderedText, token_pieces
from .transcription import TranscriptionRequest, TranscriptionService

# Voxtral understands up to about 40 minutes of audio in one prompt (32k-token context).
MAX_CHAT_AUDIO_SECONDS = 40 * 60
DEFAULT_INSTRUCTION = "Transcribe this audio."
# Mistral's recommended sampling for chat with Voxtral, used when the request does not say.
DEFAULT_CHAT_TEMPERATURE = 0.2
DEFAULT_CHAT_TOP_P = 0.95


@dataclass(frozen=True)
class ChatResult:
    """The assistant's reply and its token counts (and its tokens, with their logprobs and alternatives)."""

    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[Alternatives] = field(default_factory=list)
    pieces: Mapping[int, bytes] = field(default_factory=dict)  # bytes of the tokens and alternatives (logprobs)


@dataclass(frozen=True)
class PreparedChat:
    """A validated request with its audio decoded and its model loaded and held, ready to run. `run` lets the
    hold go when it ends; a request that never runs must `close()` it."""

    params: ChatCompletionCreateParams
    conversation: Conversation | None = None  # the messages path
    recording: np.ndarray | None = None  # the `audio` extension path
    instruction: str = DEFAULT_INSTRUCTION
    language: str | None = None
    audio_seconds: float = 0.0  # in the messages or the recording
    hold: ModelHold | None = None  # set by `ChatService.prepare`
    started: float = 0.0  # time.monotonic() when the request began (its logged wall time counts from then)

    def close(self) -> None:
        """Let the model go unless `run` has begun (it lets it go at its end); idempotent."""
        if self.hold is not None:
            self.hold.close()


def decode_base64_audio(
    data: str, *, param: str, max_seconds: float, cancel: threading.Event | None = None
) -> np.ndarray:
    """Base64 (optionally a `data:` URL) to mono 16 kHz samples; InvalidRequestError naming `param` for bad
    base64 or audio, GenerationCancelledError once `cancel` is set (checked while decoding)."""
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequestError(f"'{param}' is not valid base64 audio.", param=param) from exc
    try:
        return decode_audio(raw, max_seconds=max_seconds, cancel=cancel)
    except InvalidRequestError as exc:
        exc.param = param
        raise


class ChatService:
    """Answers chat completions with the request's model (from the registry)."""

    def __init__(self, settings: Settings, models: ModelRegistry, transcription: TranscriptionService) -> None:
        self.settings = settings
        self.models = models
        self.transcription = transcription

    def prepare(self, params: ChatCompletionCreateParams, cancel: threading.Event | None = None) -> PreparedChat:
        """Check the model is on disk, validate, decode, then load and hold the model (blocking), so that a
        stream starts only once nothing but generation can fail; `run` (or `PreparedChat.close`) lets the
        model go. Raises, holding nothing and logged as one line: the registry's errors (ModelNotFoundError,
        ModelNotDownloadedError, ModelUnavailableError) for the model, before any audio is decoded;
        InvalidRequestError for anything the model cannot take; GenerationCancelledError once `cancel` is set
        while audio is being decoded."""
        started = time.monotonic()
        try:
            check_available(self.models, params.model)
            prepared = self._validated(params, cancel)
            hold = ModelHold.acquire(self.models, params.model)
        except BaseException as exc:
            log_failure("chat", model_id_of(self.models, params.model), exc, wall_seconds=time.monotonic() - started)
            raise
        return replace(prepared, hold=hold, started=started)

    def _validated(self, params: ChatCompletionCreateParams, cancel: threading.Event | None) -> PreparedChat:
        """The request checked and its audio decoded (its model not yet held)."""
        if params.top_logprobs and not params.logprobs:
            raise InvalidRequestError("'top_logprobs' needs 'logprobs': true.", param="top_logprobs")
        if params.logprobs and params.audio is not None:
            raise InvalidRequestError(
                "'logprobs' is not available with the 'audio' extension; the transcription endpoint's "
                "include[]=logprobs gives them per token.",
                param="logprobs",
            )
        if params.audio is not None:
            prepared = self._prepare_recording(params, cancel)
        else:
            language = normalize_language(params.language)
            if language is not None:
                raise InvalidRequestError("'language' applies only together with 'audio'.", param="language")
            conversation, seconds = self._conversation(params.messages, cancel)
            prepared = PreparedChat(params=params, conversation=conversation, audio_seconds=seconds)
        return prepared

    def run(
        self,
        prepared: PreparedChat,
        *,
        on_delta: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> ChatResult:
        """Generate the reply (blocking), logged as one line (a failure too, with its code), then let the
        model go; `on_delta` receives text as it is produced. InvalidRequestError (`context_length_exceeded`)
        when the prompt and `max_tokens` do not fit the model's context; GenerationCancelledError when the
        request was closed before it ran."""
        hold = prepared.hold
        if hold is None:
            raise ValueError("a chat runs once ChatService.prepare has held its model")
        try:
            result, chunks = self._run(prepared, hold, on_delta, cancel)
        except BaseException as exc:
            log_failure("chat", hold.model_id, exc, wall_seconds=time.monotonic() - prepared.started)
            raise
        finally:
            hold.close()  # a no-op once the work began: its end let the model go
        log_request(
            "chat",
            hold.model_id,
            audio_seconds=prepared.audio_seconds,
            chunks=chunks,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            wall_seconds=time.monotonic() - prepared.started,
        )
        return result

    def _run(
        self,
        prepared: PreparedChat,
        hold: ModelHold,
        on_delta: Callable[[str], None] | None,
        cancel: threading.Event | None,
    ) -> tuple[ChatResult, int]:
        """The reply and the rows it took, on the held model."""
        params = prepared.params
        max_new = params.max_completion_tokens or params.max_tokens
        chunks = 1
        if prepared.recording is not None:
            request = TranscriptionRequest(
                model=params.model,
                audio=prepared.recording,
                language=prepared.language,
                temperature=params.temperature or 0.0,
                seed=params.seed,
                max_tokens_per_chunk=max_new,
                on_delta=on_delta,
                cancel=cancel,
                hold=hold,
            )
            transcript = self.transcription.transcribe_with_instruction(request, prepared.instruction)
            chunks = len(transcript.segments)
            result = ChatResult(
                text=transcript.text,
                finish_reason="length" if transcript.truncated_segments else "stop",
                prompt_tokens=transcript.prompt_tokens,
                completion_tokens=transcript.completion_tokens,
            )
        else:
            with hold.work() as backend:
                result = self._reply(backend, prepared, max_new, on_delta, cancel)
        return result, chunks

    def _reply(
        self,
        backend: ModelBackend,
        prepared: PreparedChat,
        max_new: int | None,
        on_delta: Callable[[str], None] | None,
        cancel: threading.Event | None,
    ) -> ChatResult:
        """One reply to the conversation; the prompt and the reply must fit the context window."""
        params, conversation = prepared.params, prepared.conversation
        assert conversation is not None
        prompt_tokens = backend.prompt_tokens(conversation)
        context = backend.context_tokens
        room = context - prompt_tokens
        if room <= 0 or (max_new is not None and max_new > room):
            raise InvalidRequestError(
                f"This model's context is {context} tokens; the messages take {prompt_tokens} "
                f"(375 per 30 s of audio) and max_tokens asks for {max_new or 'at least 1'} more.",
                param="messages",
                code="context_length_exceeded",
            )
        sampling = _sampling(params)
        text = None
        if on_delta is not None:
            token_bytes = backend.token_bytes if params.logprobs else None
            text = OrderedText(
                backend.decode, eos_token_id=backend.eos_token_id, caps=(), stop=sampling.stop, token_bytes=token_bytes
            )
        (out,) = backend.chat(
            [conversation],
            caps=[max_new or room],
            sampling=sampling,
            on_token=None if text is None or on_delta is None else text.forward_to(on_delta),
            on_rows=None if text is None else text.add_rows,
            cancel=cancel,
        )
        if text is not None and on_delta is not None:
            for delta in text.finish([out.text]):
                on_delta(delta)
        pieces = token_pieces(backend.token_bytes, out.token_ids, out.top) if params.logprobs else {}
        return ChatResult(
            text=out.text,
            finish_reason="length" if out.hit_cap else "stop",
            prompt_tokens=out.prompt_tokens,
            completion_tokens=out.generated_tokens,
            token_ids=out.token_ids,
            logprobs=out.logprobs,
            top=out.top,
            pieces=pieces,
        )

    def _prepare_recording(self, params: ChatCompletionCreateParams, cancel: threading.Event | None) -> PreparedChat:
        assert params.audio is not None
        if any(isinstance(m.content, list) and _audio_parts(m) for m in params.messages):
            raise InvalidRequestError(
                "Send the recording either as the top-level 'audio' field or as input_audio parts, not both.",
                param="audio",
            )
        if params.stop:
            raise InvalidRequestError("'stop' is not supported together with 'audio'.", param="stop")
        language = normalize_language(params.language)
        recording = decode_base64_audio(
            params.audio, param="audio", max_seconds=self.settings.max_audio_seconds, cancel=cancel
        )
        texts = [_text_of(m) for m in params.messages if m.role in ("system", "developer", "user")]
        instruction = "\n\n".join(t for t in texts if t.strip()) or DEFAULT_INSTRUCTION
        if language is not None:
            instruction += f"\n\nThe audio is in {language_name(language).title()}."
        return PreparedChat(
            params=params,
            recording=recording,
            instruction=instruction,
            language=language,
            audio_seconds=recording.shape[0] / SAMPLE_RATE,
        )

    def _conversation(
        self, messages: list[ChatCompletionMessageParam], cancel: threading.Event | None = None
    ) -> tuple[Conversation, float]:
        """The Voxtral conversation of these messages, and the seconds of audio in it."""
        budget = min(MAX_CHAT_AUDIO_SECONDS, self.settings.max_audio_seconds)
        conversation: Conversation = []
        system: list[str] = []
        total_audio = 0.0
        for index, message in enumerate(messages):
            role = "system" if message.role == "developer" else message.role
            if message.content is None or message.content == [] or message.content == "":
                raise InvalidRequestError(f"messages[{index}] has no content.", param=f"messages[{index}].content")
            if role != "user":
                if isinstance(message.content, list) and _audio_parts(message):
                    raise InvalidRequestError(
                        f"messages[{index}]: only user messages may carry audio.", param=f"messages[{index}]"
                    )
                text = _text_of(message)
                if role == "system":
                    system.append(text)
                    conversation.append({"role": "system", "content": text})
                else:
                    conversation.append({"role": "assistant", "content": text})
                continue
            if isinstance(message.content, str):
                conversation.append({"role": "user", "content": message.content})
                continue
            parts: list[dict[str, Any]] = []
            for part in message.content:
                if isinstance(part, ChatCompletionContentPartText):
                    parts.append({"type": "text", "text": part.text})
                    continue
                data = part.input_audio if isinstance(part.input_audio, str) else part.input_audio.data
                try:
                    samples = decode_base64_audio(
                        data, param="messages", max_seconds=budget - total_audio, cancel=cancel
                    )
                except AudioTooLongError as exc:
                    raise InvalidRequestError(
                        f"The audio in 'messages' is longer than {budget / 60:g} minutes, the most Voxtral "
                        "understands in one prompt. Transcribe longer recordings with /v1/audio/transcriptions "
                        "or the 'audio' field.",
                        param="messages",
                        code="audio_too_long",
                    ) from exc
                total_audio += samples.shape[0] / SAMPLE_RATE
                parts.append(audio_part(samples))
            conversation.append({"role": "user", "content": parts})
        if total_audio and system:
            conversation = _fold_system_into_first_user(conversation)
        return conversation, total_audio


def _audio_parts(message: ChatCompletionMessageParam) -> bool:
    return isinstance(message.content, list) and any(p.type == "input_audio" for p in message.content)


def _text_of(message: ChatCompletionMessageParam) -> str:
    if isinstance(message.content, str):
        return message.content
    return "\n".join(p.text for p in message.content or [] if isinstance(p, ChatCompletionContentPartText))


def _fold_system_into_first_user(conversation: Conversation) -> Conversation:
    """Voxtral's tokenizer (v7) refuses system messages next to audio: put their text first in the first
    user message instead."""
    system_text = "\n\n".join(m["content"] for m in conversation if m["role"] == "system")
    rest = [m for m in conversation if m["role"] != "system"]
    for message in rest:
        if message["role"] == "user":
            content = message["content"]
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
            message["content"] = [{"type": "text", "text": system_text}, *parts]
            break
    return rest


def _sampling(params: ChatCompletionCreateParams) -> Sampling:
    """The request's sampling: Mistral's recommended temperature and top_p where it names neither."""
    stop = (params.stop,) if isinstance(params.stop, str) else tuple(params.stop or ())
    temperature = DEFAULT_CHAT_TEMPERATURE if params.temperature is None else params.temperature
    top_p = params.top_p if params.top_p is not None else (DEFAULT_CHAT_TOP_P if params.temperature is None else 1.0)
    top_logprobs = (params.top_logprobs or 0) if params.logprobs else 0
    return Sampling(
        temperature=temperature,
        top_p=top_p,
        seed=params.seed,
        stop=stop,
        top_logprobs=top_logprobs,
        logprobs=bool(params.logprobs),
    )
