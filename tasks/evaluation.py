"""Scoring a trained language model on every token of a split.

`EvalConfig` (gin: `EvalConfig.mode`, `.window`, `.stride`) sets how much
context each token gets:
- 'non_overlapping': consecutive windows of `window` tokens. A token at
  position i of its window is predicted from i tokens of context.
- 'sliding': windows every `stride` tokens, each scoring only the tokens no
  earlier window scored. Every token after a book's first window is
  predicted from window - stride to window - 1 tokens of context.
- 'streaming': causal FAVOR models only. A predict-mode model reads each book
  `window` tokens per call and carries its attention prefix sums from call
  to call, so every token is predicted from the whole book before it, at
  linear cost.

`score_tokens` runs an eval-mode Trax model over (inputs, targets, weights)
batches, and `score_books_streaming` runs a predict-mode model over whole
books. Both return the summed negative log-likelihood in nats of the scored
tokens, their count, and how many of them the model's argmax predicts. The
metrics in `tasks.metrics` turn these sums into perplexities and bits.
"""

import math
import time
from typing import Iterator, List, Optional, Sequence, Tuple

from absl import logging
import gin
import jax
from jax import numpy as jnp
import numpy as np

from favor_trax import decoding
from favor_trax.layers import favor
from favor_trax.layers import kinds
from favor_trax.layers import positional
from favor_trax.layers import projected_attention
from favor_trax.training import config
from tasks import windows

MODES = ('non_overlapping', 'sliding', 'streaming')

# Attention layers whose predict mode continues a sequence from a carried
# state of fixed size: FAVOR's prefix sums, or nothing at all.
STREAMABLE_ATTENTION = (favor.FavorAttention, kinds.IdentityAttention)

def _check_positive_int(name, value):
  try:
    windows.check_positive_int(name, value)
  except ValueError as error:
    raise config.ConfigError(str(error)) from error


@gin.configurable(module='evaluation')
class EvalConfig:
  """Settings of the evaluation windows: mode, length and stride.

  Attributes:
    mode: one of `MODES`.
    window: tokens per window (per model call in 'streaming'), or None for
      the training sequence length.
    stride: for 'sliding', tokens between the starts of consecutive windows,
      from 1 to window. None elsewhere, where the stride is the window.
  """

  def __init__(self, mode: str = 'non_overlapping',
               window: Optional[int] = None, stride: Optional[int] = None):
    """Check and store the settings.

    Raises:
      ConfigError: an unknown mode, a stride outside 'sliding', or a
        'sliding' mode without a stride.
    """
    if mode not in MODES:
      raise config.ConfigError(
          f'EvalConfig.mode must be one of {MODES}, got {mode!r}.')
    if window is not None:
      _check_positive_int('EvalConfig.window', window)
    if mode == 'sliding':
      if stride is None:
        raise config.ConfigError(
            "EvalConfig.mode = 'sliding' needs EvalConfig.stride, the tokens "
            'between window starts, from 1 to the window length.')
      _check_positive_int('EvalConfig.stride', stride)
    elif stride is not None:
      raise config.ConfigError(
          f'EvalConfig.stride = {stride} applies only to mode \'sliding\', '
          f'got mode {mode!r}, whose stride is the window. Remove the stride '
          "binding or set EvalConfig.mode = 'sliding'.")
    self.mode = mode
    self.window = window
    self.stride = stride

  def window_and_stride(self, sequence_length: int) -> Tuple[int, int]:
    """Return (window, stride), with the window defaulting to sequence_length.

    Raises:
      ConfigError: the stride exceeds the window.
    """
    window = self.window or sequence_length
    stride = self.stride if self.mode == 'sliding' else window
    try:
      windows.check_length_and_stride(window, stride)
    except ValueError as error:
      raise config.ConfigError(f'EvalConfig: {error}') from error
    return window, stride

  def describe(self, window: int, stride: int) -> str:
    """Return one sentence on the windows and the context they give."""
    if self.mode == 'streaming':
      return (f'streaming: {window} tokens per predict-mode call, each token '
              'in the context of its whole book before it')
    if self.mode == 'sliding' and stride < window:
      return (f'sliding windows of {window} tokens every {stride} tokens, '
              f'each token after the first window of its book in the context '
              f'of {window - stride} to {window - 1} tokens before it')
    return (f'non-overlapping windows of {window} tokens from the first '
            f'token of each book, each token in the context of 0 to '
            f'{window - 1} tokens before it')


def _make_batch_loss(model):
  """Return a jitted fn(weights, state, rng, inputs, targets, mask).

  It returns (nll, tokens, correct, new_state) of one batch. Eval mode
  ignores the new state, and predict mode carries it to the next call.
  """

  def batch_loss(weights, state, rng, inputs, targets, mask):
    log_probs, new_state = model.pure_fn(inputs, weights, state, rng)
    picked = jnp.take_along_axis(
        log_probs.astype(jnp.float32), targets[..., None], axis=-1)[..., 0]
    mask = mask.astype(jnp.float32)
    correct = (jnp.argmax(log_probs, axis=-1) == targets).astype(jnp.float32)
    return (-jnp.sum(picked * mask), jnp.sum(mask), jnp.sum(correct * mask),
            new_state)

  return jax.jit(batch_loss)


def score_tokens(model, weights, state, batches, log_every=50):
  """Sum the negative log-likelihood and the correct argmax predictions.

  Args:
    model: Trax layer in eval mode mapping int inputs [batch, length] to
      log-probabilities [batch, length, vocab_size].
    weights: The model's weights (for example `loop.model.weights`).
    state: The model's state.
    batches: Iterable of (inputs, targets, weights) arrays of shape
      [batch, length]; a token counts when its weight is 1.
    log_every: Progress is logged every this many batches.

  Returns:
    (nll, n_tokens, n_correct): float sums over weighted tokens, nll in nats
    accumulated in float64, n_correct counting tokens whose most likely
    prediction is the target.
  """
  batch_loss = _make_batch_loss(model)
  rng = jax.random.PRNGKey(0)
  nll = 0.0
  n_tokens = 0.0
  n_correct = 0.0
  start = time.time()
  for index, (inputs, targets, mask) in enumerate(batches):
    batch_nll, batch_tokens, batch_correct, _ = batch_loss(
        weights, state, rng, inputs, targets, mask)
    nll += float(np.asarray(batch_nll, dtype=np.float64))
    n_tokens += float(batch_tokens)
    n_correct += float(batch_correct)
    if log_every and (index + 1) % log_every == 0:
      elapsed = time.time() - start
      logging.info('evaluated %d batches, %d tokens, %.0f tokens/s',
                   index + 1, n_tokens, n_tokens / max(elapsed, 1e-9))
  return nll, n_tokens, n_correct


def _unstreamable_layers(layer) -> Iterator[str]:
  """Yield the class names of attention layers that cannot stream."""
  if isinstance(layer, favor.FavorAttention):
    # pylint: disable-next=protected-access
    if not layer._causal:
      yield 'FavorAttention(causal=False)'
  elif isinstance(layer, STREAMABLE_ATTENTION):
    pass
  elif (isinstance(layer, projected_attention.ProjectedAttention) or
        'Attention' in type(layer).__name__):
    yield type(layer).__name__
  for sublayer in layer.sublayers:
    yield from _unstreamable_layers(sublayer)


def check_streamable(model) -> None:
  """Raise ConfigError unless every attention layer of model can stream.

  Causal FAVOR attention carries fixed-size prefix sums from call to call.
  Exact, local and LSH attention would need every earlier key, so they
  cannot stream. Attention layers are found by class: `ProjectedAttention`
  subclasses and any layer whose class name contains 'Attention'.
  """
  found = sorted(set(_unstreamable_layers(model)))
  if found:
    raise config.ConfigError(
        f"EvalConfig.mode = 'streaming' needs causal FAVOR attention in every "
        f'layer, but the model has {", ".join(found)}, which cannot carry a '
        'fixed-size state from one window to the next. Use '
        "EvalConfig.mode = 'sliding' or 'non_overlapping' for this model.")


def position_limit(model) -> Optional[int]:
  """Return the positions a model's positional encodings cover, or None.

  In predict mode each positional encoding keeps a position counter. Trax's
  tl.PositionalEncoding stores a table of max_len positions and clamps its
  slice into the table, so past max_len it repeats positions silently.
  `AxialPositionalEncoding` wraps around after prod(shape) positions. A model
  with neither, such as one with `NoPositionalEncoding`, has no limit.
  """
  limits = []
  # pylint: disable=protected-access
  if isinstance(model, positional.AxialPositionalEncoding):
    limits.append(math.prod(model._shape))
  elif isinstance(getattr(model, '_max_len', None), int):
    # tl.PositionalEncoding, found by its attribute: the name tl exports is
    # gin's subclass of the class whose instances the model contains.
    limits.append(model._max_len)
  # pylint: enable=protected-access
  for sublayer in model.sublayers:
    limit = position_limit(sublayer)
    if limit is not None:
      limits.append(limit)
  return min(limits) if limits else None


def check_books_fit(model, book_lengths: Sequence[int], window: int) -> None:
  """Raise ConfigError when a book needs more positions than model covers.

  A book of n tokens takes ceil(n / window) calls of `window` positions,
  and the positions of the last, padded call must still lie inside the
  table, because tl.PositionalEncoding clamps a slice that crosses its end.
  """
  limit = position_limit(model)
  if limit is None or not book_lengths:
    return
  longest = max(book_lengths)
  needed = -(-longest // window) * window
  if needed > limit:
    raise config.ConfigError(
        f'Streaming evaluation needs {needed} positions for the longest book '
        f'({longest} tokens in calls of {window}), but the model\'s '
        f'positional encoding covers max_len = {limit}. Use a model without '
        'a position table (PerformerLM.positional_encoding = '
        '@favor_trax.NoPositionalEncoding), raise max_len to at least that '
        "many positions, or evaluate with EvalConfig.mode = 'sliding'.")


def _streaming_rows(group: List[np.ndarray], batch_size: int,
                    window: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Lay out books as rows of shifted inputs, targets and weights.

  Row r contains book r of the group: inputs [s, t_0, ..., t_{n-2}] with
  s = `decoding.START_ID`, targets [t_0, ..., t_{n-1}] and weights 1 on the
  n tokens, all padded to a whole number of windows of the longest book.
  Rows past the group's books are padding.
  """
  longest = max(len(tokens) for tokens in group)
  length = -(-longest // window) * window
  inputs = np.full((batch_size, length), decoding.START_ID, np.int32)
  targets = np.zeros((batch_size, length), np.int32)
  weights = np.zeros((batch_size, length), np.float32)
  for row, tokens in enumerate(group):
    inputs[row, 1:len(tokens)] = tokens[:-1]
    targets[row, :len(tokens)] = tokens
    weights[row, :len(tokens)] = 1.0
  return inputs, targets, weights


def score_books_streaming(model, books: Sequence[np.ndarray], batch_size: int,
                          window: int,
                          log_every: int = 50) -> Tuple[float, float, float]:
  """Score every token of every book with the whole book before it as context.

  Books are sorted by length and scored batch_size at a time, in lockstep:
  each call feeds the next `window` tokens of every row, and the model
  carries its FAVOR prefix sums and position counter to the next call. Each
  group of books starts from the model's state at entry, so a book's first
  token is predicted from `decoding.START_ID` alone, as in eval mode.

  Args:
    model: predict-mode model mapping int inputs [batch, window] to
      log-probabilities [batch, window, vocab_size], with trained weights and
      the state at position 0 (see `favor_trax.decoding.predict_model`).
    books: token ids of each book, end-of-book id included.
    batch_size: the batch size the model's state was built for.
    window: tokens per call.
    log_every: progress is logged every this many calls.

  Returns:
    (nll, n_tokens, n_correct), as `score_tokens` returns them.
  """
  windows.check_positive_int('batch_size', batch_size)
  windows.check_positive_int('window', window)
  call_loss = _make_batch_loss(model)
  model_weights = model.weights
  initial_state = model.state
  rng = jax.random.PRNGKey(0)
  order = sorted(range(len(books)), key=lambda index: -len(books[index]))
  nll = 0.0
  n_tokens = 0.0
  n_correct = 0.0
  n_calls = 0
  start = time.time()
  for group_start in range(0, len(order), batch_size):
    group = [books[index] for index in order[group_start:group_start +
                                             batch_size]]
    inputs, targets, weights = _streaming_rows(group, batch_size, window)
    state = initial_state
    for offset in range(0, inputs.shape[1], window):
      piece = slice(offset, offset + window)
      call_nll, call_tokens, call_correct, state = call_loss(
          model_weights, state, rng, inputs[:, piece], targets[:, piece],
          weights[:, piece])
      nll += float(np.asarray(call_nll, dtype=np.float64))
      n_tokens += float(call_tokens)
      n_correct += float(call_correct)
      n_calls += 1
      if log_every and n_calls % log_every == 0:
        elapsed = time.time() - start
        logging.info('streamed %d calls, %d tokens, %.0f tokens/s', n_calls,
                     n_tokens, n_tokens / max(elapsed, 1e-9))
  return nll, n_tokens, n_correct
