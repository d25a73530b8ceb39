"""Decoder-only Performer language model built from Trax combinators.

The layout follows the reversible Transformer of Kitaev et al., "Reformer: The
Efficient Transformer" (ICLR 2020), with the attention layer as an argument:

  ShiftRight -> Embedding -> Dropout -> PositionalEncoding -> Dup
  -> ReversibleSerial of n_layers blocks, each block being
       x1 += Attention(LayerNorm(x2)); swap; x1 += FeedForward(LayerNorm(x2)); swap
  -> Concatenate -> LayerNorm -> Dense(vocab_size) -> LogSoftmax

A reversible block recomputes its inputs from its outputs, so a trainer that
walks the blocks backward (Trax's memory-efficient trainer) stores the
activations of one block at a time rather than of all n_layers.

With activation_dtype 'bfloat16', each residual branch computes in bfloat16 on
float32 master weights, while the two residual streams stay float32. A
reversible block reconstructs its input as output - branch(...), which is
exact only up to the rounding of the streams' dtype, so float32 streams keep
the reconstruction as accurate as in a float32 model.
"""

import gin
import jax
from jax import numpy as jnp
from trax import layers as tl

from favor_trax.layers import feed_forward
from favor_trax.layers import kinds
from favor_trax.layers import positional


ACTIVATION_DTYPES = ('float32', 'bfloat16')


def _cast_floating(tree, dtype):
  """Cast the floating-point arrays of `tree` to `dtype`, other leaves as is."""
  def cast(value):
    if hasattr(value, 'dtype') and jnp.issubdtype(value.dtype, jnp.floating):
      return value.astype(dtype)
    return value
  return jax.tree_util.tree_map(cast, tree)


class MixedPrecisionSerial(tl.Serial):
  """Serial combinator that computes in `compute_dtype` on float32 weights.

  Floating-point inputs and weights are cast to compute_dtype before the
  sublayers run, and floating-point outputs are cast back to float32.
  Gradients flow through the casts, so an optimizer updates the float32
  weights. State passes through uncast. The weights have the layout of a plain
  `tl.Serial` of the same sublayers, so checkpoints load into either.
  """

  def __init__(self, *sublayers, compute_dtype):
    super().__init__(*sublayers)
    self._compute_dtype = jnp.dtype(compute_dtype)
    self._name = f'MixedPrecisionSerial_{self._compute_dtype.name}'

  def forward(self, xs):
    float32_weights = self.weights
    self.weights = _cast_floating(float32_weights, self._compute_dtype)
    try:
      outputs = super().forward(_cast_floating(xs, self._compute_dtype))
    finally:
      self.weights = float32_weights
    return _cast_floating(outputs, jnp.float32)


def HalfResidual(*residual_layers, activation_dtype):  # pylint: disable=invalid-name
  """Return `tl.ReversibleHalfResidual` whose branch computes in activation_dtype."""
  layer = tl.ReversibleHalfResidual(*residual_layers)
  if activation_dtype != 'float32':
    # The branch stays the layer's only sublayer, as in the float32 model,
    # so both models have the same weight layout and layer names.
    # pylint: disable=protected-access
    layer._compute_residual = MixedPrecisionSerial(
        *layer._compute_residual.sublayers, compute_dtype=activation_dtype)
    layer._sublayers = (layer._compute_residual,)
    # pylint: enable=protected-access
  return layer


def _check_positive(**values):
  for name, value in values.items():
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f'{name} must be a positive integer, got {value!r}.')


def _branch(*layers, activation_dtype):
  """Return a Serial of layers that computes in activation_dtype."""
  if activation_dtype == 'float32':
    return tl.Serial(*layers)
  return MixedPrecisionSerial(*layers, compute_dtype=activation_dtype)


def ResidualDecoderBlock(d_model, d_ff, n_heads, dropout, ff_activation,  # pylint: disable=invalid-name
                         ff_chunk_size, attention_layer, mode,
                         activation_dtype='float32'):
  """Return one pre-norm residual block of a standard, non-reversible model."""
  attention = attention_layer(
      d_model, n_heads=n_heads, dropout=dropout, causal=True, mode=mode)
  feed_forward_block = feed_forward.ChunkedFeedForward(
      d_model, d_ff, dropout=dropout, activation=ff_activation,
      chunk_size=ff_chunk_size, mode=mode)
  return [
      tl.Residual(_branch(tl.LayerNorm(), attention,
                          tl.Dropout(rate=dropout, mode=mode),
                          activation_dtype=activation_dtype)),
      tl.Residual(_branch(tl.LayerNorm(), feed_forward_block,
                          activation_dtype=activation_dtype)),
  ]


def DecoderBlock(d_model, d_ff, n_heads, dropout, ff_activation, ff_chunk_size,  # pylint: disable=invalid-name
                 attention_layer, mode, activation_dtype='float32'):
  """Return the four reversible layers of one block, [batch, length, d_model] each way."""
  attention = attention_layer(
      d_model, n_heads=n_heads, dropout=dropout, causal=True, mode=mode)
  feed_forward_block = feed_forward.ChunkedFeedForward(
      d_model, d_ff, dropout=dropout, activation=ff_activation,
      chunk_size=ff_chunk_size, mode=mode)
  return [
      HalfResidual(tl.LayerNorm(), attention,
                   tl.Dropout(rate=dropout, mode=mode),
                   activation_dtype=activation_dtype),
      tl.ReversibleSwap(),
      HalfResidual(tl.LayerNorm(), feed_forward_block,
                   activation_dtype=activation_dtype),
      tl.ReversibleSwap(),
  ]


@gin.configurable(module='favor_trax')
def PerformerLM(vocab_size=gin.REQUIRED,  # pylint: disable=invalid-name
                d_model=512,
                d_ff=2048,
                n_layers=6,
                n_heads=8,
                max_len=2048,
                dropout=0.1,
                ff_activation=tl.FastGelu,
                ff_chunk_size=0,
                attention_layer=kinds.FavorAttention,
                activation_dtype='float32',
                positional_encoding=positional.SinusoidalPositionalEncoding,
                reversible=True,
                mode='train'):
  """Return a decoder-only language model over token ids.

  Args:
    vocab_size: Number of token ids; the output has vocab_size log-probabilities.
    d_model: Width of the residual streams.
    d_ff: Hidden width of each feed-forward block.
    n_layers: Number of reversible blocks.
    n_heads: Number of attention heads.
    max_len: Maximum sequence length the positional encoding covers.
    dropout: Dropout rate after embeddings, attention and feed-forward layers.
    ff_activation: Layer factory for the feed-forward nonlinearity.
    ff_chunk_size: Positions per feed-forward chunk; 0 runs all at once.
    attention_layer: Factory called as attention_layer(d_model, n_heads=...,
      dropout=..., causal=True, mode=...) that returns a self-attention layer
      mapping [batch, length, d_model] to [batch, length, d_model].
    activation_dtype: 'float32', or 'bfloat16' to compute the attention and
      feed-forward branches in bfloat16. Weights, the residual streams, the
      embedding and the output logits stay float32 either way.
    positional_encoding: Factory called as positional_encoding(d_model=...,
      max_len=..., mode=...) that returns a layer adding positions to
      [batch, length, d_model] (see `favor_trax.layers.positional`). The
      default, Trax's `tl.PositionalEncoding`, keeps the weight layout of
      earlier checkpoints.
    reversible: If True, the blocks are reversible, as described above. If
      False, they form one pre-norm residual stream, x += Attention(LayerNorm(x))
      then x += FeedForward(LayerNorm(x)), as in a standard Transformer; its
      weight layout differs, and every activation is stored for backward.
    mode: 'train', 'eval' or 'predict'.

  Returns:
    A layer mapping int token ids [batch, length] to log-probabilities
    [batch, length, vocab_size]. The model shifts its input right by one, so
    inputs and targets of a batch are the same window.
  """
  _check_positive(vocab_size=vocab_size, d_model=d_model, d_ff=d_ff,
                  n_layers=n_layers, n_heads=n_heads, max_len=max_len)
  if mode not in ('train', 'eval', 'predict'):
    raise ValueError(
        f"mode must be 'train', 'eval' or 'predict', got {mode!r}.")
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f'dropout must be in [0, 1), got {dropout}.')
  if activation_dtype not in ACTIVATION_DTYPES:
    raise ValueError(f'activation_dtype must be one of {ACTIVATION_DTYPES}, '
                     f'got {activation_dtype!r}.')

  block_fn = DecoderBlock if reversible else ResidualDecoderBlock
  blocks = []
  for _ in range(n_layers):
    blocks.extend(block_fn(d_model, d_ff, n_heads, dropout, ff_activation,
                           ff_chunk_size, attention_layer, mode,
                           activation_dtype))
  if reversible:
    body = [tl.Dup(), tl.ReversibleSerial(blocks), tl.Concatenate()]
  else:
    body = blocks
  return tl.Serial(
      tl.ShiftRight(mode=mode),
      tl.Embedding(vocab_size, d_model),
      tl.Dropout(rate=dropout, mode=mode),
      positional_encoding(d_model=d_model, max_len=max_len, mode=mode),
      *body,
      tl.LayerNorm(),
      tl.Dense(vocab_size),
      tl.LogSoftmax(),
  )
