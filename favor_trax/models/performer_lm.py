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
"""

import gin
from trax import layers as tl

from favor_trax.layers import feed_forward
from favor_trax.layers import kinds


def _check_positive(**values):
  for name, value in values.items():
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f'{name} must be a positive integer, got {value!r}.')


def DecoderBlock(d_model, d_ff, n_heads, dropout, ff_activation, ff_chunk_size,  # pylint: disable=invalid-name
                 attention_layer, mode):
  """Return the four reversible layers of one block, [batch, length, d_model] each way."""
  attention = attention_layer(
      d_model, n_heads=n_heads, dropout=dropout, causal=True, mode=mode)
  feed_forward_block = feed_forward.ChunkedFeedForward(
      d_model, d_ff, dropout=dropout, activation=ff_activation,
      chunk_size=ff_chunk_size, mode=mode)
  return [
      tl.ReversibleHalfResidual(
          tl.LayerNorm(), attention, tl.Dropout(rate=dropout, mode=mode)),
      tl.ReversibleSwap(),
      tl.ReversibleHalfResidual(tl.LayerNorm(), feed_forward_block),
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

  blocks = []
  for _ in range(n_layers):
    blocks.extend(DecoderBlock(d_model, d_ff, n_heads, dropout, ff_activation,
                               ff_chunk_size, attention_layer, mode))
  return tl.Serial(
      tl.ShiftRight(mode=mode),
      tl.Embedding(vocab_size, d_model),
      tl.Dropout(rate=dropout, mode=mode),
      tl.PositionalEncoding(max_len=max_len, mode=mode),
      tl.Dup(),
      tl.ReversibleSerial(blocks),
      tl.Concatenate(),
      tl.LayerNorm(),
      tl.Dense(vocab_size),
      tl.LogSoftmax(),
  )
