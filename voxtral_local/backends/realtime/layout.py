"""The streaming layout of a Voxtral Realtime checkpoint, read from its processor (mistral-common's audio config):
the prompt, the padding around the audio, and which samples each decoding step reads. See docs/realtime.md.

Positions: step t of a stream feeds the decoder one token (the prompt's t-th, then the token step t - 1 chose)
plus audio token t, made from mel frames 8t .. 8t + 7. The audio the frames are cut from ("padded audio") is
`n_fft // 2` zeros (the STFT's centring of the first chunk, whose reflection of silence is silence), the left
padding's silence, the stream's samples, then (after `finish`) the right padding's silence. Frame i covers padded
samples [hop * i, hop * i + n_fft), so step t reads the window [step_samples * t, step_samples * t + window):
`window` = `num_samples_per_audio_chunk` (8 hops + the 400-sample STFT window; its last frame is dropped), of
which the step needs the first `needed` samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StreamLayout:
    """Sizes in samples (16 kHz) and tokens; see the module docstring."""

    prompt: tuple[int, ...]  # BOS, then [STREAMING_PAD] × (left pad tokens + delay tokens)
    delay_tokens: int  # the model's delay (transcription_delay_ms / 80 ms)
    left_pad_tokens: int
    right_pad_tokens: int  # delay + 1 + mistral-common's OFFLINE_STREAMING_BUFFER_TOKENS
    step_samples: int  # samples per audio token (1280)
    lead_samples: int  # zeros before the left padding (n_fft // 2)
    window: int  # samples a step's mel frames are computed from (num_samples_per_audio_chunk)
    needed: int  # samples of that window the step's frames use (the last frame is dropped)
    mel_frames: int  # mel frames per step (8)
    sample_rate: int = 16000

    @classmethod
    def from_processor(cls, processor: Any) -> StreamLayout:
        """Read the layout from a `VoxtralRealtimeProcessor` (its mistral-common tokenizer's audio config)."""
        instruct = processor.tokenizer.tokenizer.instruct_tokenizer
        encoder = instruct.audio_encoder
        config = processor.mistral_common_audio_config
        extractor = processor.feature_extractor
        hop, n_fft = int(extractor.hop_length), int(extractor.n_fft)
        frames = int(processor.audio_length_per_tok)
        return cls(
            prompt=tuple(int(t) for t in [*instruct.start(), *encoder.encode_streaming_tokens()]),
            delay_tokens=int(processor.num_delay_tokens),
            left_pad_tokens=int(config.n_left_pad_tokens),
            right_pad_tokens=int(processor.num_right_pad_tokens),
            step_samples=int(processor.raw_audio_length_per_tok),
            lead_samples=n_fft // 2,
            window=int(processor.num_samples_per_audio_chunk),
            needed=(frames - 1) * hop + n_fft,
            mel_frames=frames,
            sample_rate=int(config.sampling_rate),
        )

    @property
    def audio_start(self) -> int:
        """Padded-audio index of the stream's first sample."""
        return self.lead_samples + self.left_pad_tokens * self.step_samples

    @property
    def delay_s(self) -> float:
        return self.delay_tokens * self.step_samples / self.sample_rate

    def ready_end(self, step: int) -> int:
        """Padded audio step `step` needs, in samples from its start."""
        return self.step_samples * step + self.needed

    def total_steps(self, samples: int) -> int:
        """Steps a finished stream of `samples` samples takes: every audio token of the padded audio but the
        last (as transformers' offline `generate`, whose `max_length` is the audio token count)."""
        return self.left_pad_tokens + math.ceil(samples / self.step_samples) + self.right_pad_tokens - 1

    def generated_tokens(self, samples: int) -> int:
        """Tokens a finished stream of `samples` samples generates (one per step from the prompt's last)."""
        return self.total_steps(samples) - len(self.prompt) + 1
