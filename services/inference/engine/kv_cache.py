"""The key/value cache of a running batch, with the operations continuous batching needs.

transformers' ``DynamicLayer`` concatenates a step's keys onto the whole cache, copying
all of it at every decode step. ``GrowableLayer`` keeps spare room and writes the new
column in place, growing by doubling. ``BatchCache`` adds what a batch whose members
come and go needs: keep some rows (finished requests leave), join two batches (new
requests arrive, left-padded to a common length) and drop leading columns that no row
uses any more.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

SPARE_COLUMNS = 64


class GrowableLayer(DynamicLayer):
    """One layer's keys and values, (batch, kv heads, capacity, head dim), filled to ``length``."""

    def __init__(self) -> None:
        super().__init__()
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None
        self.length = 0

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        if self._keys is None:
            self._keys = _allocate(key_states, new + SPARE_COLUMNS)
            self._values = _allocate(value_states, new + SPARE_COLUMNS)
        elif self.length + new > self._keys.shape[-2]:
            capacity = max(2 * self._keys.shape[-2], self.length + new + SPARE_COLUMNS)
            self._keys = _regrow(self._keys, self.length, capacity)
            self._values = _regrow(self._values, self.length, capacity)
        self._keys[..., self.length : self.length + new, :] = key_states
        self._values[..., self.length : self.length + new, :] = value_states
        self.length += new
        self._publish()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._keys is not None:
            self._keys, self._values = self._keys[indices], self._values[indices]
            self._publish()

    def set_storage(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        self.is_initialized = True
        self.device = keys.device
        self._keys, self._values, self.length = keys, values, length
        self._publish()

    def storage(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._keys is not None and self._values is not None
        return self._keys, self._values

    def _publish(self) -> None:
        self.keys = self._keys[..., : self.length, :]
        self.values = self._values[..., : self.length, :]


class BatchCache(Cache):
    """A decoder's cache for one running batch (one ``GrowableLayer`` per layer)."""

    def __init__(self, num_layers: int) -> None:
        super().__init__(layers=[GrowableLayer() for _ in range(num_layers)])

    @classmethod
    def starting_with(cls, keys: torch.Tensor, values: torch.Tensor, room: int) -> BatchCache:
        """A cache already holding ``keys`` and ``values`` ((layers, rows, kv heads, columns,
        head dim): a cached prompt prefix), with space for ``room`` more columns."""
        cache = cls(keys.shape[0])
        length = keys.shape[-2]
        for layer, layer_keys, layer_values in zip(cache.layers, keys, values, strict=True):
            layer.set_storage(
                _with_room(layer_keys, length + room + SPARE_COLUMNS),
                _with_room(layer_values, length + room + SPARE_COLUMNS),
                length,
            )
        return cache

    @property
    def length(self) -> int:
        return self.layers[0].length

    def row_columns(self, row: int, columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of one row's ``columns`` in every layer: (layers, kv heads,
        len(columns), head dim) each."""
        keys = torch.stack([layer.storage()[0][row, :, columns] for layer in self.layers])
        values = torch.stack([layer.storage()[1][row, :, columns] for layer in self.layers])
        return keys, values

    def keep_rows(self, rows: torch.Tensor) -> None:
        for layer in self.layers:
            layer.batch_select_indices(rows)

    def drop_leading(self, columns: int) -> None:
        """Forget the first ``columns`` positions (padding that no remaining row attends)."""
        if columns <= 0:
            return
        for layer in self.layers:
            keys, values = layer.storage()
            length = layer.length - columns
            layer.set_storage(
                keys[..., columns : layer.length, :].clone(),
                values[..., columns : layer.length, :].clone(),
                length,
            )

    @classmethod
    def join(cls, first: BatchCache, second: BatchCache) -> BatchCache:
        """Rows of ``first`` then ``second``, each left-padded to the longer length."""
        length = max(first.length, second.length)
        joined = cls(len(first.layers))
        for target, a, b in zip(joined.layers, first.layers, second.layers, strict=True):
            parts_k, parts_v = [], []
            for layer in (a, b):
                keys, values = layer.storage()
                parts_k.append(_left_pad(keys[..., : layer.length, :], length))
                parts_v.append(_left_pad(values[..., : layer.length, :], length))
            keys = _with_room(torch.cat(parts_k), length + SPARE_COLUMNS)
            values = _with_room(torch.cat(parts_v), length + SPARE_COLUMNS)
            target.set_storage(keys, values, length)
        return joined


def _allocate(like: torch.Tensor, capacity: int) -> torch.Tensor:
    shape = (*like.shape[:-2], capacity, like.shape[-1])
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def _regrow(buffer: torch.Tensor, length: int, capacity: int) -> torch.Tensor:
    grown = _allocate(buffer, capacity)
    grown[..., :length, :] = buffer[..., :length, :]
    return grown


def _left_pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - tensor.shape[-2]
    if missing == 0:
        return tensor
    pad = torch.zeros(
        (*tensor.shape[:-2], missing, tensor.shape[-1]), dtype=tensor.dtype, device=tensor.device
    )
    return torch.cat((pad, tensor), dim=-2)


def _with_room(tensor: torch.Tensor, capacity: int) -> torch.Tensor:
    roomy = _allocate(tensor, capacity)
    roomy[..., : tensor.shape[-2], :] = tensor
    return roomy
