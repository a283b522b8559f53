"""A KV cache with room reserved after its tokens, so that a decoding step writes in place.

transformers' `DynamicLayer` appends a step by concatenation: every step copies the whole cache of every
layer (on the small CPU model that was over half of a step's time; on a GPU it is gigabytes per step for a
long batch). Here each layer's keys and values live in a buffer with spare columns at the end; a step writes
one column, and `keys`/`values` are views of the filled part. The buffer is laid out again only when rows
join or leave (which copies anyway) or when the room runs out.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

MIN_GROWTH = 64  # columns added at least when a step finds no room left


class RoomyLayer(DynamicLayer):
    """One layer's keys and values, (rows, heads, length, dim) views of buffers with spare columns."""

    def __init__(self, key_buffer: torch.Tensor, value_buffer: torch.Tensor, length: int) -> None:
        super().__init__()
        self.dtype, self.device = key_buffer.dtype, key_buffer.device
        self.is_initialized = True
        self._key_buffer, self._value_buffer, self.length = key_buffer, value_buffer, length
        self._expose()

    @property
    def room(self) -> int:
        """Columns still free after the filled ones."""
        return int(self._key_buffer.shape[2]) - self.length

    def _expose(self) -> None:
        self.keys = self._key_buffer[:, :, : self.length]
        self.values = self._value_buffer[:, :, : self.length]

    def reserve(self, room: int) -> None:
        """Make sure `room` more columns fit without moving the buffers."""
        if self.room >= room:
            return
        self._key_buffer = layout([self.keys], self.length, room)
        self._value_buffer = layout([self.values], self.length, room)
        self._expose()

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new columns after the filled ones; returns all keys and values so far."""
        new = int(key_states.shape[-2])
        if self.room < new:
            self.reserve(max(new, MIN_GROWTH, self.length // 8))
        self._key_buffer[:, :, self.length : self.length + new] = key_states
        self._value_buffer[:, :, self.length : self.length + new] = value_states
        self.length += new
        self._expose()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length


def layout(pieces: Sequence[torch.Tensor], length: int, room: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Stack (rows, heads, n, dim) pieces along rows, each right-aligned to `length` (zeros before it, as
    left padding), with `room` spare columns after; with `rows`, only those rows of the one piece given.

    Each element is written once: the pieces are copied straight into place (the rows picked by an index
    too), only left padding is zeroed, and the room is left as allocated, since a step writes each of its
    columns before any is read."""
    first = pieces[0]
    count = int(rows.numel()) if rows is not None else sum(int(p.shape[0]) for p in pieces)
    out = first.new_empty(count, first.shape[1], length + room, first.shape[3])
    start = 0
    for piece in pieces:
        end = start + (count if rows is not None else int(piece.shape[0]))
        pad = length - int(piece.shape[2])
        out[start:end, :, :pad] = 0  # never attended to, but must be finite: 0 x NaN is NaN
        target = out[start:end, :, pad:length]
        if rows is None:
            target.copy_(piece)
        elif torch.index_select(piece, 0, rows, out=target).data_ptr() != target.data_ptr():
            target.copy_(piece.index_select(0, rows))  # a backend that would not write into the view
        start = end
    return out


def roomy_cache(
    layers: Iterable[tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]],
    room: int,
    rows: torch.Tensor | None = None,
) -> DynamicCache:
    """A cache whose layer i stacks the key pieces and value pieces given for it (see `layout`; `rows`: keep
    only these rows of each layer's one piece). Layers are built one at a time as `layers` yields them, so a
    caller that lets go of each old layer as it hands it over (see `handed_over`) needs room for one more
    layer, not for a second cache."""
    built = []
    for keys, values in layers:
        length = max(int(k.shape[2]) for k in keys)
        built.append(RoomyLayer(layout(keys, length, room, rows), layout(values, length, room, rows), length))
    cache = DynamicCache()
    cache.layers, cache.layer_class_to_replicate = built, None
    return cache


def handed_over(cache: DynamicCache) -> Iterator[DynamicLayer]:
    """The cache's layers in turn, each dropped from the cache as it is handed out: the cache is used up,
    and an old layer is freed as soon as its replacement is built."""
    layers = cache.layers
    for i in range(len(layers)):
        layer, layers[i] = layers[i], None
        yield layer
