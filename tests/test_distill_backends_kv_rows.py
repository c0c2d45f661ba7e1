"""The continuous-batching KV cache layer: rows come and go, columns are dropped and added."""

from __future__ import annotations

import torch

from hubsdd.stages.distill.backends.kv_rows import RowsLayer


def kv(rows: int, cols: int, start: float = 0.0) -> torch.Tensor:
    """(rows, 1 head, cols, 1 dim) with distinct values, so every move is visible."""
    return (torch.arange(rows * cols, dtype=torch.float32) + start).reshape(rows, 1, cols, 1)


def test_decode_steps_append_in_place_and_match_concatenation() -> None:
    layer = RowsLayer()
    first = kv(2, 3)
    layer.append_rows(first, first, 3)
    expected = first
    for step in range(70):  # past the spare room: the buffer must grow without losing anything
        new = kv(2, 1, 100 + 2 * step)
        keys, values = layer.update(new, new)
        expected = torch.cat([expected, new], dim=2)
        assert torch.equal(keys, expected) and torch.equal(values, expected)
    assert layer.get_seq_length() == 73


def test_rows_leave_are_replaced_and_columns_drop_and_grow() -> None:
    layer = RowsLayer()
    a = kv(3, 4)
    layer.append_rows(a, a, 4)
    layer.keep_rows(torch.tensor([0, 2]))  # row 1 finished and left
    assert torch.equal(layer.keys, a[[0, 2]])

    newcomer = kv(1, 2, 50)
    layer.write_rows(torch.tensor([1]), newcomer, newcomer)  # right-aligned into row 1
    assert torch.equal(layer.keys[1, :, 2:], newcomer[0]) and torch.equal(layer.keys[0], a[0])

    layer.drop_columns(2)
    assert layer.keys.shape[2] == 2 and torch.equal(layer.keys[1], newcomer[0])
    layer.pad_columns(3)  # reuses the 2 dropped columns and adds 1
    assert layer.keys.shape[2] == 5 and torch.equal(layer.keys[1, :, 3:], newcomer[0])

    more = kv(2, 5, 200)
    layer.append_rows(more, more, 5)
    assert layer.keys.shape[:3] == (4, 1, 5) and torch.equal(layer.keys[2:], more)
    assert torch.equal(layer.values[1, :, 3:], newcomer[0])
