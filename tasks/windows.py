"""Fixed-length windows over token sequences, batched for language models.

A window is a pair of arrays of shape [length]: token ids, padded with the pad
id, and weights, 1.0 on real tokens and 0.0 on padding. Each window lies inside
one sequence, so no window mixes two books.

Batches follow Trax's convention for decoder-only language models, whose
`tl.ShiftRight` layer shifts the inputs right inside the model: inputs and
targets are the same window, and the model predicts position i of the targets
from the inputs before i.
"""

from typing import Iterable, Iterator, List, Tuple

import numpy as np

Window = Tuple[np.ndarray, np.ndarray]
Batch = Tuple[np.ndarray, np.ndarray, np.ndarray]


def check_positive_int(name: str, value) -> None:
  """Raise ValueError unless `value` is a positive int (bool excluded)."""
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
      or value <= 0):
    raise ValueError(f'{name} must be a positive integer, got {value!r}.')


def window_starts(num_tokens: int, length: int, offset: int = 0) -> range:
  """Start positions of non-overlapping windows from `offset` to the end.

  With offset 0 the windows cover every token once, and the last one is
  partial when num_tokens is not a multiple of `length`. Every window contains
  at least one token, so an empty sequence has no window.
  """
  return range(offset, num_tokens, length)


def random_offset(num_tokens: int, length: int,
                  rng: np.random.Generator) -> int:
  """Draw the start of a training pass over one sequence.

  The offset lies in [0, length), so window boundaries move from epoch to
  epoch, and the tokens before it are left out of that pass. A sequence of at
  most `length` tokens gets offset 0, so it keeps all of its tokens.
  """
  if num_tokens <= length:
    return 0
  return int(rng.integers(0, length))


def make_window(tokens: np.ndarray, start: int, length: int,
                pad_id: int) -> Window:
  """Cut tokens[start:start + length] and pad it to `length`.

  Returns:
    ids: int32, shape [length].
    weights: float32, shape [length], 1.0 at real tokens, 0.0 at padding.
  """
  piece = tokens[start:start + length]
  ids = np.full(length, pad_id, dtype=np.int32)
  ids[:len(piece)] = piece
  weights = np.zeros(length, dtype=np.float32)
  weights[:len(piece)] = 1.0
  return ids, weights


def stack_windows(windows: List[Window]) -> Batch:
  """Stack windows into (inputs, targets, weights), each [len(windows), length].

  Inputs and targets are equal, separate arrays.
  """
  inputs = np.stack([ids for ids, _ in windows])
  weights = np.stack([window_weights for _, window_weights in windows])
  return inputs, inputs.copy(), weights


def batch_in_order(windows: Iterable[Window], batch_size: int, length: int,
                   pad_id: int) -> Iterator[Batch]:
  """Group windows into batches of `batch_size`, keeping their order.

  The last batch is filled up with rows of padding of weight 0, so every batch
  has the shape [batch_size, length].
  """
  pending = []
  for window in windows:
    pending.append(window)
    if len(pending) == batch_size:
      yield stack_windows(pending)
      pending = []

  if pending:
    padding_row = make_window(np.zeros(0, np.int32), 0, length, pad_id)
    pending.extend([padding_row] * (batch_size - len(pending)))
    yield stack_windows(pending)
