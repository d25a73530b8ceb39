"""Fixed-length windows over token sequences, batched for language models.

A window is a pair of arrays of shape [length]: token ids, padded with the pad
id, and weights, 1.0 on real tokens and 0.0 on padding. Each window lies inside
one sequence, so no window mixes two books.

Batches follow Trax's convention for decoder-only language models, whose
`tl.ShiftRight` layer shifts the inputs right inside the model: inputs and
targets are the same window, and the model predicts position i of the targets
from the inputs before i.

Evaluation windows score every token of a sequence once. Non-overlapping
windows start at 0, length, 2 * length, ..., so a token at position i of its
window is predicted from i tokens of context. Sliding windows start at 0,
stride, 2 * stride, ... and weight only their last `stride` positions, the
tokens that no earlier window scored, except the first window, which scores
all of its tokens. A token scored by a later window thus has between
length - stride and length - 1 tokens of context, and the first token of a
sequence is predicted from no context in both schemes.
"""

from typing import Iterable, Iterator, List, NamedTuple, Tuple

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


class EvalWindow(NamedTuple):
  """An evaluation window of a sequence.

  Attributes:
    start: position in the sequence of the window's first token.
    first_scored: position in the window of the first token it scores. The
      tokens before it are context only, scored by an earlier window.
  """
  start: int
  first_scored: int


def check_length_and_stride(length: int, stride: int) -> None:
  """Raise ValueError unless 1 <= stride <= length, both integers.

  A stride greater than the window length would leave tokens unscored.
  """
  check_positive_int('length', length)
  check_positive_int('stride', stride)
  if stride > length:
    raise ValueError(
        f'stride must not exceed the window length {length}, got {stride}: '
        'windows further apart than their length leave tokens unscored. Use '
        'a stride between 1 and the window length.')


def sliding_windows(num_tokens: int, length: int,
                    stride: int) -> List[EvalWindow]:
  """Return the windows that score each of num_tokens tokens exactly once.

  Window k starts at k * stride. The first window scores all of its tokens.
  Each later window scores its last `stride` positions, which follow the
  tokens of the window before, so it predicts them from length - stride to
  length - 1 tokens of context. Windows follow one another until one
  reaches the last token, so the last window can be partial. stride equal to
  length gives the non-overlapping windows of `window_starts`.

  Raises:
    ValueError: see `check_length_and_stride`.
  """
  check_length_and_stride(length, stride)
  if num_tokens <= 0:
    return []

  windows = [EvalWindow(0, 0)]
  scored_until = min(length, num_tokens)
  start = 0
  while scored_until < num_tokens:
    start += stride
    windows.append(EvalWindow(start, length - stride))
    scored_until = min(start + length, num_tokens)
  return windows


def count_sliding_windows(num_tokens: int, length: int, stride: int) -> int:
  """Return len(sliding_windows(num_tokens, length, stride)) without a list."""
  if num_tokens <= 0:
    return 0
  if num_tokens <= length:
    return 1
  return 1 + -(-(num_tokens - length) // stride)


def make_window(tokens: np.ndarray, start: int, length: int,
                pad_id: int, first_scored: int = 0) -> Window:
  """Cut tokens[start:start + length] and pad it to `length`.

  Args:
    tokens: the sequence, shape [num_tokens].
    start: position of the window's first token in `tokens`.
    length: tokens per window.
    pad_id: id of padding.
    first_scored: position in the window of the first token of weight 1.
      The tokens before it are context of weight 0.

  Returns:
    ids: int32, shape [length].
    weights: float32, shape [length], 1.0 at scored tokens, 0.0 at context
      and padding.
  """
  piece = tokens[start:start + length]
  ids = np.full(length, pad_id, dtype=np.int32)
  ids[:len(piece)] = piece
  weights = np.zeros(length, dtype=np.float32)
  weights[first_scored:len(piece)] = 1.0
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
