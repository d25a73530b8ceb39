"""Multi-head self-attention layers that share one projection layout.

`ProjectedAttention` maps x [batch, length, d_model] to q, k [batch, length,
n_heads, d_qk] and v [batch, length, n_heads, d_v] with dense projections,
lets a subclass attend, and projects the heads back to d_model. Its weights,
((w_q, b_q), (w_k, b_k), (w_v, b_v), (w_o, b_o)), have the layout and the
initialization (Glorot uniform, zero biases) of `FavorAttention`, so
weights trained with one attention kind load into another.
"""

import jax
import jax.numpy as jnp
from trax.layers import base
from trax.layers import initializers

MODES = ('train', 'eval', 'predict')


class ProjectedAttention(base.Layer):
  """Base class: projections around `attend(q, k, v)`; subclasses attend."""

  def __init__(self, d_model, n_heads=1, d_qk=None, d_v=None, dropout=0.0,
               causal=False, mode='train'):
    super().__init__(n_in=1, n_out=1)
    d_qk = d_model // n_heads if d_qk is None else d_qk
    d_v = d_model // n_heads if d_v is None else d_v
    for name, value in (('d_model', d_model), ('n_heads', n_heads),
                        ('d_qk', d_qk), ('d_v', d_v)):
      if not isinstance(value, int) or value < 1:
        raise ValueError(f'{name} must be a positive int, got {value!r}.')
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f'dropout must be in [0, 1), got {dropout!r}.')
    if mode not in MODES:
      raise ValueError(f'mode must be one of {MODES}, got {mode!r}.')
    self._d_model = d_model
    self._n_heads = n_heads
    self._d_qk = d_qk
    self._d_v = d_v
    self._dropout = dropout
    self._causal = causal
    self._mode = mode

  def attend(self, q, k, v):
    """Return attention outputs [batch, length, heads, d_v]; see subclasses."""
    raise NotImplementedError

  def init_weights_and_state(self, input_signature):
    shape = input_signature.shape
    if len(shape) != 3 or shape[-1] != self._d_model:
      raise ValueError(
          f'input must have shape [batch, length, d_model={self._d_model}], '
          f'got shape {shape}.')
    keys = jax.random.split(self.rng, 4)
    initializer = initializers.GlorotUniformInitializer()

    def dense(key, n_in, n_out):
      return (initializer((n_in, n_out), key),
              jnp.zeros((n_out,), jnp.float32))

    heads_qk = self._n_heads * self._d_qk
    heads_v = self._n_heads * self._d_v
    self.weights = (
        dense(keys[0], self._d_model, heads_qk),
        dense(keys[1], self._d_model, heads_qk),
        dense(keys[2], self._d_model, heads_v),
        dense(keys[3], heads_v, self._d_model),
    )

  def forward(self, x):
    batch, length = x.shape[:2]
    depths = (self._d_qk, self._d_qk, self._d_v)
    q, k, v = [
        (jnp.dot(x, w) + b).reshape(batch, length, self._n_heads, depth)
        for (w, b), depth in zip(self.weights[:3], depths)
    ]
    out = self.attend(q, k, v)
    if self._mode == 'train' and self._dropout > 0:
      keep = jax.random.bernoulli(self.rng, 1.0 - self._dropout, out.shape)
      out = jnp.where(keep, out / (1.0 - self._dropout), 0).astype(out.dtype)
    w_out, b_out = self.weights[3]
    return jnp.dot(out.reshape(batch, length, -1), w_out) + b_out
