"""Exact softmax attention computed over query chunks, and blocked local attention.

`query_chunked_softmax_attention` gives the same output as
`exact.softmax_attention` but keeps the logits of `chunk_size` queries at a
time, [batch, heads, chunk_size, key_length], under `jax.checkpoint`, so
neither forward nor backward stores the full L x L matrix.

`local_attention` lets each query attend to the keys of its own block of
`block_size` positions and of the block before it. Causal attention keeps
only the keys at or before the query. This is the local attention of Parmar
et al., "Image Transformer" (ICML 2018). Time and memory grow as
L * block_size.
"""

import jax
import jax.numpy as jnp

from favor_trax.ops import exact


def _compute_dtype(q, v):
  return jnp.promote_types(jnp.promote_types(q.dtype, v.dtype), jnp.float32)


def _masked_softmax_average(logits, allowed, v):
  """Return softmax(logits) v over allowed keys; rows with none give 0.

  logits and allowed: [..., queries, keys]; v: [..., keys, depth_v].
  """
  logits = jnp.where(allowed, logits, -jnp.inf)
  row_max = jnp.max(logits, axis=-1, keepdims=True, initial=-jnp.inf)
  row_max = jax.lax.stop_gradient(
      jnp.where(jnp.isfinite(row_max), row_max, 0))
  weights = jnp.where(allowed, jnp.exp(logits - row_max), 0)
  normalizer = jnp.sum(weights, axis=-1, keepdims=True)
  weights = weights / jnp.where(normalizer == 0, 1, normalizer)
  return jnp.einsum('...qk,...kd->...qd', weights, v)


def query_chunked_softmax_attention(q, k, v, causal=False, chunk_size=256,
                                    key_mask=None):
  """Compute exact softmax attention, `chunk_size` queries at a time.

  Args:
    q: queries [batch, query_length, heads, depth].
    k: keys [batch, key_length, heads, depth].
    v: values [batch, key_length, heads, depth_v].
    causal: if True, query i attends only to keys j <= i.
    chunk_size: queries per chunk; any query_length works.
    key_mask: optional bool [batch, key_length]; False marks padding.

  Returns:
    [batch, query_length, heads, depth_v] in the dtype of v.
  """
  exact.validate_shapes(q, k, v, causal, key_mask)
  if chunk_size < 1:
    raise ValueError(f'chunk_size must be positive, got {chunk_size}.')
  batch, length, heads, depth = q.shape
  if length == 0:
    return jnp.zeros((batch, 0, heads, v.shape[-1]), v.dtype)
  dtype = _compute_dtype(q, v)
  key_length = k.shape[1]
  k_heads = jnp.moveaxis(k.astype(dtype), 2, 1)  # [batch, heads, keys, d]
  v_heads = jnp.moveaxis(v.astype(dtype), 2, 1)
  scale = 1.0 / jnp.sqrt(jnp.asarray(depth, dtype))
  key_allowed = jnp.ones((batch, key_length), bool)
  if key_mask is not None:
    key_allowed = key_mask.astype(bool)

  chunk_size = min(chunk_size, length)
  n_chunks = -(-length // chunk_size)
  padded = jnp.pad(q.astype(dtype),
                   ((0, 0), (0, n_chunks * chunk_size - length), (0, 0),
                    (0, 0)))
  chunks = padded.reshape(batch, n_chunks, chunk_size, heads, depth)
  chunks = jnp.moveaxis(chunks, 1, 0)
  key_positions = jnp.arange(key_length)

  @jax.checkpoint
  def attend(chunk_and_start):
    q_chunk, start = chunk_and_start
    logits = jnp.einsum('bqhd,bhkd->bhqk', q_chunk, k_heads) * scale
    allowed = key_allowed[:, None, None, :]
    if causal:
      query_positions = start + jnp.arange(chunk_size)
      allowed = allowed & (key_positions[None, :] <=
                           query_positions[:, None])[None, None]
    out = _masked_softmax_average(logits, allowed, v_heads)
    return jnp.moveaxis(out, 1, 2)  # [batch, chunk, heads, depth_v]

  starts = jnp.arange(n_chunks) * chunk_size
  outputs = jax.lax.map(attend, (chunks, starts))
  outputs = jnp.moveaxis(outputs, 0, 1).reshape(batch, -1, heads,
                                                v.shape[-1])
  return outputs[:, :length].astype(v.dtype)


def local_attention(q, k, v, block_size=128, causal=True):
  """Compute softmax attention within blocks and the block before each.

  Query i in block b = i // block_size attends to keys of blocks b - 1 and
  b; with causal=False also to block b + 1. Causal attention further drops
  keys after i.

  Args:
    q, k: [batch, length, heads, depth], of equal lengths.
    v: [batch, length, heads, depth_v].
    block_size: positions per block.
    causal: see above.

  Returns:
    [batch, length, heads, depth_v] in the dtype of v.
  """
  exact.validate_shapes(q, k, v, causal=True)
  if block_size < 1:
    raise ValueError(f'block_size must be positive, got {block_size}.')
  batch, length, heads, depth = q.shape
  if length == 0:
    return jnp.zeros((batch, 0, heads, v.shape[-1]), v.dtype)
  dtype = _compute_dtype(q, v)
  n_blocks = -(-length // block_size)
  padded_length = n_blocks * block_size

  def to_blocks(x):
    x = jnp.pad(x.astype(dtype),
                ((0, 0), (0, padded_length - length), (0, 0), (0, 0)))
    x = x.reshape(batch, n_blocks, block_size, heads, x.shape[-1])
    return jnp.moveaxis(x, 3, 2)  # [batch, blocks, heads, block, depth]

  def with_neighbors(x):
    """Concatenate each block with the previous (and next) block's keys."""
    previous = jnp.pad(x, ((0, 0), (1, 0), (0, 0), (0, 0), (0, 0)))[:, :-1]
    parts = [previous, x]
    if not causal:
      following = jnp.pad(x, ((0, 0), (0, 1), (0, 0), (0, 0), (0, 0)))[:, 1:]
      parts.append(following)
    return jnp.concatenate(parts, axis=3)

  q_blocks = to_blocks(q)
  k_context = with_neighbors(to_blocks(k))
  v_context = with_neighbors(to_blocks(v))
  logits = jnp.einsum('bnhqd,bnhkd->bnhqk', q_blocks, k_context)
  logits = logits / jnp.sqrt(jnp.asarray(depth, dtype))

  # Absolute positions of the queries and of the keys in each context.
  block_starts = jnp.arange(n_blocks) * block_size
  query_positions = block_starts[:, None] + jnp.arange(block_size)[None]
  n_context_blocks = k_context.shape[3] // block_size
  key_offsets = jnp.arange(n_context_blocks * block_size) - block_size
  key_positions = block_starts[:, None] + key_offsets[None]
  allowed = ((key_positions >= 0) & (key_positions < length))[:, None, :]
  if causal:
    allowed = allowed & (key_positions[:, None, :] <=
                         query_positions[:, :, None])
  allowed = allowed[None, :, None]  # [1, blocks, 1, queries, keys]

  out = _masked_softmax_average(logits, allowed, v_context)
  out = jnp.moveaxis(out, 2, 3).reshape(batch, padded_length, heads, -1)
  return out[:, :length].astype(v.dtype)
