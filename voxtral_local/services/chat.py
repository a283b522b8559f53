"""Chat completions with audio: OpenAI messages to Voxtral conversations, and lotti's `audio` extension."""

from __future__ import annotations

import base64
import binascii
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..audio.decode import decode_audio
from ..backends.base import Alternatives, Sampling
from ..backends.transformers import TransformersBackend
from ..backends.transformers.prompts import Conversation, audio_part
from ..config import Settings
from ..errors import AudioTooLongError, InvalidRequestError
from ..languages import language_name, normalize_language
from ..protocol import (
    ChatCompletionContentPartText,
    ChatCompletionCreateParams,
    ChatCompletionMessageParam,
    ChatCompletionTokenLogprob,
    TopLogprob,
)
from ..responses.transcription import TokenBytes
from .transcription import TranscriptionService

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


@dataclass(frozen=True)
class PreparedChat:
    """A validated request with its audio decoded, ready to run."""

    params: ChatCompletionCreateParams
    conversation: Conversation | None = None  # the messages path
    recording: np.ndarray | None = None  # the `audio` extension path
    instruction: str = DEFAULT_INSTRUCTION
    language: str | None = None


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
    """Answers chat completions with the shared engine."""

    def __init__(self, settings: Settings, engine: TransformersBackend, transcription: TranscriptionService) -> None:
        self.settings = settings
        self.engine = engine
        self.transcription = transcription

    def prepare(self, params: ChatCompletionCreateParams, cancel: threading.Event | None = None) -> PreparedChat:
        """Validate and decode (blocking). Raises InvalidRequestError for anything the model cannot take, and
        GenerationCancelledError once `cancel` is set while audio is being decoded."""
        if params.top_logprobs and not params.logprobs:
            raise InvalidRequestError("'top_logprobs' needs 'logprobs': true.", param="top_logprobs")
        if params.logprobs and params.audio is not None:
            raise InvalidRequestError(
                "'logprobs' is not available with the 'audio' extension; the transcription endpoint's "
                "include[]=logprobs gives them per token.",
                param="logprobs",
            )
        if params.audio is not None:
            return self._prepare_recording(params, cancel)
        language = normalize_language(params.language)
        if language is not None:
            raise InvalidRequestError("'language' applies only together with 'audio'.", param="language")
        return PreparedChat(params=params, conversation=self._conversation(params.messages, cancel))

    def run(
        self,
        prepared: PreparedChat,
        *,
        on_delta: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> ChatResult:
        """Generate the reply (blocking); `on_delta` receives text as it is produced."""
        params = prepared.params
        max_new = params.max_completion_tokens or params.max_tokens
        if prepared.recording is not None:
            result = self.transcription.transcribe(
                prepared.recording,
                language=prepared.language,
                temperature=params.temperature or 0.0,
                seed=params.seed,
                instruction=prepared.instruction,
                max_tokens_per_chunk=max_new,
                on_delta=on_delta,
                cancel=cancel,
            )
            return ChatResult(
                text=result.text,
                finish_reason="length" if result.truncated_segments else "stop",
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
            )
        assert prepared.conversation is not None
        stop = (params.stop,) if isinstance(params.stop, str) else tuple(params.stop or ())
        temperature = DEFAULT_CHAT_TEMPERATURE if params.temperature is None else params.temperature
        top_p = (
            params.top_p if params.top_p is not None else (DEFAULT_CHAT_TOP_P if params.temperature is None else 1.0)
        )
        top_logprobs = (params.top_logprobs or 0) if params.logprobs else 0
        sampling = Sampling(
            temperature=temperature, top_p=top_p, seed=params.seed, stop=stop, top_logprobs=top_logprobs
        )
        out = self.engine.chat_one(
            prepared.conversation,
            max_new_tokens=max_new,
            sampling=sampling,
            on_delta=on_delta,
            cancel=cancel,
        )
        return ChatResult(
            text=out.text,
            finish_reason="length" if out.hit_cap else "stop",
            prompt_tokens=out.prompt_tokens,
            completion_tokens=len(out.token_ids),
            token_ids=out.token_ids,
            logprobs=out.logprobs,
            top=out.top,
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
        self.engine.load()
        return PreparedChat(params=params, recording=recording, instruction=instruction, language=language)

    def _conversation(
        self, messages: list[ChatCompletionMessageParam], cancel: threading.Event | None = None
    ) -> Conversation:
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
                total_audio += samples.shape[0] / 16_000
                parts.append(audio_part(samples))
            conversation.append({"role": "user", "content": parts})
        if total_audio and system:
            conversation = _fold_system_into_first_user(conversation)
        self.engine.load()
        return conversation


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


def logprob_content(
    token_ids: Sequence[int],
    logprobs: Sequence[float],
    top: Sequence[Alternatives],
    token_bytes: TokenBytes,
) -> list[ChatCompletionTokenLogprob]:
    """OpenAI's `logprobs.content` for these tokens: each one's text, bytes and logprob, and the step's most
    likely tokens (none where `top_logprobs` was not asked for)."""
    everything = [*token_ids, *(alt for step in top for alt, _ in step)]
    pieces = dict(zip(everything, token_bytes(everything), strict=True))

    def text(token: int) -> str:
        return pieces[token].decode("utf-8", errors="replace")

    return [
        ChatCompletionTokenLogprob(
            token=text(token),
            bytes=list(pieces[token]),
            logprob=logprob,
            top_logprobs=[TopLogprob(token=text(alt), bytes=list(pieces[alt]), logprob=value) for alt, value in step],
        )
        for token, logprob, step in zip(token_ids, logprobs, top, strict=True)
    ]
