"""Linear attention over feature maps: bidirectional, causal, decode step.

With features phi (see `favor_trax.ops.features`), attention becomes

    out_i = sum_j phi(q_i) . phi(k_j) v_j / sum_j phi(q_i) . phi(k_j)
          = phi(q_i) . S / phi(q_i) . z,   S = sum_j phi(k_j) v_j^T,
                                           z = sum_j phi(k_j),

which costs O(L m d) instead of O(L^2 d) (FAVOR+, Choromanski et al.,
"Rethinking Attention with Performers", ICLR 2021). In causal attention
the sums run over j <= i.

Key scales. Feature maps return phi(k_j) = values_j * exp(c_j) with a per-key
log scale c_j. Each query i uses one reference maximum M_i >= c_j over all
keys it attends to and weighs key j by values_j * exp(c_j - M_i) <= values_j.
The factor exp(M_i) is common to the numerator and the denominator, so it
cancels. In the causal case M_i = max_{j <= i} c_j is a running maximum, so no
output depends on a later key, even on its scale. All log scales are under
stop_gradient because they cancel exactly.

Query scales cancel the same way and are not taken as arguments.

Key masks. A key with key_mask False adds to neither S nor z, in bidirectional
and causal attention and in the decode step. Its features, value and log
scale may contain any value, inf and nan included, and its gradients are 0.

Denominators. For non-negative features the denominator phi(q_i) . z is
positive. Trigonometric features can be negative, so the denominator can be 0
or negative, and only magnitudes below sqrt(tiny) are moved away from 0 (see
`_safe_denominator`).

All sums run in float32 (float64 for float64 input), and outputs have the
dtype of v.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp


DEFAULT_CHUNK_SIZE = 128


class CausalState(NamedTuple):
  """Sums over the keys seen so far, stored relative to their maximum scale.

  Attributes:
    kv_sum: S = sum_j exp(c_j - max_log_scale) values(k_j) v_j^T, shape
      [batch, heads, n_features, depth_v].
    k_sum: z = sum_j exp(c_j - max_log_scale) values(k_j), shape
      [batch, heads, n_features].
    max_log_scale: max_j c_j, shape [batch, heads]. Before the first key it is
      the dtype's minimum finite value in place of -inf, so that the
      difference of two maxima is never the nan of -inf - (-inf).
  """
  kv_sum: jax.Array
  k_sum: jax.Array
  max_log_scale: jax.Array


def _compute_dtype(*arrays):
  dtype = jnp.float32
  for array in arrays:
    dtype = jnp.promote_types(dtype, array.dtype)
  return dtype


def _safe_denominator(denominator):
  """Move denominators of magnitude below sqrt(tiny) to +-sqrt(tiny).

  For non-negative features |numerator| <= denominator * max|v|, so the
  quotient stays bounded. sqrt(tiny) keeps denominator^2 a normal number, so
  the gradient numerator / denominator^2 stays finite.

  NOTE: for features that can be negative, such as trigonometric ones, the
  quotient is not bounded by max|v|. A denominator near 0 but above
  sqrt(tiny) gives large outputs and gradients.
  """
  floor = jnp.sqrt(jnp.finfo(denominator.dtype).tiny).astype(
      denominator.dtype)
  sign = jnp.where(denominator < 0, -1, 1).astype(denominator.dtype)
  return jnp.where(jnp.abs(denominator) < floor, sign * floor, denominator)


def _validate_features(q_features, k_features, v, key_log_scale):
  if q_features.ndim != 4 or k_features.ndim != 4 or v.ndim != 4:
    raise ValueError(
        f'q_features, k_features and v must have shape [batch, length, '
        f'heads, size], got shapes {q_features.shape}, {k_features.shape} '
        f'and {v.shape}.')
  if (q_features.shape[0] != k_features.shape[0] or
      q_features.shape[2:] != k_features.shape[2:]):
    raise ValueError(
        f'k_features must have the batch, heads and n_features of '
        f'q_features {q_features.shape}, got shape {k_features.shape}.')
  if v.shape[:3] != k_features.shape[:3]:
    raise ValueError(
        f'v must have the batch, length and heads of k_features '
        f'{k_features.shape}, got shape {v.shape}.')
  if key_log_scale is not None and key_log_scale.shape != k_features.shape[:3]:
    raise ValueError(
        f'key_log_scale must have shape [batch, length, heads] = '
        f'{k_features.shape[:3]}, got shape {key_log_scale.shape}.')


def _key_log_scale_or_zeros(k_features, key_log_scale, dtype):
  if key_log_scale is None:
    return jnp.zeros(k_features.shape[:3], dtype)
  return jax.lax.stop_gradient(key_log_scale.astype(dtype))


def _validate_key_mask(key_mask, expected_shape, name):
  if key_mask is not None and key_mask.shape != expected_shape:
    raise ValueError(
        f'key_mask must have shape {name} = {expected_shape}, got shape '
        f'{key_mask.shape}.')


def _validate_state(state, batch, n_heads, n_features, depth_v):
  """Raise ValueError unless the sums of `state` fit the features and values."""
  expected = (
      ('kv_sum', (batch, n_heads, n_features, depth_v)),
      ('k_sum', (batch, n_heads, n_features)),
      ('max_log_scale', (batch, n_heads)),
  )
  for name, shape in expected:
    found = getattr(state, name).shape
    if found != shape:
      raise ValueError(
          f'state.{name} must have shape {shape} to match the features and '
          f'values, got shape {found}.')


def _validate_chunk_size(chunk_size):
  """Raise ValueError unless chunk_size is a positive int."""
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f'chunk_size must be a positive int, got {chunk_size!r}.')


def _remove_masked_keys(key_mask, k_features, v, log_scale):
  """Zero the features and values of masked keys and set their scale to -inf.

  A key with log scale -inf gets weight exp(-inf - M) = 0 against any finite
  reference maximum M, and the running maximum never falls below the finite
  minimum of `init_causal_state`. Zeroing the features and values keeps inf
  and nan of masked keys out of the sums and gives them zero gradients.

  Args:
    key_mask: bool array that broadcasts against log_scale, or None.
    k_features: key features of shape log_scale.shape + [m].
    v: values of shape log_scale.shape + [depth_v].
    log_scale: key log scales.

  Returns:
    (k_features, v, log_scale), unchanged when key_mask is None.
  """
  if key_mask is None:
    return k_features, v, log_scale
  valid = key_mask.astype(bool)
  k_features = jnp.where(valid[..., None], k_features, 0)
  v = jnp.where(valid[..., None], v, 0)
  log_scale = jnp.where(valid, log_scale, -jnp.inf)
  return k_features, v, log_scale


def bidirectional_linear_attention(q_features, k_features, v, key_mask=None,
                                   key_log_scale=None):
  """Compute non-causal linear attention over all unmasked keys.

  out_i = phi(q_i) . S / phi(q_i) . z with S = sum_j phi(k_j) v_j^T and
  z = sum_j phi(k_j) over unmasked keys. Key j enters as
  k_features_j * exp(key_log_scale_j - M), with M the maximum log scale over
  the unmasked keys of the example and head. A query with no unmasked key,
  or with all weights 0, gets output 0.

  Args:
    q_features: query features of shape [batch, query_length, heads, m].
    k_features: key features of shape [batch, key_length, heads, m].
    v: values of shape [batch, key_length, heads, depth_v].
    key_mask: optional bool array of shape [batch, key_length]. False marks
      a padded key, which adds to neither S nor z.
    key_log_scale: optional per-key log scale of shape
      [batch, key_length, heads], the `log_scale` of `Features`. None means 0.

  Returns:
    Array of shape [batch, query_length, heads, depth_v] in the dtype of v.
  """
  _validate_features(q_features, k_features, v, key_log_scale)
  batch, key_length = k_features.shape[:2]
  if key_mask is None:
    key_mask = jnp.ones((batch, key_length), dtype=bool)
  elif key_mask.shape != (batch, key_length):
    raise ValueError(
        f'key_mask must have shape [batch, key_length] = '
        f'{(batch, key_length)}, got shape {key_mask.shape}.')
  return _bidirectional_linear_attention(q_features, k_features, v, key_mask,
                                         key_log_scale)


@jax.jit
def _bidirectional_linear_attention(q_features, k_features, v, key_mask,
                                    key_log_scale):
  """Compute `bidirectional_linear_attention` on validated inputs."""
  dtype = _compute_dtype(q_features, k_features, v)
  q = q_features.astype(dtype)
  valid = key_mask.astype(bool)[:, :, None]
  log_scale = _key_log_scale_or_zeros(k_features, key_log_scale, dtype)

  # Key weights are exp(c_j - M) <= 1 for M = max of c over the valid keys.
  # Masked keys get weight 0, and the where keeps their inf or nan out of the
  # sums.
  log_scale = jnp.where(valid, log_scale, -jnp.inf)
  max_log_scale = jnp.max(log_scale, axis=1, keepdims=True, initial=-jnp.inf)
  max_log_scale = jnp.where(jnp.isfinite(max_log_scale), max_log_scale, 0)
  key_weights = jnp.exp(log_scale - max_log_scale)
  k = jnp.where(valid[..., None],
                k_features.astype(dtype) * key_weights[..., None], 0)
  values = jnp.where(valid[..., None], v.astype(dtype), 0)

  kv_sum = jnp.einsum('blhm,blhd->bhmd', k, values)
  k_sum = jnp.sum(k, axis=1)

  numerator = jnp.einsum('blhm,bhmd->blhd', q, kv_sum)
  denominator = jnp.einsum('blhm,bhm->blh', q, k_sum)
  out = numerator / _safe_denominator(denominator)[..., None]
  return out.astype(v.dtype)


def init_causal_state(batch_size, n_heads, n_features, depth_v,
                      dtype=jnp.float32):
  """Return the `CausalState` of a sequence with no keys yet.

  Args:
    batch_size: batch size.
    n_heads: number of heads.
    n_features: feature size m.
    depth_v: value depth per head.
    dtype: dtype of the sums, float32 unless the inputs are float64.

  Returns:
    `CausalState` with zero sums of shapes [batch, heads, m, depth_v] and
    [batch, heads, m].
  """
  return CausalState(
      kv_sum=jnp.zeros((batch_size, n_heads, n_features, depth_v), dtype),
      k_sum=jnp.zeros((batch_size, n_heads, n_features), dtype),
      max_log_scale=jnp.full((batch_size, n_heads), jnp.finfo(dtype).min,
                             dtype))


def _causal_chunk(state, chunk):
  """Attend one chunk of C positions, then add its keys to the state.

  Args:
    state: `CausalState` over all earlier chunks.
    chunk: (q, k, v, c) of shapes [B, C, H, m], [B, C, H, m], [B, C, H, dv]
      and [B, C, H], where c is the key log scale.

  Returns:
    (new state, outputs of shape [B, C, H, dv]).
  """
  state, out = _causal_chunk_heads_first(
      state, tuple(jnp.swapaxes(array, 1, 2) for array in chunk))
  return state, jnp.swapaxes(out, 1, 2)


def _causal_chunk_heads_first(state, chunk):
  """Attend one chunk of C positions laid out heads first.

  The head axis comes before the position axis, so that every product below
  is a batched matrix product over (batch, head) without transposes.

  Args:
    state: `CausalState` over all earlier chunks.
    chunk: (q, k, v, c) of shapes [B, H, C, m], [B, H, C, m], [B, H, C, dv]
      and [B, H, C], where c is the key log scale.

  Returns:
    (new state, outputs of shape [B, H, C, dv]).
  """
  q, k, v, c = chunk
  chunk_size = q.shape[2]
  previous_max = state.max_log_scale[:, :, None]

  # m_i = max(M_prev, max_{j <= i in chunk} c_j), the reference of query i.
  running_max = jnp.maximum(previous_max, jax.lax.cummax(c, axis=2))

  # Earlier chunks: S and z are stored relative to M_prev, so relative to m_i
  # they carry the factor exp(M_prev - m_i) <= 1.
  carry_decay = jnp.exp(previous_max - running_max)
  numerator = jnp.einsum('bhcm,bhmd->bhcd', q, state.kv_sum)
  numerator = numerator * carry_decay[..., None]
  denominator = jnp.einsum('bhcm,bhm->bhc', q, state.k_sum) * carry_decay

  # This chunk: weight_ij = phi(q_i) . values(k_j) exp(c_j - m_i) for j <= i.
  # The where runs before exp so that keys j > i never produce inf.
  is_causal = jnp.tril(jnp.ones((chunk_size, chunk_size), dtype=bool))
  key_exponent = c[:, :, None, :] - running_max[:, :, :, None]
  key_factor = jnp.exp(jnp.where(is_causal, key_exponent, -jnp.inf))
  scores = jnp.einsum('bhim,bhjm->bhij', q, k)
  weights = jnp.where(is_causal, scores * key_factor, 0)
  numerator = numerator + jnp.einsum('bhij,bhjd->bhid', weights, v)
  denominator = denominator + jnp.sum(weights, axis=-1)
  out = numerator / _safe_denominator(denominator)[..., None]

  # New state relative to M_new = m at the last position of the chunk:
  # S_new = S exp(M_prev - M_new) + sum_j exp(c_j - M_new) values(k_j) v_j^T.
  new_max = running_max[:, :, -1]
  state_decay = jnp.exp(state.max_log_scale - new_max)
  weighted_k = k * jnp.exp(c - new_max[:, :, None])[..., None]
  kv_sum = (state.kv_sum * state_decay[..., None, None] +
            jnp.einsum('bhcm,bhcd->bhmd', weighted_k, v))
  k_sum = state.k_sum * state_decay[..., None] + jnp.sum(weighted_k, axis=2)
  return CausalState(kv_sum, k_sum, new_max), out


def _validate_causal_features(q_features, k_features, v, key_log_scale,
                              chunk_size, key_mask):
  """Raise ValueError unless the arguments fit one causal pass."""
  _validate_features(q_features, k_features, v, key_log_scale)
  if q_features.shape[1] != k_features.shape[1]:
    raise ValueError(
        f'causal attention needs equal query and key lengths, got '
        f'q_features of shape {q_features.shape} and k_features of shape '
        f'{k_features.shape}.')
  _validate_chunk_size(chunk_size)
  _validate_key_mask(key_mask, k_features.shape[:2], '[batch, length]')


def causal_linear_attention(q_features, k_features, v, key_log_scale=None,
                            chunk_size=DEFAULT_CHUNK_SIZE, key_mask=None):
  """Compute causal linear attention: query i attends to keys j <= i.

  out_i = phi(q_i) . S_i / phi(q_i) . z_i with S_i = sum_{j <= i} phi(k_j)
  v_j^T and z_i = sum_{j <= i} phi(k_j). The sequence is cut into chunks of
  `chunk_size` positions. A `jax.lax.scan` over the chunks carries
  `CausalState`, and each chunk adds its own keys with a masked
  [chunk, chunk] score matrix. The scan body is rematerialized in the backward
  pass (`jax.checkpoint`), so the backward pass stores one state per chunk and
  no array of size length * m * depth_v exists. Key scales use the running
  maximum described in the module docstring.

  Args:
    q_features: query features of shape [batch, length, heads, m].
    k_features: key features of shape [batch, length, heads, m].
    v: values of shape [batch, length, heads, depth_v].
    key_log_scale: optional per-key log scale of shape
      [batch, length, heads], the `log_scale` of `Features`. None means 0.
    chunk_size: positive int, the number of positions per scan step. A
      length that is not a multiple is padded at the end, and the padding is
      cut from the output.
    key_mask: optional bool array of shape [batch, length]. False marks a
      padded key, which adds to neither S_i nor z_i. A query with no unmasked
      key at or before it gets output 0.

  Returns:
    Array of shape [batch, length, heads, depth_v] in the dtype of v.
  """
  _validate_causal_features(q_features, k_features, v, key_log_scale,
                            chunk_size, key_mask)

  length = k_features.shape[1]
  if length == 0:
    return jnp.zeros(v.shape, v.dtype)

  batch, _, n_heads, n_features = k_features.shape
  dtype = _compute_dtype(q_features, k_features, v)
  initial_state = init_causal_state(batch, n_heads, n_features, v.shape[-1],
                                    dtype)
  _, out = _causal_scan(initial_state, q_features, k_features, v,
                        key_log_scale, key_mask, min(chunk_size, length))
  return out


def causal_linear_attention_with_state(state, q_features, k_features, v,
                                       key_log_scale=None,
                                       chunk_size=DEFAULT_CHUNK_SIZE,
                                       key_mask=None):
  """Continue causal linear attention from `state` over a block of positions.

  Query i of the block attends to every key in `state` and to the keys
  j <= i of the block, so feeding a sequence block by block gives the
  outputs of one `causal_linear_attention` pass over the whole sequence, at
  linear cost. The block runs through the same chunked scan, rematerialized
  in the backward pass, as `causal_linear_attention`.

  Args:
    state: `CausalState` over the earlier positions (`init_causal_state`
      before the first block), with sums of shapes [batch, heads, m,
      depth_v] and [batch, heads, m].
    q_features: query features of shape [batch, length, heads, m].
    k_features: key features of shape [batch, length, heads, m].
    v: values of shape [batch, length, heads, depth_v].
    key_log_scale: optional per-key log scale of shape
      [batch, length, heads]. None means 0.
    chunk_size: positive int, the number of positions per scan step.
    key_mask: optional bool array of shape [batch, length]. False marks a
      padded key, which stays out of the outputs and of the returned state.

  Returns:
    (new `CausalState` over the earlier positions and this block, outputs
    of shape [batch, length, heads, depth_v] in the dtype of v). The sums
    keep the dtype of `state`.
  """
  _validate_causal_features(q_features, k_features, v, key_log_scale,
                            chunk_size, key_mask)
  batch, length, n_heads, n_features = k_features.shape
  _validate_state(state, batch, n_heads, n_features, v.shape[-1])

  if length == 0:
    return state, jnp.zeros(v.shape, v.dtype)
  new_state, out = _causal_scan(state, q_features, k_features, v,
                                key_log_scale, key_mask,
                                min(chunk_size, length))
  state_dtype = state.kv_sum.dtype
  return CausalState(*(array.astype(state_dtype) for array in new_state)), out


@functools.partial(jax.jit, static_argnums=6)
def _causal_scan(initial_state, q_features, k_features, v, key_log_scale,
                 key_mask, chunk_size):
  """Run the chunked scan from `initial_state` on validated inputs.

  Returns:
    (final `CausalState`, outputs [batch, length, heads, depth_v]).
  """
  batch, length, n_heads, _ = k_features.shape
  depth_v = v.shape[-1]
  dtype = _compute_dtype(q_features, k_features, v)
  log_scale = _key_log_scale_or_zeros(k_features, key_log_scale, dtype)
  mask = None if key_mask is None else key_mask[:, :, None]
  k_features, v_masked, log_scale = _remove_masked_keys(
      mask, k_features, v, log_scale)
  n_chunks = -(-length // chunk_size)
  padding = n_chunks * chunk_size - length

  # Padding goes after the last position, so causality keeps it out of every
  # real output. Padded keys have zero features and log scale -inf, so they
  # leave the sums and the running maximum of the final state unchanged.
  def to_chunks(array, pad_value=0.0):
    array = array.astype(dtype)
    pad_widths = [(0, 0), (0, padding)] + [(0, 0)] * (array.ndim - 2)
    array = jnp.pad(array, pad_widths, constant_values=pad_value)
    array = array.reshape((batch, n_chunks, chunk_size) + array.shape[2:])
    return jnp.moveaxis(array, 1, 0)

  chunks = (to_chunks(q_features), to_chunks(k_features), to_chunks(v_masked),
            to_chunks(log_scale, -jnp.inf))
  initial_state = CausalState(
      *(array.astype(dtype) for array in initial_state))
  final_state, out = jax.lax.scan(
      jax.checkpoint(_causal_chunk, prevent_cse=False), initial_state, chunks)

  out = jnp.moveaxis(out, 0, 1).reshape(
      (batch, n_chunks * chunk_size, n_heads, depth_v))
  return final_state, out[:, :length].astype(v.dtype)


def causal_linear_attention_of_chunks(state, inputs, features_fn,
                                      output_fn=None,
                                      chunk_size=DEFAULT_CHUNK_SIZE,
                                      key_mask=None):
  """Compute causal linear attention with all per-position work per chunk.

  A `jax.lax.scan` over chunks of `chunk_size` positions carries
  `CausalState`. Each step maps its chunk of `inputs` to query features,
  key features and values (`features_fn`), attends as
  `causal_linear_attention` does, and maps the outputs on
  (`output_fn`). The step is rematerialized in the backward pass
  (`jax.checkpoint`), so the backward pass stores the inputs, one state
  per chunk and the outputs, but no feature map, no q, k or v, and nothing
  else per position. A layer that puts its dense projections into
  `features_fn` and `output_fn` keeps memory per position at the size of
  its input and output.

  Each position's features may depend on that position only, so that no
  output depends on a later position.

  Args:
    state: `CausalState` over the earlier positions, or None to start a new
      sequence.
    inputs: a pytree of arrays of shape [batch, length, ...].
    features_fn: function (chunk, valid, index) -> (q_features, k_features,
      v), all laid out heads first. chunk is `inputs` cut to
      [batch, C, ...], valid the [batch, C] bool mask of keys to attend to
      (False at masked keys and at the padding after the last position),
      index the chunk number. It returns query feature values
      [batch, heads, C, m], key `features.Features` (values
      [batch, heads, C, m], log_scale [batch, heads, C]) and values
      [batch, heads, C, depth_v]. Masked keys may map to any features, inf
      and nan included: they are zeroed here. Inputs that can hold inf or
      nan at masked keys should be zeroed in features_fn with `valid`, so
      that no nan reaches a gradient.
    output_fn: optional function (out, index) -> pytree of arrays
      [batch, C, ...], applied to the attention output [batch, heads, C,
      depth_v] (in the dtype of v) of each chunk. None returns the outputs
      as [batch, C, heads, depth_v].
    chunk_size: positive int, the number of positions per scan step. A
      length that is not a multiple is padded with zeros at the end.
    key_mask: optional bool array of shape [batch, length]. False marks a
      padded key, which stays out of the outputs and of the returned state.

  Returns:
    (new `CausalState` in the dtype of `state`, or float32 or float64 when
    state is None; output pytree of arrays [batch, length, ...]).
  """
  leaves = jax.tree_util.tree_leaves(inputs)
  if not leaves or any(leaf.ndim < 2 for leaf in leaves):
    raise ValueError(
        'inputs must be a pytree of arrays of shape [batch, length, ...], '
        f'got shapes {[leaf.shape for leaf in leaves]}.')
  batch, length = leaves[0].shape[:2]
  if any(leaf.shape[:2] != (batch, length) for leaf in leaves):
    raise ValueError(
        f'every input must have shape [batch, length, ...] = '
        f'[{batch}, {length}, ...], got shapes '
        f'{[leaf.shape for leaf in leaves]}.')
  _validate_chunk_size(chunk_size)
  _validate_key_mask(key_mask, (batch, length), '[batch, length]')
  if key_mask is None:
    key_mask = jnp.ones((batch, length), dtype=bool)
  chunk_size = max(1, min(chunk_size, length))
  n_chunks = -(-length // chunk_size)
  padding = n_chunks * chunk_size - length

  # Padding goes after the last position, so causality keeps it out of every
  # real output, and as masked keys it leaves the final state unchanged.
  def to_chunks(array):
    pad_widths = [(0, 0), (0, padding)] + [(0, 0)] * (array.ndim - 2)
    array = jnp.pad(array, pad_widths)
    array = array.reshape((batch, n_chunks, chunk_size) + array.shape[2:])
    return jnp.moveaxis(array, 1, 0)

  def first_chunk(array):
    return jnp.zeros((batch, chunk_size) + array.shape[2:], array.dtype)

  q_shape, k_shape, v_shape = jax.eval_shape(
      features_fn, jax.tree_util.tree_map(first_chunk, inputs),
      jnp.ones((batch, chunk_size), bool), jnp.zeros((), jnp.int32))
  _, n_heads, _, n_features = k_shape.values.shape
  depth_v = v_shape.shape[-1]
  dtype = _compute_dtype(q_shape, k_shape.values, v_shape)
  if state is None:
    state = init_causal_state(batch, n_heads, n_features, depth_v, dtype)
  _validate_state(state, batch, n_heads, n_features, depth_v)
  state_dtype = state.kv_sum.dtype

  def attend_chunk(carry, chunk):
    chunk_inputs, valid, index = chunk
    q_values, k_features, v = features_fn(chunk_inputs, valid, index)
    log_scale = jax.lax.stop_gradient(jnp.broadcast_to(
        k_features.log_scale, k_features.values.shape[:3]).astype(dtype))
    k_values, v_kept, log_scale = _remove_masked_keys(
        valid[:, None, :], k_features.values.astype(dtype), v.astype(dtype),
        log_scale)
    carry, out = _causal_chunk_heads_first(
        carry, (q_values.astype(dtype), k_values, v_kept, log_scale))
    out = out.astype(v.dtype)
    if output_fn is None:
      return carry, jnp.swapaxes(out, 1, 2)
    return carry, output_fn(out, index)

  if length == 0:
    outputs = jax.eval_shape(
        lambda: attend_chunk(state, (jax.tree_util.tree_map(
            first_chunk, inputs), jnp.ones((batch, 1), bool), 0))[1])
    return state, jax.tree_util.tree_map(
        lambda shape: jnp.zeros((batch, 0) + shape.shape[2:], shape.dtype),
        outputs)

  chunks = (jax.tree_util.tree_map(to_chunks, inputs),
            to_chunks(key_mask.astype(bool)),
            jnp.arange(n_chunks, dtype=jnp.int32))
  initial_state = CausalState(*(array.astype(dtype) for array in state))
  final_state, outputs = jax.lax.scan(
      jax.checkpoint(attend_chunk, prevent_cse=False), initial_state, chunks)

  def from_chunks(array):
    array = jnp.moveaxis(array, 0, 1)
    array = array.reshape((batch, n_chunks * chunk_size) + array.shape[3:])
    return array[:, :length]

  final_state = CausalState(
      *(array.astype(state_dtype) for array in final_state))
  return final_state, jax.tree_util.tree_map(from_chunks, outputs)


def causal_linear_attention_of_inputs(state, q, k, v, feature_fn,
                                      feature_args=(),
                                      chunk_size=DEFAULT_CHUNK_SIZE,
                                      key_mask=None):
  """Compute causal linear attention, mapping q and k to features per chunk.

  Gives the outputs of `causal_linear_attention_with_state` on the features
  phi(q) = feature_fn(q, *feature_args) and phi(k) = feature_fn(k,
  *feature_args), but no feature array longer than one chunk exists: each
  scan step of `causal_linear_attention_of_chunks` maps its chunk of q and
  k to features, and the backward pass recomputes them. Training memory for
  the attention then grows with length * (depth_qk + depth_v) rather than
  with length * m, which matters when m is several times the head depth
  (FAVOR+ with m = 256 and heads of depth 64).

  The feature map must act on each position alone: its log scale at a
  position may depend on that position only. All feature maps of
  `favor_trax.ops.features` do, and FAVOR++ does when its rho is a fixed
  value passed in `feature_args`.

  Args:
    state: `CausalState` over the earlier positions, or None to start a new
      sequence.
    q: queries of shape [batch, length, heads, depth_qk], already scaled as
      the feature map expects.
    k: keys of the shape of q.
    v: values of shape [batch, length, heads, depth_v].
    feature_fn: function (x, *feature_args) -> `features.Features` with
      values [..., m] and log_scale [...] for x [..., depth_qk].
    feature_args: tuple of arrays passed to feature_fn, such as the random
      projection.
    chunk_size: positive int, the number of positions per scan step.
    key_mask: optional bool array of shape [batch, length]. False marks a
      padded key, which stays out of the outputs and of the returned state.
      Its key enters feature_fn as zeros, so inf or nan in a padded key
      reaches neither the outputs nor the gradients.

  Returns:
    (new `CausalState`, outputs of shape [batch, length, heads, depth_v] in
    the dtype of v).
  """
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(
        f'q, k and v must have shape [batch, length, heads, depth], got '
        f'shapes {q.shape}, {k.shape} and {v.shape}.')
  if q.shape != k.shape:
    raise ValueError(
        f'causal attention needs q and k of one shape, got {q.shape} and '
        f'{k.shape}.')
  if v.shape[:3] != k.shape[:3]:
    raise ValueError(
        f'v must have the batch, length and heads of k {k.shape}, got shape '
        f'{v.shape}.')
  feature_args = tuple(feature_args)

  def features_fn(chunk, valid, index):
    del index
    q_chunk, k_chunk, v_chunk = (jnp.swapaxes(array, 1, 2) for array in chunk)
    k_chunk = jnp.where(valid[:, None, :, None], k_chunk, 0)
    v_chunk = jnp.where(valid[:, None, :, None], v_chunk, 0)
    return (feature_fn(q_chunk, *feature_args).values,
            feature_fn(k_chunk, *feature_args), v_chunk)

  return causal_linear_attention_of_chunks(
      state, (q, k, v), features_fn, chunk_size=chunk_size,
      key_mask=key_mask)


def causal_linear_attention_step(state, q_features, k_features, v,
                                 key_log_scale=None, key_mask=None):
  """Add one position's key to `state` and attend its query, for decoding.

  Running this step over positions 0, 1, ... gives the outputs of
  `causal_linear_attention`.

  Args:
    state: `CausalState` over the earlier positions (`init_causal_state` for
      the first).
    q_features: query features of shape [batch, heads, m].
    k_features: key features of shape [batch, heads, m].
    v: values of shape [batch, heads, depth_v].
    key_log_scale: optional log scale of the key, shape [batch, heads].
      None means 0.
    key_mask: optional bool array of shape [batch]. False marks a padded
      key: the state keeps its sums, and the query attends to the earlier
      keys only.

  Returns:
    (new `CausalState`, output of shape [batch, heads, depth_v] in the dtype
    of v).
  """
  expected = state.k_sum.shape
  if q_features.shape != expected or k_features.shape != expected:
    raise ValueError(
        f'q_features and k_features must have shape [batch, heads, m] = '
        f'{expected} to match the state, got shapes {q_features.shape} and '
        f'{k_features.shape}.')
  if v.shape != expected[:2] + state.kv_sum.shape[-1:]:
    raise ValueError(
        f'v must have shape [batch, heads, depth_v] = '
        f'{expected[:2] + state.kv_sum.shape[-1:]}, got shape {v.shape}.')
  if key_log_scale is not None and key_log_scale.shape != expected[:2]:
    raise ValueError(
        f'key_log_scale must have shape [batch, heads] = {expected[:2]}, got '
        f'shape {key_log_scale.shape}.')
  _validate_key_mask(key_mask, expected[:1], '[batch]')

  v_dtype = v.dtype
  dtype = state.kv_sum.dtype
  q = q_features.astype(dtype)
  if key_log_scale is None:
    log_scale = jnp.zeros(expected[:2], dtype)
  else:
    log_scale = jax.lax.stop_gradient(key_log_scale.astype(dtype))
  mask = None if key_mask is None else key_mask[:, None]
  k, v, log_scale = _remove_masked_keys(
      mask, k_features.astype(dtype), v.astype(dtype), log_scale)

  # Rebase the sums from M_prev to M_new = max(M_prev, c), then add
  # exp(c - M_new) values(k) v^T. Both factors are <= 1.
  new_max = jnp.maximum(state.max_log_scale, log_scale)
  state_decay = jnp.exp(state.max_log_scale - new_max)
  weighted_k = k * jnp.exp(log_scale - new_max)[..., None]
  kv_sum = (state.kv_sum * state_decay[..., None, None] +
            weighted_k[..., None] * v[..., None, :])
  k_sum = state.k_sum * state_decay[..., None] + weighted_k

  numerator = jnp.einsum('bhm,bhmd->bhd', q, kv_sum)
  denominator = jnp.einsum('bhm,bhm->bh', q, k_sum)
  out = numerator / _safe_denominator(denominator)[..., None]
  return CausalState(kv_sum, k_sum, new_max), out.astype(v_dtype)
