"""Tests for favor_trax.ops.linear_attention against the quadratic formula.

The references build the L x L matrix phi(Q) phi(K)^T explicitly, mask it and
normalize its rows: in float64 NumPy for values and in float32 JAX for
gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from favor_trax.ops import features
from favor_trax.ops import linear_attention
from favor_trax.ops import projections


def _quadratic_reference(q_values, k_values, v, key_log_scale=None,
                         causal=False, key_mask=None):
  """Return row-normalized (phi(Q) phi(K)^T) V in float64."""
  q = np.asarray(q_values, np.float64)
  k = np.asarray(k_values, np.float64)
  if key_log_scale is not None:
    k = k * np.exp(np.asarray(key_log_scale, np.float64))[..., None]
  scores = np.einsum('bqhm,bkhm->bhqk', q, k)
  if causal:
    scores = scores * np.tril(np.ones(scores.shape[-2:]))
  if key_mask is not None:
    scores = scores * np.asarray(key_mask)[:, None, None, :]
  numerator = np.einsum('bhqk,bkhd->bqhd', scores, np.asarray(v, np.float64))
  denominator = np.swapaxes(scores.sum(-1), 1, 2)[..., None]
  return numerator / denominator


def _quadratic_causal_jax(q_values, k_values, v, key_log_scale):
  """Differentiable float32 version of the causal quadratic formula."""
  k = k_values * jnp.exp(key_log_scale)[..., None]
  scores = jnp.einsum('bqhm,bkhm->bhqk', q_values, k)
  scores = scores * jnp.tril(jnp.ones(scores.shape[-2:]))
  numerator = jnp.einsum('bhqk,bkhd->bqhd', scores, v)
  denominator = jnp.swapaxes(scores.sum(-1), 1, 2)[..., None]
  return numerator / denominator


def _random_problem(seed, batch, length, heads=2, n_features=6, depth_v=3,
                    log_scale_std=3.0, query_length=None):
  """Return positive feature values, values v and key log scales as float32."""
  rng = np.random.default_rng(seed)
  query_length = length if query_length is None else query_length
  q_values = rng.uniform(0.05, 1.0, size=(batch, query_length, heads,
                                          n_features))
  k_values = rng.uniform(0.05, 1.0, size=(batch, length, heads, n_features))
  v = rng.normal(size=(batch, length, heads, depth_v))
  key_log_scale = log_scale_std * rng.normal(size=(batch, length, heads))
  return tuple(array.astype(np.float32)
               for array in (q_values, k_values, v, key_log_scale))


def test_bidirectional_matches_quadratic():
  q_values, k_values, v, key_log_scale = _random_problem(0, 2, 9)
  out = linear_attention.bidirectional_linear_attention(
      q_values, k_values, v, key_log_scale=key_log_scale)
  assert out.shape == v.shape
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(
      out, _quadratic_reference(q_values, k_values, v, key_log_scale),
      rtol=1e-5, atol=1e-6)


def test_bidirectional_cross_attention_lengths():
  q_values, k_values, v, _ = _random_problem(1, 2, 7, query_length=3)
  out = linear_attention.bidirectional_linear_attention(q_values, k_values, v)
  assert out.shape == (2, 3, 2, 3)
  np.testing.assert_allclose(
      out, _quadratic_reference(q_values, k_values, v), rtol=1e-5, atol=1e-6)


def test_bidirectional_wide_key_scales_match_quadratic():
  q_values, k_values, v, key_log_scale = _random_problem(
      2, 2, 9, log_scale_std=40.0)
  out = linear_attention.bidirectional_linear_attention(
      q_values, k_values, v, key_log_scale=key_log_scale)
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(
      out, _quadratic_reference(q_values, k_values, v, key_log_scale),
      rtol=1e-5, atol=1e-6)


def test_bidirectional_key_mask_equals_deleted_keys():
  q_values, k_values, v, key_log_scale = _random_problem(
      3, 2, 9, query_length=4)
  valid_lengths = (5, 7)
  key_mask = np.zeros((2, 9), dtype=bool)
  for example, valid_length in enumerate(valid_lengths):
    key_mask[example, :valid_length] = True
    # Padded keys hold garbage that must not reach any sum.
    k_values[example, valid_length:] = np.nan
    v[example, valid_length:] = np.inf
    key_log_scale[example, valid_length:] = 500.0

  out = linear_attention.bidirectional_linear_attention(
      q_values, k_values, v, key_mask=key_mask, key_log_scale=key_log_scale)

  for example, valid_length in enumerate(valid_lengths):
    keep = slice(example, example + 1)
    expected = linear_attention.bidirectional_linear_attention(
        q_values[keep], k_values[keep, :valid_length], v[keep, :valid_length],
        key_log_scale=key_log_scale[keep, :valid_length])
    np.testing.assert_allclose(out[keep], expected, rtol=1e-6, atol=1e-7)


def test_bidirectional_all_keys_masked_gives_zero():
  q_values, k_values, v, key_log_scale = _random_problem(4, 2, 5)
  key_mask = np.array([[False] * 5, [True] * 5])
  out = np.asarray(linear_attention.bidirectional_linear_attention(
      q_values, k_values, v, key_mask=key_mask, key_log_scale=key_log_scale))
  np.testing.assert_array_equal(out[0], 0)
  assert np.all(np.isfinite(out))


@pytest.mark.parametrize('batch, length, chunk_size', [
    (2, 13, 4),
    (2, 16, 4),
    (1, 1, 4),
    (1, 5, 128),
    (1, 9, 1),
    (2, 17, 16),
])
def test_causal_matches_masked_quadratic(batch, length, chunk_size):
  q_values, k_values, v, key_log_scale = _random_problem(5, batch, length)
  out = linear_attention.causal_linear_attention(
      q_values, k_values, v, key_log_scale=key_log_scale,
      chunk_size=chunk_size)
  assert out.shape == v.shape
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(
      out,
      _quadratic_reference(q_values, k_values, v, key_log_scale, causal=True),
      rtol=1e-5, atol=1e-6)


def test_causal_wide_key_scales_match_quadratic():
  # Scales spread over +-100 make the running maximum jump inside and across
  # chunks; without rescaling float32 would overflow.
  q_values, k_values, v, key_log_scale = _random_problem(
      6, 2, 21, log_scale_std=40.0)
  out = linear_attention.causal_linear_attention(
      q_values, k_values, v, key_log_scale=key_log_scale, chunk_size=4)
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(
      out,
      _quadratic_reference(q_values, k_values, v, key_log_scale, causal=True),
      rtol=1e-5, atol=1e-6)


def test_causal_without_log_scale_matches_quadratic():
  q_values, k_values, v, _ = _random_problem(7, 1, 10)
  out = linear_attention.causal_linear_attention(
      q_values, k_values, v, chunk_size=3)
  np.testing.assert_allclose(
      out, _quadratic_reference(q_values, k_values, v, causal=True),
      rtol=1e-5, atol=1e-6)


def test_causal_empty_sequence():
  q_values, k_values, v, key_log_scale = _random_problem(8, 2, 0)
  out = linear_attention.causal_linear_attention(
      q_values, k_values, v, key_log_scale=key_log_scale, chunk_size=4)
  assert out.shape == (2, 0, 2, 3)


def test_causal_ones_values_give_ones():
  q_values, k_values, v, key_log_scale = _random_problem(
      9, 2, 11, log_scale_std=40.0)
  out = linear_attention.causal_linear_attention(
      q_values, k_values, np.ones_like(v), key_log_scale=key_log_scale,
      chunk_size=4)
  np.testing.assert_allclose(out, 1.0, rtol=1e-6)


def test_causal_no_leakage_from_later_positions():
  length, cut = 12, 6
  q_values, k_values, v, key_log_scale = _random_problem(10, 2, length)
  out = linear_attention.causal_linear_attention(
      q_values, k_values, v, key_log_scale=key_log_scale, chunk_size=4)

  new_q, new_k, new_v, new_log_scale = _random_problem(11, 2, length)
  for array, replacement in ((q_values, new_q), (k_values, new_k),
                             (v, new_v), (key_log_scale, new_log_scale)):
    array[:, cut + 1:] = replacement[:, cut + 1:]
  # A later key with a much larger scale moves the maximum over all keys.
  key_log_scale[:, -1] = 200.0
  changed = linear_attention.causal_linear_attention(
      q_values, k_values, v, key_log_scale=key_log_scale, chunk_size=4)

  np.testing.assert_array_equal(changed[:, :cut + 1], out[:, :cut + 1])
  assert not np.allclose(changed[:, cut + 1:], out[:, cut + 1:])


def test_causal_no_leakage_from_large_norm_key():
  depth, length, cut = 8, 10, 4
  rng = np.random.default_rng(12)
  q = rng.normal(size=(1, length, 2, depth)).astype(np.float32)
  k = rng.normal(size=(1, length, 2, depth)).astype(np.float32)
  v = rng.normal(size=(1, length, 2, depth)).astype(np.float32)
  projection = projections.orthogonal_gaussian_matrix(
      jax.random.PRNGKey(0), 16, depth)

  def attend(q, k, v):
    scale = depth**-0.25
    q_features = features.positive_softmax_features(q * scale, projection)
    k_features = features.positive_softmax_features(k * scale, projection)
    return linear_attention.causal_linear_attention(
        q_features.values, k_features.values, v,
        key_log_scale=k_features.log_scale, chunk_size=3)

  out = attend(q, k, v)
  changed_k = k.copy()
  changed_k[:, cut + 1:] = rng.normal(size=changed_k[:, cut + 1:].shape)
  last_key = changed_k[0, -1, 0]
  changed_k[0, -1, 0] = 30.0 * last_key / np.linalg.norm(last_key)
  changed = attend(q, changed_k, v)

  assert np.all(np.isfinite(changed))
  np.testing.assert_array_equal(changed[:, :cut + 1], out[:, :cut + 1])


def test_causal_gradients_match_quadratic_autodiff():
  q_values, k_values, v, key_log_scale = _random_problem(
      13, 2, 11, log_scale_std=1.0)
  cotangent = np.random.default_rng(14).normal(size=v.shape).astype(
      np.float32)

  def chunked_loss(q_values, k_values, v):
    out = linear_attention.causal_linear_attention(
        q_values, k_values, v, key_log_scale=key_log_scale, chunk_size=4)
    return jnp.sum(out * cotangent)

  def quadratic_loss(q_values, k_values, v):
    out = _quadratic_causal_jax(q_values, k_values, v, key_log_scale)
    return jnp.sum(out * cotangent)

  gradients = jax.grad(chunked_loss, argnums=(0, 1, 2))(q_values, k_values, v)
  expected = jax.grad(quadratic_loss, argnums=(0, 1, 2))(
      q_values, k_values, v)
  for name, gradient, reference in zip(('q', 'k', 'v'), gradients, expected):
    scale = np.max(np.abs(reference))
    np.testing.assert_allclose(
        gradient, reference, rtol=1e-4, atol=1e-5 * scale,
        err_msg=f'gradient with respect to {name}_values')


def test_bidirectional_gradients_match_quadratic_autodiff():
  q_values, k_values, v, key_log_scale = _random_problem(
      20, 2, 7, log_scale_std=1.0)
  key_mask = np.array([[True] * 5 + [False] * 2, [True] * 7])
  cotangent = np.random.default_rng(21).normal(size=v.shape).astype(
      np.float32)

  def linear_loss(q_values, k_values, v):
    out = linear_attention.bidirectional_linear_attention(
        q_values, k_values, v, key_mask=key_mask, key_log_scale=key_log_scale)
    return jnp.sum(out * cotangent)

  def quadratic_loss(q_values, k_values, v):
    k = k_values * jnp.exp(key_log_scale)[..., None]
    scores = jnp.einsum('bqhm,bkhm->bhqk', q_values, k)
    scores = scores * key_mask[:, None, None, :]
    numerator = jnp.einsum('bhqk,bkhd->bqhd', scores, v)
    denominator = jnp.swapaxes(scores.sum(-1), 1, 2)[..., None]
    return jnp.sum(numerator / denominator * cotangent)

  gradients = jax.grad(linear_loss, argnums=(0, 1, 2))(q_values, k_values, v)
  expected = jax.grad(quadratic_loss, argnums=(0, 1, 2))(
      q_values, k_values, v)
  for name, gradient, reference in zip(('q', 'k', 'v'), gradients, expected):
    scale = np.max(np.abs(reference))
    np.testing.assert_allclose(
        gradient, reference, rtol=1e-4, atol=1e-5 * scale,
        err_msg=f'gradient with respect to {name}_values')


def test_float64_inputs_compute_in_float64():
  q_values, k_values, v, key_log_scale = (
      array.astype(np.float64) for array in _random_problem(22, 1, 9))
  causal_reference = _quadratic_reference(
      q_values, k_values, v, key_log_scale, causal=True)
  bidirectional_reference = _quadratic_reference(
      q_values, k_values, v, key_log_scale)
  # float64 arrays need x64 mode, which the context manager restores on exit.
  with jax.enable_x64(True):
    causal = linear_attention.causal_linear_attention(
        q_values, k_values, v, key_log_scale=key_log_scale, chunk_size=4)
    bidirectional = linear_attention.bidirectional_linear_attention(
        q_values, k_values, v, key_log_scale=key_log_scale)
    assert causal.dtype == jnp.float64
    assert bidirectional.dtype == jnp.float64
    np.testing.assert_allclose(causal, causal_reference, rtol=1e-12)
    np.testing.assert_allclose(bidirectional, bidirectional_reference,
                               rtol=1e-12)


def _max_array_size(closed_jaxpr):
  """Return the largest number of elements of any value in a jaxpr."""
  largest = 0
  pending = [closed_jaxpr.jaxpr]
  while pending:
    jaxpr = pending.pop()
    for eqn in jaxpr.eqns:
      for var in eqn.outvars:
        largest = max(largest, int(np.prod(var.aval.shape)))
      for param in eqn.params.values():
        for sub in param if isinstance(param, (tuple, list)) else (param,):
          if hasattr(sub, 'eqns'):
            pending.append(sub)
          elif hasattr(getattr(sub, 'jaxpr', None), 'eqns'):
            pending.append(sub.jaxpr)
  return largest


def test_causal_gradient_memory_per_chunk():
  length, n_features, depth_v, chunk_size = 64, 16, 8, 8
  q_values, k_values, v, key_log_scale = _random_problem(
      15, 1, length, heads=1, n_features=n_features, depth_v=depth_v)

  def loss(q_values, k_values, v):
    out = linear_attention.causal_linear_attention(
        q_values, k_values, v, key_log_scale=key_log_scale,
        chunk_size=chunk_size)
    return jnp.sum(out)

  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(
      q_values, k_values, v)
  # Prefix sums of phi(k) v^T would have length * m * d_v elements and the
  # quadratic score matrix length^2.
  assert _max_array_size(jaxpr) < min(length * n_features * depth_v,
                                      length * length)


def test_causal_step_matches_full_pass():
  q_values, k_values, v, key_log_scale = _random_problem(
      16, 2, 11, log_scale_std=20.0)
  full = linear_attention.causal_linear_attention(
      q_values, k_values, v, key_log_scale=key_log_scale, chunk_size=4)

  state = linear_attention.init_causal_state(2, 2, 6, 3)
  step = jax.jit(linear_attention.causal_linear_attention_step)
  outputs = []
  for position in range(11):
    state, output = step(state, q_values[:, position], k_values[:, position],
                         v[:, position], key_log_scale[:, position])
    outputs.append(output)
  np.testing.assert_allclose(np.stack(outputs, axis=1), full, rtol=1e-4,
                             atol=1e-5)


def test_causal_bfloat16_returns_bfloat16():
  q_values, k_values, v, key_log_scale = _random_problem(17, 1, 9)
  q_values, k_values, v = (jnp.asarray(array, jnp.bfloat16)
                           for array in (q_values, k_values, v))
  out = linear_attention.causal_linear_attention(
      q_values, k_values, v, key_log_scale=key_log_scale, chunk_size=4)
  assert out.dtype == jnp.bfloat16
  # The reference gets the same bfloat16-rounded inputs.
  expected = _quadratic_reference(q_values, k_values, v, key_log_scale,
                                  causal=True)
  np.testing.assert_allclose(np.asarray(out, np.float32), expected, rtol=2e-2,
                             atol=2e-2)


@pytest.mark.parametrize('chunk_size', [0, -3, 2.5])
def test_causal_invalid_chunk_size_raises(chunk_size):
  q_values, k_values, v, _ = _random_problem(18, 1, 4)
  with pytest.raises(ValueError, match='chunk_size'):
    linear_attention.causal_linear_attention(
        q_values, k_values, v, chunk_size=chunk_size)


def test_mismatched_shapes_raise():
  q_values, k_values, v, key_log_scale = _random_problem(19, 1, 4)
  with pytest.raises(ValueError, match='v must have'):
    linear_attention.causal_linear_attention(q_values, k_values, v[:, :3])
  with pytest.raises(ValueError, match='k_features must have'):
    linear_attention.bidirectional_linear_attention(
        q_values, k_values[..., :5], v)
  with pytest.raises(ValueError, match='key_log_scale must have'):
    linear_attention.bidirectional_linear_attention(
        q_values, k_values, v, key_log_scale=key_log_scale[:, :, 0])
  with pytest.raises(ValueError, match='key_mask must have'):
    linear_attention.bidirectional_linear_attention(
        q_values, k_values, v, key_mask=np.ones((1, 3), dtype=bool))
