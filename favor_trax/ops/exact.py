"""Exact softmax attention, the O(L^2) reference for random-feature attention.

out_i = sum_j softmax_j(q_i . k_j / sqrt(d)) v_j ("Attention Is All You Need",
Vaswani et al., 2017). FAVOR+ estimates exactly this quantity, so tests and
baselines compare against it.
"""

import jax.numpy as jnp


def validate_shapes(q, k, v, causal, key_mask=None):
  """Raise ValueError unless q, k, v (and key_mask) have attention shapes."""
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(
        f'q, k and v must have shape [batch, length, heads, depth], got '
        f'shapes {q.shape}, {k.shape} and {v.shape}.')
  if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(
        f'k must have the batch, heads and depth of q {q.shape}, got shape '
        f'{k.shape}.')
  if v.shape[:3] != k.shape[:3]:
    raise ValueError(
        f'v must have the batch, length and heads of k {k.shape}, got shape '
        f'{v.shape}.')
  if causal and q.shape[1] != k.shape[1]:
    raise ValueError(
        f'causal attention needs equal query and key lengths, got '
        f'{q.shape[1]} and {k.shape[1]}.')
  if key_mask is not None and key_mask.shape != k.shape[:2]:
    raise ValueError(
        f'key_mask must have shape [batch, key_length] = {k.shape[:2]}, got '
        f'shape {key_mask.shape}.')


def softmax_attention(q, k, v, causal=False, key_mask=None):
  """Compute exact scaled dot-product attention.

  Logits and the softmax are computed in float32 (float64 for float64 input).
  A query with no allowed key gets output 0.

  Args:
    q: queries of shape [batch, query_length, heads, depth].
    k: keys of shape [batch, key_length, heads, depth].
    v: values of shape [batch, key_length, heads, depth_v].
    causal: if True, query i attends only to keys j <= i. Needs
      query_length == key_length.
    key_mask: optional bool array of shape [batch, key_length]. False marks
      a padded key that no query attends to.

  Returns:
    Array of shape [batch, query_length, heads, depth_v] in the dtype of v.
  """
  validate_shapes(q, k, v, causal, key_mask)
  dtype = jnp.promote_types(jnp.promote_types(q.dtype, v.dtype), jnp.float32)
  depth = q.shape[-1]
  logits = jnp.einsum(
      'bqhd,bkhd->bhqk', q.astype(dtype), k.astype(dtype)) / jnp.sqrt(
          jnp.asarray(depth, dtype))

  allowed = jnp.ones(logits.shape, dtype=bool)
  if causal:
    length = q.shape[1]
    allowed = allowed & jnp.tril(jnp.ones((length, length), dtype=bool))
  if key_mask is not None:
    allowed = allowed & key_mask[:, None, None, :].astype(bool)

  # Subtracting the row maximum leaves softmax unchanged and keeps exp <= 1.
  logits = jnp.where(allowed, logits, -jnp.inf)
  row_max = jnp.max(logits, axis=-1, keepdims=True, initial=-jnp.inf)
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0)
  weights = jnp.where(allowed, jnp.exp(logits - row_max), 0)
  normalizer = jnp.sum(weights, axis=-1, keepdims=True)
  weights = weights / jnp.where(normalizer == 0, 1, normalizer)

  out = jnp.einsum('bhqk,bkhd->bqhd', weights, v.astype(dtype))
  return out.astype(v.dtype)
