"""Build a random-weight Voxtral checkpoint that loads with `from_pretrained` like a hub checkpoint.

The real config and model classes with tiny sizes, safetensors weights, a real Tekken tokenizer derived
from the file mistral-common ships (with Voxtral's audio config and special tokens), and the processor
config. No network is needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Voxtral's special tokens (ids in its tekken.json); the rest of the 1000 slots are `<SPECIAL_n>`.
SPECIAL_TOKENS = {
    0: "<unk>", 1: "<s>", 2: "</s>", 3: "[INST]", 4: "[/INST]", 5: "[AVAILABLE_TOOLS]",
    6: "[/AVAILABLE_TOOLS]", 7: "[TOOL_RESULTS]", 8: "[/TOOL_RESULTS]", 9: "[TOOL_CALLS]", 10: "[IMG]",
    11: "<pad>", 12: "[IMG_BREAK]", 13: "[IMG_END]", 14: "[PREFIX]", 15: "[MIDDLE]", 16: "[SUFFIX]",
    17: "[SYSTEM_PROMPT]", 18: "[/SYSTEM_PROMPT]", 19: "[TOOL_CONTENT]", 24: "[AUDIO]", 25: "[BEGIN_AUDIO]",
    32: "[ARGS]", 33: "[CALL_ID]", 34: "[TRANSCRIBE]",
}  # fmt: skip
NUM_SPECIAL_TOKENS = 1000
AUDIO_CONFIG = {
    "sampling_rate": 16000,
    "frame_rate": 12.5,
    "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
    "chunk_length_s": 30.0,
}


def write_tekken(out: Path, *, vocab_tokens: int) -> Path:
    """Write a v7 `tekken.json` with Voxtral's audio config, from the file mistral-common ships."""
    import mistral_common

    source = Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"
    data = json.loads(source.read_text(encoding="utf-8"))
    data.pop("image", None)
    data["vocab"] = data["vocab"][:vocab_tokens]
    data["config"].update(
        version="v7",
        num_vocab_tokens=vocab_tokens,
        default_vocab_size=NUM_SPECIAL_TOKENS + vocab_tokens,
        default_num_special_tokens=NUM_SPECIAL_TOKENS,
    )
    data["special_tokens"] = [
        {"rank": i, "token_str": SPECIAL_TOKENS.get(i, f"<SPECIAL_{i}>"), "is_control": True}
        for i in range(NUM_SPECIAL_TOKENS)
    ]
    data["audio"] = AUDIO_CONFIG
    path = out / "tekken.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def tiny_config(vocab_size: int) -> Any:
    """A `VoxtralConfig` with the real structure and tiny sizes."""
    from transformers import VoxtralConfig

    return VoxtralConfig(
        audio_config={
            "model_type": "voxtral_encoder",
            "hidden_size": 32,
            "intermediate_size": 128,  # the projector stacks 4 frames: must be 4 × hidden_size
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_mel_bins": 128,
            "max_source_positions": 1500,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 32768,
            "rope_theta": 100000000.0,
        },
        audio_token_id=24,
    )


def build_tiny_model(
    out: str | Path,
    *,
    vocab_tokens: int = 4096,
    seed: int = 0,
    logit_scale: float = 30.0,
    config: Any = None,
    silent: bool = False,
    extra_head_ids: int = 0,
) -> Path:
    """Write a random-weight Voxtral checkpoint to `out` and return its path.

    `logit_scale` multiplies the LM head so the best token wins by a wide margin: greedy decoding then
    gives the same tokens whether a chunk is decoded alone or in a padded batch. `silent` adds a
    generation config that lets the model emit only end-of-sequence (a model that hears no speech).
    `extra_head_ids` makes the LM head that many ids larger than the tokenizer, and those ids the most
    likely by far (the in-vocabulary rows are scaled down 1000-fold): a checkpoint whose head and tokenizer
    do not match, which greedy decoding would drive to ids the tokenizer cannot decode.
    """
    import torch
    from transformers import VoxtralForConditionalGeneration, VoxtralProcessor, WhisperFeatureExtractor
    from transformers.tokenization_mistral_common import MistralCommonBackend

    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    write_tekken(path, vocab_tokens=vocab_tokens)
    torch.manual_seed(seed)
    decodable = NUM_SPECIAL_TOKENS + vocab_tokens
    model = VoxtralForConditionalGeneration(config or tiny_config(decodable + extra_head_ids))
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
        if extra_head_ids:
            model.lm_head.weight[:decodable].mul_(1e-3)
    if silent:
        vocab = model.config.text_config.vocab_size
        model.generation_config.suppress_tokens = [i for i in range(vocab) if i != 2]
    model.save_pretrained(path)
    feature_extractor = WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400
    )
    tokenizer = MistralCommonBackend.from_pretrained(str(path))
    VoxtralProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(path)
    return path
