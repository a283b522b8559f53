"""Build a random-weight Voxtral Realtime checkpoint that loads with `from_pretrained` like the hub's
Voxtral-Mini-4B-Realtime-2602: the real config, model, feature extractor and processor classes with small sizes,
safetensors weights, and a real Tekken tokenizer carrying the streaming audio config (480 ms delay, left
padding) and the `[STREAMING_PAD]`/`[STREAMING_WORD]` special tokens. No network is needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from .tiny_model import SPECIAL_TOKENS, write_tekken

# The realtime tokenizer's special tokens differ from Voxtral's at 32 and 33 (its tekken.json).
REALTIME_SPECIAL_TOKENS = {**SPECIAL_TOKENS, 32: "[STREAMING_PAD]", 33: "[STREAMING_WORD]"}
STREAMING_AUDIO_CONFIG = {
    "sampling_rate": 16000,
    "frame_rate": 12.5,
    "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
    "transcription_format": "streaming",
    "transcription_delay_ms": 480,
    "streaming_look_ahead_ms": 2.5,
    "streaming_look_back_ms": 52.5,
}

Preset = Literal["tiny", "small"]


def tiny_realtime_config(vocab_size: int, preset: Preset = "tiny", *, windows: tuple[int, int] | None = None) -> Any:
    """A `VoxtralRealtimeConfig` with the real structure: "tiny" for tests, "small" a CPU-sized model for
    benchmarks. `windows` (encoder, decoder sliding windows in positions) overrides the preset's."""
    from transformers import VoxtralRealtimeConfig

    encoder = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    text = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
    window = (750, 8192)
    if preset == "small":
        encoder = {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4}
        text = {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 4, "num_attention_heads": 8}
    encoder_window, text_window = windows or window
    return VoxtralRealtimeConfig(
        audio_config={
            "model_type": "voxtral_realtime_encoder",
            **encoder,
            "head_dim": encoder["hidden_size"] // encoder["num_attention_heads"],
            "num_mel_bins": 128,
            "sliding_window": encoder_window,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        },
        text_config={
            "model_type": "voxtral_realtime_text",
            "vocab_size": vocab_size,
            **text,
            "num_key_value_heads": text["num_attention_heads"] // 2,
            "head_dim": text["hidden_size"] // text["num_attention_heads"],
            "max_position_embeddings": 131072,
            "sliding_window": text_window,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
            "tie_word_embeddings": False,
        },
        tie_word_embeddings=False,
    )


def build_tiny_realtime_model(
    out: str | Path,
    *,
    preset: Preset = "tiny",
    seed: int = 0,
    vocab_tokens: int = 4096,
    logit_scale: float = 30.0,
    left_pad_tokens: int = 32,
    windows: tuple[int, int] | None = None,
) -> Path:
    """Write a random-weight Voxtral Realtime checkpoint to `out` and return its path.

    `logit_scale` multiplies the LM head so that the best token wins by a wide margin (greedy decoding then
    gives the same tokens alone or batched), and the streaming pad token's row is scaled down so that the
    model writes text tokens often, not only pads. `left_pad_tokens`: the tokenizer's
    `streaming_n_left_pad_tokens` (32 on the hub). `windows`: the encoder's and decoder's sliding windows in
    positions (small ones let a test see the caches stop growing)."""
    import torch
    from transformers import (
        VoxtralRealtimeFeatureExtractor,
        VoxtralRealtimeForConditionalGeneration,
        VoxtralRealtimeProcessor,
    )
    from transformers.tokenization_mistral_common import MistralCommonBackend

    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    tekken = write_tekken(path, vocab_tokens=vocab_tokens)
    data = json.loads(tekken.read_text(encoding="utf-8"))
    for entry in data["special_tokens"]:
        entry["token_str"] = REALTIME_SPECIAL_TOKENS.get(entry["rank"], entry["token_str"])
    data["audio"] = {**STREAMING_AUDIO_CONFIG, "streaming_n_left_pad_tokens": left_pad_tokens}
    tekken.write_text(json.dumps(data), encoding="utf-8")
    torch.manual_seed(seed)
    vocab = len(data["special_tokens"]) + vocab_tokens
    model = VoxtralRealtimeForConditionalGeneration(tiny_realtime_config(vocab, preset, windows=windows))
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
        model.lm_head.weight[32].mul_(0.5)  # [STREAMING_PAD]: still common, but text wins often
    model.generation_config.pad_token_id = 11
    model.save_pretrained(path)
    feature_extractor = VoxtralRealtimeFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160)
    tokenizer = MistralCommonBackend.from_pretrained(str(path))
    VoxtralRealtimeProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(path)
    return path
