"""Position-wise feed-forward applied to a few positions at a time.

A feed-forward block on [batch, length, d_model] holds a [batch, length, d_ff]
hidden activation, which at long lengths costs more memory than attention.
`ChunkedFeedForward` runs the block on `chunk_size` positions at a time under
`jax.checkpoint`, so forward and backward hold one chunk's hidden activation.
The result equals the unchunked block because each position is independent.
"""

import gin
import jax
from jax import numpy as jnp
from trax import layers as tl
from trax.layers import base


def FeedForward(d_model, d_ff, dropout, activation, mode):  # pylint: disable=invalid-name
  """Return Dense(d_ff), activation, Dropout, Dense(d_model), Dropout."""
  return tl.Serial(
      tl.Dense(d_ff),
      activation(),
      tl.Dropout(rate=dropout, mode=mode),
      tl.Dense(d_model),
      tl.Dropout(rate=dropout, mode=mode),
  )


@gin.configurable(module='favor_trax')
class ChunkedFeedForward(base.Layer):
  """Feed-forward block over [batch, length, d_model], `chunk_size` positions at a time.

  Any length works: the input is padded to a multiple of `chunk_size` and the
  padding is cut from the output. `chunk_size` 0 applies the block to the
  whole sequence at once. Each chunk draws its own dropout rng, so outputs
  equal the unchunked block only when dropout is off.
  """

  def __init__(self, d_model, d_ff, dropout=0.0, activation=tl.FastGelu,
               chunk_size=0, mode='train'):
    super().__init__(n_in=1, n_out=1)
    if chunk_size < 0:
      raise ValueError(
          f'chunk_size must be 0 (no chunking) or positive, got {chunk_size}.')
    self._chunk_size = chunk_size
    self._sublayers = (FeedForward(d_model, d_ff, dropout, activation, mode),)

  @property
  def sublayer(self):
    return self._sublayers[0]

  def init_weights_and_state(self, input_signature):
    batch, length, depth = input_signature.shape
    if self._chunk_size:
      length = min(length, self._chunk_size)
    chunk_signature = base.ShapeDtype((batch, length, depth),
                                      input_signature.dtype)
    weights, state = self.sublayer.init(chunk_signature, use_cache=True)
    self.weights = (weights,)
    self.state = (state,)

  def forward(self, x):
    weights = self.weights[0]
    state = self.state[0]
    batch, length, depth = x.shape
    chunk_size = self._chunk_size
    if not chunk_size or length <= chunk_size:
      y, _ = self.sublayer.pure_fn(x, weights, state, self.rng, use_cache=True)
      return y

    n_chunks = -(-length // chunk_size)
    padded = jnp.pad(x, ((0, 0), (0, n_chunks * chunk_size - length), (0, 0)))
    chunks = padded.reshape(batch, n_chunks, chunk_size, depth)
    chunks = jnp.moveaxis(chunks, 1, 0)
    rngs = jax.random.split(self.rng, n_chunks)

    @jax.checkpoint
    def apply_to_chunk(chunk_and_rng):
      chunk, rng = chunk_and_rng
      y, _ = self.sublayer.pure_fn(chunk, weights, state, rng, use_cache=True)
      return y

    outputs = jax.lax.map(apply_to_chunk, (chunks, rngs))
    outputs = jnp.moveaxis(outputs, 0, 1).reshape(batch, -1, depth)
    return outputs[:, :length]

