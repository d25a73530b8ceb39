"""Positional encodings that `PerformerLM` takes as a factory argument.

Each encoding is a gin-configurable factory called as
`factory(d_model=..., max_len=..., mode=...)`. It returns a Trax layer that maps
activations [batch, length, d_model] to [batch, length, d_model] with position
information added, for any length up to max_len:

| gin name                                | encoding                           |
|-----------------------------------------|------------------------------------|
| favor_trax.SinusoidalPositionalEncoding | Trax's `tl.PositionalEncoding`: a  |
|                                         | trainable table initialized with   |
|                                         | sinusoids (the default)            |
| favor_trax.AxialPositionalEncoding      | learned embeddings per axis of a   |
|                                         | grid such as (64, 64, 3), joined   |
|                                         | by concatenation                   |
| favor_trax.NoPositionalEncoding         | none: the input passes through     |

In predict mode each layer keeps the index of the next position in its state
and adds the encodings of the positions it is fed, one or several per call.
"""

import math
from typing import Sequence, Tuple

import gin
import jax
from jax import numpy as jnp
from trax import layers as tl
from trax.layers import base

MODES = ('train', 'eval', 'predict')


def _check_mode(mode):
  if mode not in MODES:
    raise ValueError(f'mode must be one of {MODES}, got {mode!r}.')


@gin.configurable(module='favor_trax')
def SinusoidalPositionalEncoding(d_model, max_len, mode='train'):  # pylint: disable=invalid-name
  """Return `tl.PositionalEncoding(max_len)`, a table of max_len x d_model.

  The table is initialized with sinusoids of the position and trained with
  the model. `d_model` is read from the input at init.
  """
  del d_model
  _check_mode(mode)
  return tl.PositionalEncoding(max_len=max_len, mode=mode)


@gin.configurable(module='favor_trax')
def NoPositionalEncoding(d_model, max_len, mode='train'):  # pylint: disable=invalid-name
  """Return a layer without weights that passes its input through.

  A causal model without positional encoding can still infer positions from
  its causal mask, but less well.
  """
  del d_model, max_len
  _check_mode(mode)
  return tl.Fn('NoPositionalEncoding', lambda x: x)


def split_evenly(total: int, parts: int) -> Tuple[int, ...]:
  """Split `total` into `parts` integers that differ by at most 1.

  The larger ones come first.
  """
  base_size, remainder = divmod(total, parts)
  return tuple(base_size + 1 if index < remainder else base_size
               for index in range(parts))


def axial_coordinates(positions, shape: Sequence[int]):
  """Return the row-major grid coordinates of flat positions.

  Args:
    positions: int array of flat positions, any shape.
    shape: the grid, for example (64, 64, 3) for rows, columns and channels.

  Returns:
    A list with one int array per axis, each of the shape of `positions`.
    Position p has coordinates (c_0, ..., c_{n-1}) with
    p = sum_i c_i * prod(shape[i+1:]). The first coordinate is taken modulo
    shape[0], so positions past prod(shape) wrap around.
  """
  coordinates = []
  stride = math.prod(shape)
  for size in shape:
    stride //= size
    coordinates.append((positions // stride) % size)
  return coordinates


@gin.configurable(module='favor_trax')
class AxialPositionalEncoding(base.Layer):
  """Learned positional embeddings factored over the axes of a grid.

  Flat position p of the sequence has grid coordinates (c_0, ..., c_{n-1}) in
  row-major order over `shape`, so for images of shape (64, 64, 3) in raster
  order with channels interleaved, c = (row, column, channel). Axis i has its
  own table E_i of shape [shape[i], d_embs[i]], and the encoding of p is the
  concatenation [E_0[c_0], ..., E_{n-1}[c_{n-1}]] of d_model = sum(d_embs)
  values, added to the input. The tables hold sum_i shape[i] * d_embs[i]
  weights instead of prod(shape) * d_model for a full table (for (64, 64, 3)
  and d_embs (384, 384, 256): 49,920 instead of 12,582,912).

  Weights: a tuple of the n tables E_i, drawn from N(0, stddev^2) at init.
  State: () in train and eval mode. In predict mode, an int32 scalar: the
  flat position of the next input token, advanced by the length of each call.

  NOTE: positions at or past prod(shape) wrap around to the start of the grid.
  The constructor rejects max_len > prod(shape), but predict mode cannot check
  the position inside jit, so a caller must stop decoding at max_len.
  """

  def __init__(self, d_model, max_len, shape=(64, 64, 3), d_embs=None,
               stddev=1.0, mode='train'):
    """Create the layer.

    Args:
      d_model: depth of the input and of the encoding.
      max_len: maximum sequence length of the model, at most prod(shape).
      shape: the grid of positions, for example (64, 64, 3) for 64x64 RGB
        images or (64, 32) for 2,048 text positions.
      d_embs: depth of each axis' embedding, summing to d_model. None splits
        d_model evenly over the axes, the first axes taking the remainder.
      stddev: standard deviation of the initial embeddings.
      mode: 'train', 'eval' or 'predict'.

    Raises:
      ValueError: an argument is invalid or inconsistent with the others.
    """
    super().__init__(name='AxialPositionalEncoding')
    _check_mode(mode)
    shape = tuple(shape)
    if not shape or any(not isinstance(size, int) or size < 1
                        for size in shape):
      raise ValueError(
          f'shape must be a non-empty tuple of positive integers, got {shape}.')
    if d_embs is None:
      d_embs = split_evenly(d_model, len(shape))
    d_embs = tuple(d_embs)
    if len(d_embs) != len(shape):
      raise ValueError(
          f'd_embs {d_embs} must have one depth per axis of shape {shape}.')
    if any(not isinstance(depth, int) or depth < 1 for depth in d_embs):
      raise ValueError(f'd_embs must be positive integers, got {d_embs}.')
    if sum(d_embs) != d_model:
      raise ValueError(
          f'd_embs {d_embs} sum to {sum(d_embs)}, but the embeddings are '
          f'concatenated to d_model = {d_model}. Choose d_embs that sum to '
          'd_model.')
    if max_len > math.prod(shape):
      raise ValueError(
          f'max_len = {max_len} is larger than the {math.prod(shape)} '
          f'positions of the axial shape {shape}. Choose a shape whose '
          'product is at least max_len.')
    if not stddev > 0:
      raise ValueError(f'stddev must be positive, got {stddev}.')
    self._d_model = d_model
    self._shape = shape
    self._d_embs = d_embs
    self._stddev = stddev
    self._mode = mode

  def init_weights_and_state(self, input_signature):
    depth = input_signature.shape[-1]
    if depth != self._d_model:
      raise ValueError(
          f'AxialPositionalEncoding was built for d_model = {self._d_model} '
          f'but receives inputs of depth {depth}.')
    rngs = jax.random.split(self.rng, len(self._shape))
    self.weights = tuple(
        self._stddev * jax.random.normal(rng, (size, axis_depth), jnp.float32)
        for rng, size, axis_depth in zip(rngs, self._shape, self._d_embs))
    if self._mode == 'predict':
      self.state = jnp.zeros((), dtype=jnp.int32)

  def embeddings(self, positions):
    """Return the encodings of flat positions: [*positions.shape, d_model]."""
    coordinates = axial_coordinates(positions, self._shape)
    return jnp.concatenate(
        [jnp.take(table, coordinate, axis=0)
         for table, coordinate in zip(self.weights, coordinates)], axis=-1)

  def forward(self, x):
    """Add the encodings of positions to x of shape [batch, length, d_model]."""
    length = x.shape[1]
    positions = jnp.arange(length, dtype=jnp.int32)
    if self._mode == 'predict':
      positions = positions + self.state
      self.state = self.state + length
    return x + self.embeddings(positions)[None].astype(x.dtype)
