"""OpenAI request, response and error models, named after their `openai.types` counterparts."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
# Bounds on the lists of a chat request (a longer one is a 400 naming the field): OpenAI's own limits for
# messages (2048) and stop (4); 256 content parts per message is far beyond any conversation Voxtral's
# 32k-token context holds (an audio part takes 375 tokens per 30 s).
MAX_MESSAGES = 2048
MAX_CONTENT_PARTS = 256
MAX_STOP = 4
TimestampGranularity = Literal["segment", "word"]
TranscriptionInclude = Literal["logprobs"]


class TranscriptionCreateParams(BaseModel):
    """The non-file fields of `POST /v1/audio/transcriptions` (multipart)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    language: str | None = None
    prompt: str | None = None
    response_format: ResponseFormat = "json"
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    timestamp_granularities: list[TimestampGranularity] = Field(default_factory=list)
    stream: bool = False
    chunking_strategy: Literal["auto"] | None = None
    include: list[TranscriptionInclude] = Field(default_factory=list)


class UsageDuration(BaseModel):
    """`openai.types.audio.transcription.UsageDuration`."""

    type: Literal["duration"] = "duration"
    seconds: int


class Logprob(BaseModel):
    """`openai.types.audio.transcription.Logprob`: one generated token (`include[]=logprobs`)."""

    token: str
    bytes: list[int]
    logprob: float


class Transcription(BaseModel):
    """`openai.types.audio.Transcription` (`response_format=json`)."""

    text: str
    logprobs: list[Logprob] | None = None
    usage: UsageDuration
    truncated_segments: list[int] | None = Field(
        None, description="Extension: ids of segments whose generation hit the token cap."
    )


class TranscriptionSegment(BaseModel):
    """`openai.types.audio.TranscriptionSegment`."""

    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class TranscriptionVerbose(BaseModel):
    """`openai.types.audio.TranscriptionVerbose` / `TranslationVerbose` (`response_format=verbose_json`)."""

    task: Literal["transcribe", "translate"] = "transcribe"
    language: str
    duration: float
    text: str
    segments: list[TranscriptionSegment]
    usage: UsageDuration
    truncated_segments: list[int] | None = None


class Model(BaseModel):
    """`openai.types.Model`, plus extensions: what an alias means, whether the checkpoint is downloaded and
    loaded, its size on disk, the memory it needs when loaded, where it runs and whether it streams live."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time the checkpoint was written to this machine; 0 when not downloaded.")
    owned_by: str
    alias_of: str | None = Field(None, description="For an alias: the id of the served model it means.")
    downloaded: bool
    loaded: bool
    size_bytes: int | None = Field(None, description="Bytes of the checkpoint on disk; null when not downloaded.")
    memory_bytes: int | None = Field(
        None,
        description="Memory the weights need when loaded (from the safetensors headers and the dtype); null when "
        "not known (not downloaded, or on the upstreams).",
    )
    backend: Literal["transformers", "vllm"] = Field(
        "transformers", description="Where it runs: in this process, or on the upstream vLLM servers."
    )
    realtime: bool = Field(
        False,
        description="A realtime model (Voxtral Realtime): on `/v1/realtime` its text streams while the audio "
        "arrives; other models transcribe each utterance when it ends.",
    )
    upstreams: list[str] | None = Field(
        None, description="For a model on the upstreams: the URLs of those that are up and list it now."
    )


class ModelList(BaseModel):
    """The `GET /v1/models` page: every served model and every alias."""

    object: Literal["list"] = "list"
    data: list[Model]


class ModelDeleted(BaseModel):
    """`openai.types.ModelDeleted`: the answer to `DELETE /v1/models/{id}` (its files left the cache)."""

    id: str
    object: Literal["model"] = "model"
    deleted: bool


class RunningModel(BaseModel):
    """One loaded model in `GET /api/ps`."""

    id: str
    device: str
    dtype: str | None
    memory_bytes: int = Field(description="Memory its weights take (bytes).")
    requests_in_flight: int
    idle_seconds: float = Field(description="Seconds since its last request ended (0 while one runs).")
    expires_in: float | None = Field(
        None, description="Seconds until the idle unload (VOXTRAL_MODEL_TTL); null when it never expires."
    )


class RunningModels(BaseModel):
    """`GET /api/ps`: the loaded models. `models` lists their ids as speaches does; `data` says more."""

    models: list[str]
    data: list[RunningModel]


class ModelPullRequest(BaseModel):
    """`POST /v1/models/pull` (not an OpenAI endpoint: lotti's and its earlier local services'). Both fields
    may name the model: `model_name` as lotti sends it, `model` as Ollama's pull does; default: the served one."""

    model_config = ConfigDict(extra="forbid")

    model_name: str | None = Field(None, min_length=1)
    model: str | None = Field(None, min_length=1)
    stream: bool = True


class ModelPullStatus(BaseModel):
    """Progress of a pull (each streamed event) and its outcome (the last event, or the plain response).
    Bytes count what needed downloading (a model already complete needs none); files count the model's
    files, checked or downloaded."""

    status: Literal["pulling", "downloading", "success"]
    model: str
    completed: int = Field(description="Bytes downloaded so far.")
    total: int = Field(description="Bytes to download, as far as known (it grows as downloads start).")
    files_completed: int
    files_total: int


class UpstreamHealth(BaseModel):
    """One upstream model server (VOXTRAL_VLLM_URLS) in `/health`."""

    url: str = Field(description="Its API root (ending in /v1).")
    state: Literal["unknown", "up", "down"] = Field(
        description="`down` after a refused connection, a timeout or a server error, until a health check (GET "
        "/v1/models each VOXTRAL_VLLM_HEALTH_INTERVAL_S) sees it answer again."
    )
    in_flight: int = Field(description="Requests (one per chunk) it is answering now.")
    max_in_flight: int = Field(description="VOXTRAL_VLLM_MAX_IN_FLIGHT: further requests wait.")
    requests: int = Field(description="Requests sent to it since this server started.")
    models: list[str] = Field(description="The model ids it listed at its last health check.")
    kind: Literal["vllm", "openai"] = Field(description="`vllm` when its model list says `owned_by: vllm`.")
    last_error: str | None = Field(None, description="What its last failure was; null if none.")
    last_error_at: float | None = Field(None, description="Unix time of its last failure.")
    checked_at: float | None = Field(None, description="Unix time of its last health check.")


class Health(BaseModel):
    """`GET /health`: the fields lotti's earlier local services reported (about the default model), plus the
    device, its memory and the loaded models."""

    status: Literal["healthy"] = "healthy"
    model: str = Field(description="The default model's id.")
    model_available: bool = Field(
        description="Whether the default model is downloaded (for a model on the upstreams: whether an upstream "
        "that is up lists it)."
    )
    model_loaded: bool = Field(description="Whether the default model is loaded.")
    model_error: str | None = Field(
        None,
        description="Extension: why the default model cannot be served (a missing or unreadable directory, the last "
        "load failure); null when nothing is known to be wrong.",
    )
    device: str
    memory_total_bytes: int | None = Field(None, description="Memory of the device (RAM on a CPU); null if unknown.")
    memory_available_bytes: int | None = Field(None, description="Memory free on the device now; null if unknown.")
    loaded_models: list[RunningModel] = Field(default_factory=list)
    max_audio_minutes: float
    upstreams: list[UpstreamHealth] | None = Field(
        None, description="Each upstream model server of VOXTRAL_VLLM_URLS; null when none is configured."
    )


class ErrorDetail(BaseModel):
    """The body of an OpenAI error."""

    message: str
    type: str
    param: str | None = None
    code: str = Field(description="Always set: a stable name for the kind of error.")


class ErrorResponse(BaseModel):
    """`{"error": {...}}`, the envelope every error uses."""

    error: ErrorDetail


class TranslationCreateParams(BaseModel):
    """The non-file fields of `POST /v1/audio/translations` (multipart)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    prompt: str | None = None
    response_format: ResponseFormat = "json"
    temperature: float = Field(0.0, ge=0.0, le=2.0)


class UsageInputTokenDetails(BaseModel):
    """`openai.types.audio.transcription_text_done_event.UsageInputTokenDetails`."""

    audio_tokens: int
    text_tokens: int


class UsageTokens(BaseModel):
    """Token usage of a streamed transcription (`type: tokens`)."""

    type: Literal["tokens"] = "tokens"
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_token_details: UsageInputTokenDetails


class TranscriptionTextDeltaEvent(BaseModel):
    """`openai.types.audio.TranscriptionTextDeltaEvent`."""

    type: Literal["transcript.text.delta"] = "transcript.text.delta"
    delta: str
    logprobs: list[Logprob] | None = None


class StreamedSegment(BaseModel):
    """One segment in a streamed transcript's done event: a chunk of the audio, its offsets in seconds and
    its text (as `verbose_json`'s segments, without the token and probability fields)."""

    id: int
    start: float
    end: float
    text: str


class TranscriptionTextDoneEvent(BaseModel):
    """`openai.types.audio.TranscriptionTextDoneEvent`."""

    type: Literal["transcript.text.done"] = "transcript.text.done"
    text: str
    logprobs: list[Logprob] | None = None
    usage: UsageTokens
    truncated_segments: list[int] | None = Field(
        None, description="Extension: ids of segments whose generation hit the token cap (absent if none)."
    )
    segments: list[StreamedSegment] | None = Field(
        None,
        description="Extension, with timestamp_granularities[]=segment: the segments (the audio's chunks) with "
        "their times, from which subtitles can be written without transcribing again.",
    )


# ---- chat completions -------------------------------------------------------------------------------


class InputAudio(BaseModel):
    """`input_audio` of a content part: base64 data and its format (the bytes are sniffed regardless)."""

    data: str
    format: str | None = None


class ChatCompletionContentPartText(BaseModel):
    type: Literal["text"]
    text: str


class ChatCompletionContentPartInputAudio(BaseModel):
    """OpenAI's `{"input_audio": {"data", "format"}}`, or Mistral's bare base64 string."""

    type: Literal["input_audio"]
    input_audio: InputAudio | str


ChatCompletionContentPart = Annotated[
    ChatCompletionContentPartText | ChatCompletionContentPartInputAudio, Field(discriminator="type")
]


def _at_most(value: object, limit: int, what: str) -> object:
    """`value` unchanged, unless it is a list longer than `limit`: then a `too_long` error, raised before its
    items are validated (a million invalid items would otherwise each be validated and reported)."""
    if isinstance(value, list) and len(value) > limit:
        raise PydanticCustomError(
            "too_long",
            "at most {limit} {what} are allowed, not {count}",
            {"limit": limit, "what": what, "count": len(value)},
        )
    return value


class ChatCompletionMessageParam(BaseModel):
    """One message of `messages`: system/developer/user/assistant, text or a list of parts."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ChatCompletionContentPart] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _content_count(cls, value: object) -> object:
        return _at_most(value, MAX_CONTENT_PARTS, "content parts")


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionCreateParams(BaseModel):
    """`POST /v1/chat/completions`. Unknown fields are accepted and not used (`ignored_fields` names them);
    `audio` and `language` are extensions."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatCompletionMessageParam] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(None, ge=1, le=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream: bool = False
    stream_options: StreamOptions | None = None
    audio: str | None = Field(None, description="Extension (lotti): base64 audio to transcribe.")
    language: str | None = Field(None, description="Extension (lotti): ISO 639-1 language of `audio`.")

    @property
    def ignored_fields(self) -> list[str]:
        """The request's fields that this server does not use (any not declared here), sorted."""
        return sorted(self.model_extra or {})

    @field_validator("messages", mode="before")
    @classmethod
    def _messages_count(cls, value: object) -> object:
        return _at_most(value, MAX_MESSAGES, "messages")

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_count(cls, value: object) -> object:
        return _at_most(value, MAX_STOP, "stop strings")

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else value or []
        if any(not item for item in items):
            raise ValueError("stop takes at most 4 non-empty strings")
        return value


class CompletionUsage(BaseModel):
    """`openai.types.CompletionUsage`."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    """`openai.types.chat.chat_completion_token_logprob.TopLogprob`."""

    token: str
    bytes: list[int]
    logprob: float


class ChatCompletionTokenLogprob(BaseModel):
    """`openai.types.chat.ChatCompletionTokenLogprob`: a generated token and the step's most likely ones."""

    token: str
    bytes: list[int]
    logprob: float
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    """`openai.types.chat.chat_completion.ChoiceLogprobs` (and a chunk's)."""

    content: list[ChatCompletionTokenLogprob] | None
    refusal: list[ChatCompletionTokenLogprob] | None = None


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ChatCompletionMessage
    finish_reason: Literal["stop", "length"]
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    """`openai.types.chat.ChatCompletion`."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage


class ChoiceDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChoiceDelta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    """`openai.types.chat.ChatCompletionChunk`."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None
