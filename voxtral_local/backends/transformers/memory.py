"""How many rows fit at once: a memory budget for the KV cache and activations, computed from free memory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

GIB = 1024**3
DEFAULT_BUDGET = 16 * GIB  # issue 4: a 30-minute request stays within weights + 16 GB
FREE_FRACTION = 0.85
UNKNOWN_FREE = 8 * GIB  # when the platform does not say


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per KV-cache token, per prefill token and per encoder window, against a budget in bytes.

    The activation figures are upper bounds for one layer at a time (activations are freed layer by layer):
    hidden states, q/k/v/o, the MLP's gate/up/activation, and attention scores as if materialised.
    """

    budget: int
    kv_per_token: int
    prefill_per_token: int
    encoder_per_window: int
    max_rows: int = 0  # 0: no fixed limit

    @classmethod
    def for_model(cls, model: Any, device: torch.device, budget_gb: float, max_rows: int) -> MemoryPlan:
        """A plan for this model on this device; `budget_gb` 0 means auto."""
        text, audio = model.config.text_config, model.config.audio_config
        size = torch.tensor([], dtype=model.dtype).element_size()
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        kv = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * size
        per_token = (6 * text.hidden_size + 3 * text.intermediate_size) * size + text.num_attention_heads * 4 * 1024
        positions = audio.max_source_positions  # 1500 encoder positions per 30 s window
        per_window = positions * (6 * audio.hidden_size + 3 * audio.intermediate_size) * size
        per_window += audio.num_attention_heads * positions * positions * 4
        budget = int(budget_gb * GIB) if budget_gb > 0 else min(DEFAULT_BUDGET, int(FREE_FRACTION * free_bytes(device)))
        return cls(budget, kv, per_token, per_window, max_rows)

    def rows(self, tokens_per_row: int) -> int:
        """How many rows whose caches reach `tokens_per_row` tokens fit the budget at once (KV cache only,
        within `max_rows`); at least 1."""
        rows = self.budget // max(1, tokens_per_row * self.kv_per_token)
        if self.max_rows:
            rows = min(rows, self.max_rows)
        return max(1, rows)

    def fits(self, rows: int, length: int, prefill_tokens: int, prefill_windows: int) -> bool:
        """Whether `rows` rows with caches of `length` tokens, plus a prefill of this size, fit the budget."""
        if self.max_rows and rows > self.max_rows:
            return False
        need = rows * length * self.kv_per_token
        need += prefill_tokens * self.prefill_per_token + prefill_windows * self.encoder_per_window
        return need <= self.budget


def free_bytes(device: torch.device) -> int:
    """Free memory on the device (the accelerator's, or the machine's available RAM for a CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory())
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return UNKNOWN_FREE
