"""The attention kinds a model can use, each a gin-configurable Trax layer.

Every kind is called as kind(d_model, n_heads=, d_qk=, d_v=, dropout=,
causal=, mode=) and maps [batch, length, d_model] to [batch, length,
d_model]. All kinds but `lsh` share `ProjectedAttention`'s weight layout.

| gin name                      | attention                                  |
|-------------------------------|--------------------------------------------|
| favor_trax.FavorAttention     | FAVOR random features; `kernel` picks one  |
| favor_trax.DotProductAttention| exact softmax, query-chunked               |
| favor_trax.LocalAttention     | exact softmax within blocks                |
| favor_trax.LSHAttention       | Trax's Reformer LSH attention              |
| favor_trax.IdentityAttention  | none: each position attends to itself only |
"""

import gin
from trax import layers as tl

from favor_trax.layers import favor
from favor_trax.layers import projected_attention
from favor_trax.ops import chunked_exact

FavorAttention = favor.FavorAttention


def _reject_predict(name, mode):
  if mode == 'predict':
    raise ValueError(
        f'{name} has no predict mode (no key-value cache). Decode with '
        "mode='eval' on the growing prefix, or use FavorAttention, whose "
        'predict mode costs O(1) per token.')


@gin.configurable(module='favor_trax')
class DotProductAttention(projected_attention.ProjectedAttention):
  """Exact softmax attention computed `query_chunk_size` queries at a time.

  Holds at most [batch, heads, query_chunk_size, length] logits at once, in
  forward and backward.
  """

  def __init__(self, d_model, n_heads=1, d_qk=None, d_v=None, dropout=0.0,
               causal=False, query_chunk_size=256, mode='train'):
    _reject_predict('DotProductAttention', mode)
    super().__init__(d_model, n_heads=n_heads, d_qk=d_qk, d_v=d_v,
                     dropout=dropout, causal=causal, mode=mode)
    if query_chunk_size < 1:
      raise ValueError(
          f'query_chunk_size must be positive, got {query_chunk_size}.')
    self._query_chunk_size = query_chunk_size

  def attend(self, q, k, v):
    return chunked_exact.query_chunked_softmax_attention(
        q, k, v, causal=self._causal, chunk_size=self._query_chunk_size)


@gin.configurable(module='favor_trax')
class LocalAttention(projected_attention.ProjectedAttention):
  """Softmax attention over the query's block and the block before it."""

  def __init__(self, d_model, n_heads=1, d_qk=None, d_v=None, dropout=0.0,
               causal=False, block_size=128, mode='train'):
    _reject_predict('LocalAttention', mode)
    super().__init__(d_model, n_heads=n_heads, d_qk=d_qk, d_v=d_v,
                     dropout=dropout, causal=causal, mode=mode)
    if block_size < 1:
      raise ValueError(f'block_size must be positive, got {block_size}.')
    self._block_size = block_size

  def attend(self, q, k, v):
    return chunked_exact.local_attention(
        q, k, v, block_size=self._block_size, causal=self._causal)


@gin.configurable(module='favor_trax')
class IdentityAttention(projected_attention.ProjectedAttention):
  """No attention: position i outputs its own value v_i.

  The lower bound of time and memory for a layer with these projections.
  """

  def attend(self, q, k, v):
    del q, k
    return v


@gin.configurable(module='favor_trax')
def LSHAttention(d_model, n_heads=1, d_qk=None, d_v=None, dropout=0.0,  # pylint: disable=invalid-name
                 causal=False, chunk_len=64, n_hashes=2, n_buckets=None,
                 mode='train'):
  """Return Trax's LSHSelfAttention (Reformer) with the shared arguments.

  Its weights differ from `ProjectedAttention`'s: queries and keys share one
  projection, so a transfer from another kind loads only the rest.
  The sequence length must be a multiple of chunk_len.
  """
  d_qk = d_model // n_heads if d_qk is None else d_qk
  d_v = d_model // n_heads if d_v is None else d_v
  return tl.LSHSelfAttention(
      n_heads=n_heads, d_qk=d_qk, d_v=d_v, causal=causal,
      chunk_len=chunk_len, n_hashes=n_hashes, n_buckets=n_buckets,
      attention_dropout=dropout, output_dropout=0.0, mode=mode)


KINDS = {
    'favor': FavorAttention,
    'dot_product': DotProductAttention,
    'local': LocalAttention,
    'lsh': LSHAttention,
    'none': IdentityAttention,
}
