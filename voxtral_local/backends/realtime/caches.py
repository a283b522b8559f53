"""Per-stream caches of the realtime model, held as rows of shared tensors so that the streams' steps batch.

`RingCache` is one attention stack's KV cache (the encoder's or the decoder's): per layer a tensor
(rows, kv heads, slots, head dim) used as a ring buffer per row, with each slot's absolute position in
`positions` (-1: empty). A row writes position p at slot p % slots; rotary embeddings are applied before keys
are stored, so the order of slots does not matter to attention, only which ones the mask lets a query see: those
written, not after the query, and within the sliding window (query - key < window, as transformers'
`sliding_window_overlay`). The slots grow (doubling) with the oldest row's position up to window + the
positions a step writes, then wrap: a stream's memory stays bounded however long it runs.

Rows are taken and given back as streams open and close; a step's rows are any subset, gathered by index (a
copy, unless the step's rows are consecutive: then views). `ConvCache` holds the encoder's causal-convolution
left context per row (`VoxtralRealtimeConv1dPaddingCache`'s role).
"""

from __future__ import annotations

import torch


class RingCache:
    """KV ring buffers of `layers` attention layers for a growing set of rows (see the module docstring).

    Used by one decode thread only. `begin` prepares a step; the layers then call `update` (transformers'
    `Cache.update` signature) once each."""

    def __init__(self, layers: int, heads: int, head_dim: int, window: int, step: int) -> None:
        """`window`: the sliding window in positions; `step`: positions a row writes per step."""
        self.layers, self.heads, self.head_dim = layers, heads, head_dim
        self.window, self.limit = window, window + step
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.positions: torch.Tensor | None = None  # (rows, slots) absolute position in each slot, -1 empty
        self._rows: torch.Tensor | None = None
        self._slots: torch.Tensor | None = None
        self._span: tuple[int, int] | None = None

    @property
    def slots(self) -> int:
        """Slots per row now."""
        return 0 if self.positions is None else int(self.positions.shape[1])

    @property
    def rows(self) -> int:
        """Rows the buffers hold now."""
        return 0 if self.positions is None else int(self.positions.shape[0])

    def nbytes(self) -> int:
        """Bytes the buffers take."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def allocate(self, rows: int, dtype: torch.dtype, device: torch.device) -> None:
        """Make room for `rows` rows (new rows start empty)."""
        if self.positions is not None and rows <= self.rows:
            return
        slots = max(self.slots, 16)
        old = self.rows
        shape = (rows, self.heads, slots, self.head_dim)
        keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(self.layers)]
        values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(self.layers)]
        positions = torch.full((rows, slots), -1, dtype=torch.long, device=device)
        if self.positions is not None:
            for new, cur in zip((*keys, *values), (*self.keys, *self.values), strict=True):
                new[:old] = cur
            positions[:old] = self.positions
        self.keys, self.values, self.positions = keys, values, positions

    def clear(self, row: int) -> None:
        """Forget what row `row` holds (a stream ended; the row may be taken again)."""
        if self.positions is not None and row < self.rows:  # a row whose buffers were never grown holds nothing
            self.positions[row] = -1

    def reset(self) -> None:
        """Drop every buffer (no stream is open)."""
        self.keys, self.values, self.positions = [], [], None

    def _grow(self, needed: int) -> None:
        assert self.positions is not None
        slots = min(self.limit, max(needed, 2 * self.slots))
        if slots <= self.slots:
            return
        extra = slots - self.slots
        pad = (0, 0, 0, extra)
        self.keys = [torch.nn.functional.pad(t, pad) for t in self.keys]
        self.values = [torch.nn.functional.pad(t, pad) for t in self.values]
        self.positions = torch.nn.functional.pad(self.positions, (0, extra), value=-1)

    def begin(self, rows: torch.Tensor, starts: torch.Tensor, count: int, span: tuple[int, int] | None) -> torch.Tensor:
        """Prepare a step where row `rows[b]` writes positions starts[b] .. starts[b] + count - 1. `span`:
        (first, end) when `rows` are the consecutive rows first .. end - 1 (the buffers are then used as views,
        without a gather). Returns the attention mask, bool (batch, 1, count, slots), True where a query may
        attend."""
        assert self.positions is not None
        needed = int(starts.max()) + count
        if needed > self.slots:
            self._grow(needed)
        offsets = torch.arange(count, device=starts.device)
        query = starts[:, None] + offsets[None, :]  # (batch, count)
        self._rows, self._slots, self._span = rows, query % self.slots, span
        self.positions[rows[:, None], self._slots] = query
        keys = self.positions[span[0] : span[1]] if span else self.positions[rows]  # (batch, slots)
        distance = query[:, :, None] - keys[:, None, :]
        mask = (keys[:, None, :] >= 0) & (distance >= 0) & (distance < self.window)
        return mask[:, None]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the step's keys and values (batch, heads, count, head dim) of layer `layer_idx`; return the
        row's whole buffers (batch, heads, slots, head dim) for attention."""
        assert self._rows is not None and self._slots is not None
        rows, slots = self._rows[:, None], self._slots
        self.keys[layer_idx][rows, :, slots] = key_states.transpose(1, 2).to(self.keys[layer_idx].dtype)
        self.values[layer_idx][rows, :, slots] = value_states.transpose(1, 2).to(self.values[layer_idx].dtype)
        if self._span is not None:
            first, end = self._span
            return self.keys[layer_idx][first:end], self.values[layer_idx][first:end]
        return self.keys[layer_idx][self._rows], self.values[layer_idx][self._rows]


class ConvCache:
    """The left context a causal convolution keeps per row: (rows, channels, left pad), zeros at the start."""

    def __init__(self, channels: int, left_pad: int) -> None:
        self.channels, self.left_pad = channels, left_pad
        self.state: torch.Tensor | None = None

    def allocate(self, rows: int, dtype: torch.dtype, device: torch.device) -> None:
        """Make room for `rows` rows (new rows start with zeros)."""
        if self.state is not None and rows <= self.state.shape[0]:
            return
        state = torch.zeros(rows, self.channels, self.left_pad, dtype=dtype, device=device)
        if self.state is not None:
            state[: self.state.shape[0]] = self.state
        self.state = state

    def clear(self, row: int) -> None:
        """Zero row `row`'s context (a stream ended)."""
        if self.state is not None and row < self.state.shape[0]:
            self.state[row] = 0

    def reset(self) -> None:
        """Drop the tensor (no stream is open)."""
        self.state = None

    def pad(self, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """`x` (batch, channels, time) with each row's left context before it; the context is advanced."""
        assert self.state is not None
        padded = torch.cat([self.state[rows].to(x.dtype), x], dim=-1)
        self.state[rows] = padded[:, :, padded.shape[-1] - self.left_pad :].to(self.state.dtype)
        return padded
