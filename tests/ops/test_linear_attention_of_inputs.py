"""Tests for causal attention that maps q and k to features inside the scan.

References: the masked quadratic formula in float64 on features computed in
float64, and autodiff of a float32 quadratic formula for gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from favor_trax.ops import features
from favor_trax.ops import linear_attention
from favor_trax.ops import projections


def _favor_plus_plus_fixed(x, projection):
  return features.favor_plus_plus_features(x, projection, 0.4)


FEATURE_MAPS = {
    'positive': features.positive_softmax_features,
    'hyperbolic': features.hyperbolic_softmax_features,
    'favor_plus_plus': _favor_plus_plus_fixed,
    'relu': features.relu_features,
}


def _problem(seed, batch, length, heads=2, depth=8, depth_v=5, n_rows=16,
             dtype=np.float32):
  rng = np.random.default_rng(seed)
  q = (0.5 * rng.normal(size=(batch, length, heads, depth))).astype(dtype)
  k = (0.5 * rng.normal(size=(batch, length, heads, depth))).astype(dtype)
  v = rng.normal(size=(batch, length, heads, depth_v)).astype(dtype)
  projection = projections.orthogonal_gaussian_matrix(
      jax.random.PRNGKey(seed), n_rows, depth).astype(dtype)
  return q, k, v, projection


def _quadratic_reference(feature_fn, q, k, v, projection, key_mask=None):
  """Row-normalized causal (phi(Q) phi(K)^T) V, features and sums in float64."""
  with jax.enable_x64(True):
    projection64 = jnp.asarray(np.asarray(projection, np.float64))
    q_features = feature_fn(jnp.asarray(np.asarray(q, np.float64)),
                            projection64)
    k_features = feature_fn(jnp.asarray(np.asarray(k, np.float64)),
                            projection64)
    q_phi = np.asarray(q_features.values)
    k_phi = np.asarray(k_features.values) * np.exp(
        np.asarray(k_features.log_scale))[..., None]
  scores = np.einsum('bqhm,bkhm->bhqk', q_phi, k_phi)
  scores = scores * np.tril(np.ones(scores.shape[-2:]))
  if key_mask is not None:
    scores = scores * np.asarray(key_mask)[:, None, None, :]
  numerator = np.einsum('bhqk,bkhd->bqhd', scores, np.asarray(v, np.float64))
  denominator = np.swapaxes(scores.sum(-1), 1, 2)[..., None]
  return numerator / denominator


def _attend(feature_fn, q, k, v, projection, chunk_size, key_mask=None,
            state=None):
  return linear_attention.causal_linear_attention_of_inputs(
      state, q, k, v, feature_fn, (projection,), chunk_size=chunk_size,
      key_mask=key_mask)


@pytest.mark.parametrize('name', sorted(FEATURE_MAPS))
@pytest.mark.parametrize('length', [1, 7, 8, 29])
def test_matches_masked_quadratic(name, length):
  feature_fn = FEATURE_MAPS[name]
  q, k, v, projection = _problem(0, 2, length)
  _, out = _attend(feature_fn, q, k, v, projection, chunk_size=8)
  expected = _quadratic_reference(feature_fn, q, k, v, projection)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', ['positive', 'hyperbolic'])
def test_equals_attention_of_precomputed_features(name):
  feature_fn = FEATURE_MAPS[name]
  q, k, v, projection = _problem(1, 2, 21)
  key_mask = np.ones((2, 21), dtype=bool)
  key_mask[1, 15:] = False
  q_features = feature_fn(q, projection)
  k_features = feature_fn(k, projection)
  expected_state, expected = (
      linear_attention.causal_linear_attention_with_state(
          linear_attention.init_causal_state(2, 2, q_features.values.shape[-1],
                                             5),
          q_features.values, k_features.values, v,
          key_log_scale=k_features.log_scale, chunk_size=4,
          key_mask=key_mask))
  state, out = _attend(feature_fn, q, k, v, projection, 4, key_mask)
  np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
  for got, want in zip(state, expected_state):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_gradients_match_quadratic_autodiff():
  feature_fn = features.positive_softmax_features
  q, k, v, projection = _problem(2, 1, 19)
  cotangent = np.random.default_rng(3).normal(size=v.shape).astype(
      np.float32)

  def quadratic_loss(q, k, v):
    q_features = feature_fn(q, projection)
    k_features = feature_fn(k, projection)
    k_phi = k_features.values * jnp.exp(k_features.log_scale)[..., None]
    scores = jnp.einsum('bqhm,bkhm->bhqk', q_features.values, k_phi)
    scores = scores * jnp.tril(jnp.ones(scores.shape[-2:]))
    out = (jnp.einsum('bhqk,bkhd->bqhd', scores, v) /
           jnp.swapaxes(scores.sum(-1), 1, 2)[..., None])
    return jnp.sum(out * cotangent)

  def chunked_loss(q, k, v):
    _, out = _attend(feature_fn, q, k, v, projection, chunk_size=4)
    return jnp.sum(out * cotangent)

  expected = jax.grad(quadratic_loss, argnums=(0, 1, 2))(q, k, v)
  got = jax.grad(chunked_loss, argnums=(0, 1, 2))(q, k, v)
  for name, got_gradient, expected_gradient in zip('qkv', got, expected):
    scale = np.max(np.abs(expected_gradient))
    np.testing.assert_allclose(got_gradient, expected_gradient, rtol=1e-4,
                               atol=1e-4 * scale, err_msg=name)


def test_padded_keys_with_nan_and_inf_change_nothing():
  feature_fn = features.positive_softmax_features
  q, k, v, projection = _problem(4, 1, 12)
  valid = np.array([0, 1, 2, 4, 5, 8, 9, 10, 11])
  padding = np.setdiff1d(np.arange(12), valid)
  key_mask = np.zeros((1, 12), dtype=bool)
  key_mask[0, valid] = True
  k_padded = k.copy()
  v_padded = v.copy()
  k_padded[:, padding] = np.nan
  v_padded[:, padding] = np.inf
  cotangent = np.random.default_rng(5).normal(
      size=(1, len(valid)) + v.shape[2:]).astype(np.float32)

  def loss(q, k, v, mask):
    _, out = _attend(feature_fn, q, k, v, projection, 4, mask)
    return jnp.sum(out[:, valid] * cotangent), out

  def compact_loss(q, k, v):
    _, out = _attend(feature_fn, q, k, v, projection, 4)
    return jnp.sum(out * cotangent), out

  (_, out), gradients = jax.value_and_grad(
      loss, argnums=(0, 1, 2), has_aux=True)(q, k_padded, v_padded, key_mask)
  (_, compact_out), compact_gradients = jax.value_and_grad(
      compact_loss, argnums=(0, 1, 2), has_aux=True)(
          q[:, valid], k[:, valid], v[:, valid])
  np.testing.assert_allclose(out[:, valid], compact_out, rtol=1e-5, atol=1e-6)
  for name, gradient, compact_gradient in zip('qkv', gradients,
                                              compact_gradients):
    gradient = np.asarray(gradient)
    np.testing.assert_allclose(gradient[:, valid], compact_gradient,
                               rtol=1e-4, atol=1e-6, err_msg=name)
    if name != 'q':
      np.testing.assert_array_equal(gradient[:, padding], 0, err_msg=name)


def test_no_leakage_from_large_norm_last_key():
  feature_fn = features.positive_softmax_features
  q, k, v, projection = _problem(6, 1, 16)
  k_changed = k.copy()
  k_changed[:, -1] = 30.0
  v_changed = v.copy()
  v_changed[:, -1] = -100.0
  _, out = _attend(feature_fn, q, k, v, projection, 8)
  _, out_changed = _attend(feature_fn, q, k_changed, v_changed, projection, 8)
  np.testing.assert_array_equal(out[:, :-1], out_changed[:, :-1])
  assert np.all(np.isfinite(out_changed))


@pytest.mark.parametrize('block_lengths', [(5, 1, 11), (16,), (3, 0, 13)])
def test_blocks_with_state_match_one_pass(block_lengths):
  feature_fn = features.hyperbolic_softmax_features
  length = sum(block_lengths)
  q, k, v, projection = _problem(7, 2, length)
  full_state, full = _attend(feature_fn, q, k, v, projection, 4)
  state = None
  outputs = []
  start = 0
  for block_length in block_lengths:
    block = slice(start, start + block_length)
    state, out = _attend(feature_fn, q[:, block], k[:, block], v[:, block],
                         projection, 4, state=state)
    outputs.append(out)
    start += block_length
  np.testing.assert_allclose(np.concatenate(outputs, axis=1), full,
                             rtol=1e-5, atol=1e-6)
  for got, want in zip(state, full_state):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_empty_sequence_returns_state_and_zeros():
  q, k, v, projection = _problem(8, 2, 0)
  state, out = _attend(features.positive_softmax_features, q, k, v,
                       projection, 4)
  assert out.shape == v.shape
  initial = linear_attention.init_causal_state(2, 2, 16, 5)
  for got, want in zip(state, initial):
    np.testing.assert_array_equal(got, want)


def test_bfloat16_inputs_sum_in_float32():
  q, k, v, projection = _problem(9, 1, 40)
  feature_fn = features.positive_softmax_features
  state, out = _attend(feature_fn, q.astype(jnp.bfloat16),
                       k.astype(jnp.bfloat16), v.astype(jnp.bfloat16),
                       projection, 8)
  assert out.dtype == jnp.bfloat16
  assert state.kv_sum.dtype == jnp.float32
  expected = _quadratic_reference(feature_fn, q, k, v, projection)
  np.testing.assert_allclose(np.asarray(out, np.float32), expected,
                             atol=5e-2)


def test_backward_stores_no_feature_map():
  # One [batch, length, heads, m] float32 feature map is 8 MiB here, and
  # q, k and v are 16 times smaller. The scan over precomputed features
  # keeps several feature maps for the backward pass. Computing features
  # per chunk keeps copies of q, k and v only.
  batch, length, heads, depth, n_rows = 1, 4096, 2, 16, 256
  q, k, v, projection = _problem(10, batch, length, heads, depth, depth,
                                 n_rows)
  feature_fn = features.positive_softmax_features
  feature_map_bytes = batch * length * heads * n_rows * 4

  def of_inputs_loss(q, k, v):
    _, out = _attend(feature_fn, q, k, v, projection, 128)
    return jnp.sum(out * out)

  def precomputed_loss(q, k, v):
    q_features = feature_fn(q, projection)
    k_features = feature_fn(k, projection)
    out = linear_attention.causal_linear_attention(
        q_features.values, k_features.values, v,
        key_log_scale=k_features.log_scale, chunk_size=128)
    return jnp.sum(out * out)

  def temporary_bytes(loss):
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(
        q, k, v).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  assert temporary_bytes(precomputed_loss) > 2 * feature_map_bytes
  assert temporary_bytes(of_inputs_loss) < feature_map_bytes


@pytest.mark.parametrize('arguments, message', [
    (dict(q_shape=(1, 4, 2, 8), k_shape=(1, 5, 2, 8)), 'one shape'),
    (dict(v_shape=(1, 3, 2, 5)), 'batch, length and heads'),
    (dict(q_shape=(4, 2, 8), k_shape=(4, 2, 8)), r'\[batch, length'),
    (dict(chunk_size=0), 'chunk_size'),
    (dict(key_mask_shape=(1, 3)), 'key_mask'),
])
def test_bad_shapes_raise(arguments, message):
  q_shape = arguments.get('q_shape', (1, 4, 2, 8))
  k_shape = arguments.get('k_shape', (1, 4, 2, 8))
  v_shape = arguments.get('v_shape', (1, 4, 2, 5))
  key_mask = None
  if 'key_mask_shape' in arguments:
    key_mask = np.ones(arguments['key_mask_shape'], dtype=bool)
  projection = np.ones((16, 8), np.float32)
  with pytest.raises(ValueError, match=message):
    linear_attention.causal_linear_attention_of_inputs(
        None, np.zeros(q_shape, np.float32), np.zeros(k_shape, np.float32),
        np.zeros(v_shape, np.float32), features.positive_softmax_features,
        (projection,), chunk_size=arguments.get('chunk_size', 4),
        key_mask=key_mask)


def test_wrong_state_shape_raises():
  q, k, v, projection = _problem(11, 1, 4)
  state = linear_attention.init_causal_state(1, 2, 8, 5)
  with pytest.raises(ValueError, match='state.kv_sum'):
    _attend(features.positive_softmax_features, q, k, v, projection, 4,
            state=state)
