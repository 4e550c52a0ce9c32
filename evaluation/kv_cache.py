"""Per-conversation key/value caches for batched CPU generation.

``generate_answers`` computes each conversation's cache once and places it in
whatever batch the conversation decodes in:

- the prompt start every conversation shares (the chat template's system turn)
  is read once (``prefill_prefix``), and each prompt's own part beside a copy of
  it (``prefill_rows``), so no pad token is ever computed;
- a batch's cache (``batch_cache``) is the rows' caches, left-padded to one
  width, in a buffer that grows by doubling (``GrowingLayer``) instead of being
  concatenated at every step;
- a row released from a batch takes its cache along (``row_caches``) and
  continues in the next batch without reading its tokens again.

A cache covers all of a row's tokens but the last, which ``generate`` then feeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicLayer

# One row's cache: per layer, (keys, values) of shape [kv_heads, tokens, head_dim].
RowCache = list[tuple[torch.Tensor, torch.Tensor]]


class GrowingLayer(DynamicLayer):
    """A dynamic cache layer that writes into a buffer grown by doubling, returning views of its filled part."""

    def __init__(self, keys: torch.Tensor | None = None, values: torch.Tensor | None = None, length: int = 0):
        super().__init__()
        self._keys, self._values, self._length = keys, values, length
        if keys is not None:
            self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
            self.keys, self.values = keys[..., :length, :], values[..., :length, :]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._keys = self._values = None
        self._length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self._length + key_states.shape[-2]
        if self._keys is None or end > self._keys.shape[-2]:
            self._keys = _regrow(self._keys, key_states, self._length, end)
            self._values = _regrow(self._values, value_states, self._length, end)
        self._keys[..., self._length : end, :] = key_states
        self._values[..., self._length : end, :] = value_states
        self._length = end
        self.keys, self.values = self._keys[..., :end, :], self._values[..., :end, :]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._length if self.is_initialized else 0


def _regrow(buffer: torch.Tensor | None, states: torch.Tensor, length: int, end: int) -> torch.Tensor:
    grown = states.new_zeros((*states.shape[:-2], max(2 * end, 64), states.shape[-1]))
    if buffer is not None and length:
        grown[..., :length, :] = buffer[..., :length, :]
    return grown


def _forward(model, input_ids: list[int], cache: Cache) -> Cache:
    past = cache.get_seq_length()
    ids = torch.tensor([input_ids], device=model.device)
    mask = torch.ones((1, past + len(input_ids)), dtype=torch.long, device=model.device)
    model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return cache


def _cache_of(row: RowCache) -> Cache:
    return Cache(layers=[GrowingLayer(k[None].clone(), v[None].clone(), k.shape[1]) for k, v in row])


@dataclass
class SharedPrefix:
    tokens: list[int]
    cache: RowCache


def prefill_prefix(model, prompts: list[list[int]]) -> SharedPrefix:
    """The cache of the longest token start all prompts share, keeping each prompt's last token out of it."""
    length = 0
    shortest = min(len(p) for p in prompts) - 1
    while length < shortest and all(p[length] == prompts[0][length] for p in prompts):
        length += 1
    tokens = prompts[0][:length]
    if not tokens:
        return SharedPrefix([], [])
    cache = _forward(model, tokens, Cache(layer_class_to_replicate=GrowingLayer))
    return SharedPrefix(tokens, row_caches(cache, [0], [0], length)[0])


def prefill_rows(model, prefix: SharedPrefix, sequences: list[list[int]]) -> list[RowCache]:
    """Each sequence's cache (all but its last token), read one sequence at a time beside the shared prefix."""
    caches = []
    for seq in sequences:
        assert seq[: len(prefix.tokens)] == prefix.tokens, "a sequence without the shared prefix"
        if prefix.tokens:
            cache = _cache_of(prefix.cache)
        else:
            cache = Cache(layer_class_to_replicate=GrowingLayer)
        rest = seq[len(prefix.tokens) : -1]
        if rest:
            _forward(model, rest, cache)
        if cache.get_seq_length() == 0:
            raise ValueError("a conversation of one token cannot be cached; the chat template adds more")
        caches.append(row_caches(cache, [0], [0], cache.get_seq_length())[0])
    return caches


def batch_cache(rows: list[RowCache], width: int) -> Cache:
    """One cache for a left-padded batch ``width`` tokens wide: row i's cache ends at position width - 1."""
    layers = []
    for layer in range(len(rows[0])):
        keys = [row[layer][0] for row in rows]
        values = [row[layer][1] for row in rows]
        k = keys[0].new_zeros((len(rows), keys[0].shape[0], max(2 * width, 64), keys[0].shape[2]))
        v = values[0].new_zeros((len(rows), values[0].shape[0], k.shape[2], values[0].shape[2]))
        for i, (rk, rv) in enumerate(zip(keys, values)):
            k[i, :, width - 1 - rk.shape[1] : width - 1] = rk
            v[i, :, width - 1 - rv.shape[1] : width - 1] = rv
        layers.append(GrowingLayer(k, v, width - 1))
    return Cache(layers=layers)


def row_caches(cache: Cache, rows: list[int], starts: list[int], end: int) -> list[RowCache]:
    """Copies of the given rows' caches: positions ``starts[i]`` (after the row's padding) to ``end``."""
    return [[(layer.keys[row, :, start:end].clone(), layer.values[row, :, start:end].clone())
             for layer in cache.layers]
            for row, start in zip(rows, starts)]
