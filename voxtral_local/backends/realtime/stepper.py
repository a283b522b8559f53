"""One batched decoding step of `VoxtralRealtimeForConditionalGeneration` for any set of streams (rows).

Each row feeds one token and one audio token's samples; the step runs the model's own modules (mel features,
causal convolutions, encoder layers, projector, decoder layers, LM head) on all rows at once, with each row's
caches kept in `RingCache`/`ConvCache` rows instead of transformers' per-call `DynamicCache` and
`VoxtralRealtimeConv1dPaddingCache`. It computes what the model's `forward` computes for one streamed position
(see `VoxtralRealtimeModel.forward`, `get_audio_features`, `VoxtralRealtimeEncoder.forward`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .caches import ConvCache, RingCache
from .layout import StreamLayout


class Stepper:
    """The model's batched step; used by the backend's decode thread only."""

    def __init__(self, model: Any, processor: Any, layout: StreamLayout) -> None:
        self.model, self.layout = model, layout
        self.extractor = processor.feature_extractor
        self.device, self.dtype = model.device, model.dtype
        core = model.model
        self.audio, self.text = core.audio_tower, core.language_model
        audio_config, text_config = model.config.audio_config, model.config.text_config
        self.downsample = int(model.config.downsample_factor)
        embedder = self.audio.embedder
        self.conv1 = ConvCache(embedder.conv1.in_channels, embedder.conv1.left_pad)
        self.conv2 = ConvCache(embedder.conv2.in_channels, embedder.conv2.left_pad)
        encoder_positions = layout.mel_frames // embedder.conv2.stride[0]  # per step (4)
        self.encoder_positions = encoder_positions
        self.encoder_cache = RingCache(
            audio_config.num_hidden_layers,
            audio_config.num_attention_heads,
            audio_config.head_dim,
            int(audio_config.sliding_window or 1 << 30),
            encoder_positions,
        )
        self.decoder_cache = RingCache(
            text_config.num_hidden_layers,
            text_config.num_key_value_heads,
            text_config.head_dim,
            int(text_config.sliding_window or 1 << 30),
            1,
        )
        with torch.no_grad():
            time = torch.full((1,), layout.delay_tokens, device=self.device, dtype=self.dtype)
            self.t_cond = core.time_embedding(time)[None, ...]
        self.rows_used = 0

    def caches(self) -> tuple[RingCache, RingCache, ConvCache, ConvCache]:
        return self.encoder_cache, self.decoder_cache, self.conv1, self.conv2

    def cache_bytes(self) -> int:
        """Bytes the streams' caches take now."""
        convs = sum(
            0 if c.state is None else c.state.numel() * c.state.element_size() for c in (self.conv1, self.conv2)
        )
        return self.encoder_cache.nbytes() + self.decoder_cache.nbytes() + convs

    def allocate(self, rows: int) -> None:
        """Make room for `rows` rows."""
        for cache in self.caches():
            cache.allocate(rows, self.dtype, self.device)

    def clear(self, row: int) -> None:
        """Row `row`'s stream ended: its caches are forgotten."""
        for cache in self.caches():
            cache.clear(row)

    def reset(self) -> None:
        """No stream is open: drop every cache tensor."""
        for cache in self.caches():
            cache.reset()

    @torch.no_grad()
    def step(self, rows: list[int], steps: list[int], tokens: list[int], windows: np.ndarray) -> torch.Tensor:
        """Run one step: row `rows[b]` is at step `steps[b]`, feeds token `tokens[b]` and the padded-audio window
        `windows[b]` (float32, shape (batch, layout.window)). Returns the logits of the next token, float32
        (batch, vocabulary)."""
        batch = len(rows)
        index = torch.tensor(rows, device=self.device)
        all_rows = rows == list(range(self.encoder_cache.rows))
        position = torch.tensor(steps, device=self.device)
        mel = self.extractor._torch_extract_fbank_features(torch.from_numpy(windows), "cpu", center=False)
        mel = mel.to(self.device, self.dtype)  # (batch, mel bins, frames)
        audio = self._encode(mel, index, position * self.encoder_positions, all_rows)  # (batch, 1, hidden)
        ids = torch.tensor(tokens, device=self.device)[:, None]
        hidden = self.text.embed_tokens(ids) + audio.to(self.dtype)
        mask = self.decoder_cache.begin(index, position, 1, all_rows)
        position_ids = position[:, None]
        embeddings = self.text.rotary_emb(hidden, position_ids=position_ids)
        for layer in self.text.layers[: self.text.config.num_hidden_layers]:
            hidden = layer(
                hidden,
                attention_mask=mask,
                position_ids=position_ids,
                past_key_values=self.decoder_cache,
                position_embeddings=embeddings,
                t_cond=self.t_cond,
            )
        hidden = self.text.norm(hidden)
        logits: torch.Tensor = self.model.lm_head(hidden[:, -1, :]).float()
        assert logits.shape[0] == batch
        return logits

    def _encode(self, mel: torch.Tensor, index: torch.Tensor, starts: torch.Tensor, all_rows: bool) -> torch.Tensor:
        embedder = self.audio.embedder
        x = nn.functional.gelu(nn.Conv1d.forward(embedder.conv1, self.conv1.pad(index, mel)))
        x = nn.functional.gelu(nn.Conv1d.forward(embedder.conv2, self.conv2.pad(index, x)))
        hidden = x.permute(0, 2, 1)  # (batch, encoder positions, hidden)
        count = hidden.shape[1]
        mask = self.encoder_cache.begin(index, starts, count, all_rows)
        position_ids = starts[:, None] + torch.arange(count, device=self.device)[None, :]
        embeddings = self.audio.rotary_emb(hidden, position_ids=position_ids)
        for layer in self.audio.layers:
            hidden = layer(
                hidden,
                attention_mask=mask,
                position_embeddings=embeddings,
                position_ids=position_ids,
                past_key_values=self.encoder_cache,
            )
        hidden = self.audio.norm(hidden)
        hidden = hidden.reshape(hidden.shape[0], -1, self.audio.config.hidden_size * self.downsample)
        out: torch.Tensor = self.model.model.multi_modal_projector(hidden)
        return out
