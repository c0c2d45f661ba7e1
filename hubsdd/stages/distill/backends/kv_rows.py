"""A KV cache layer for continuous batching: rows come and go while the others keep generating.

Used by :class:`~hubsdd.stages.distill.backends.transformers.TransformersBackend`. Rows are right-aligned
(left padding), so every row appends its next token in the same column and one attention mask
covers the batch.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer


class RowsLayer(DynamicLayer):
    """One attention layer's keys and values for independent rows, in a buffer that grows by doubling.

    Live columns are ``[start, end)`` of the buffer; the model sees views of them. A decode step is
    written in place (``DynamicLayer`` concatenates, copying the whole cache every step), dropping
    leading columns only moves ``start``, and a finished row's slot is overwritten by the next
    prompt without touching the other rows."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """An empty buffer: no rows, no columns."""
        self.device = key_states.device
        self.k_buf = key_states.new_zeros((0, key_states.shape[1], 0, key_states.shape[3]))
        self.v_buf = value_states.new_zeros((0, value_states.shape[1], 0, value_states.shape[3]))
        self.start = self.end = 0
        self.is_initialized = True
        self._views()

    def _views(self) -> None:
        self.keys = self.k_buf[:, :, self.start:self.end]
        self.values = self.v_buf[:, :, self.start:self.end]

    def _rebuild(self, rows: torch.Tensor | None = None, left: int = 0, spare: int = 0) -> None:
        """Copy the live columns (of ``rows`` only, if given) to a new buffer, with ``left`` empty
        columns before them and room for ``spare`` more after."""
        k, v = self.keys, self.values
        if rows is not None:
            k, v = k.index_select(0, rows), v.index_select(0, rows)
        width = left + k.shape[2]
        self.k_buf = k.new_zeros((k.shape[0], k.shape[1], width + spare, k.shape[3]))
        self.v_buf = v.new_zeros((v.shape[0], v.shape[1], width + spare, v.shape[3]))
        self.k_buf[:, :, left:width] = k
        self.v_buf[:, :, left:width] = v
        self.start, self.end = 0, width
        self._views()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:  # a forward pass straight into an empty cache: its rows arrive
            self.append_rows(key_states[:, :, :0], value_states[:, :, :0], 0)
        n = key_states.shape[2]
        if self.end + n > self.k_buf.shape[2]:
            self._rebuild(spare=max(64, self.end - self.start + 2 * n))
        self.k_buf[:, :, self.end:self.end + n] = key_states
        self.v_buf[:, :, self.end:self.end + n] = value_states
        self.end += n
        self._views()
        return self.keys, self.values

    def drop_columns(self, n: int) -> None:
        """Forget the ``n`` leading columns (no row attends to them any more)."""
        self.start += n
        self._views()

    def pad_columns(self, n: int) -> None:
        """Add ``n`` leading columns; the caller masks them out for every row."""
        if self.start >= n:  # reuse dropped columns: they are masked for every row
            self.start -= n
            self._views()
        else:
            self._rebuild(left=n, spare=64)

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only the rows at ``rows`` (finished rows leave the batch)."""
        self._rebuild(rows=rows, spare=self.k_buf.shape[2] - self.end)

    def write_rows(self, rows: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Put one new sequence per index of ``rows``, right-aligned to the live columns; its own left
        padding comes along and the columns before it keep stale values the caller masks out."""
        width = keys.shape[2]
        self.k_buf[rows, :, self.end - width:self.end] = keys
        self.v_buf[rows, :, self.end - width:self.end] = values

    def append_rows(self, keys: torch.Tensor, values: torch.Tensor, width: int) -> None:
        """Add rows after the existing ones, right-aligned to the live columns, which must already be
        ``width`` wide (the caller pads them first); the new rows' columns before theirs are zeros."""
        if not self.is_initialized:
            self.lazy_initialization(keys, values)
        if self.end - self.start != width and self.k_buf.shape[0]:
            raise ValueError(f"append_rows: the cache is {self.end - self.start} columns wide, not {width}")
        old = self.k_buf.shape[0]
        k_buf = keys.new_zeros((old + keys.shape[0], keys.shape[1], width + 64, keys.shape[3]))
        v_buf = values.new_zeros((old + values.shape[0], values.shape[1], width + 64, values.shape[3]))
        if old:
            k_buf[:old, :, :width] = self.keys
            v_buf[:old, :, :width] = self.values
        k_buf[old:, :, width - keys.shape[2]:width] = keys
        v_buf[old:, :, width - values.shape[2]:width] = values
        self.k_buf, self.v_buf, self.start, self.end = k_buf, v_buf, 0, width
        self._views()
