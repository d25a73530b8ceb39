"""Tests for favor_trax.ops.features against float64 NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from favor_trax.ops import features
from favor_trax.ops import linear_attention
from favor_trax.ops import projections


def _exact_features(features_tuple):
  """Return phi = values * exp(log_scale) in float64."""
  values = np.asarray(features_tuple.values, np.float64)
  log_scale = np.asarray(features_tuple.log_scale, np.float64)
  return values * np.exp(log_scale)[..., None]


def _positive_reference(x, projection):
  x = np.asarray(x, np.float64)
  projection = np.asarray(projection, np.float64)
  log_features = x @ projection.T - 0.5 * np.sum(x * x, -1, keepdims=True)
  return np.exp(log_features) / np.sqrt(projection.shape[0])


def _softmax_attention_reference(q, k, v):
  """Exact softmax attention in float64 for [batch, length, heads, depth]."""
  logits = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum('bhqk,bkhd->bqhd', weights, v)


@pytest.fixture(name='inputs')
def fixture_inputs():
  rng = np.random.default_rng(0)
  return rng.normal(size=(2, 5, 3, 8)).astype(np.float32)


@pytest.fixture(name='projection')
def fixture_projection():
  return projections.orthogonal_gaussian_matrix(jax.random.PRNGKey(0), 12, 8)


@pytest.mark.parametrize('stabilizer', ['position', 'none'])
def test_positive_features_match_formula(inputs, projection, stabilizer):
  x = 0.5 * inputs
  result = features.positive_softmax_features(x, projection, stabilizer)
  assert result.values.shape == (2, 5, 3, 12)
  assert result.log_scale.shape == (2, 5, 3)
  assert result.values.dtype == jnp.float32
  np.testing.assert_allclose(
      _exact_features(result), _positive_reference(x, projection), rtol=1e-5)


def test_positive_features_position_stabilizer_max(inputs, projection):
  result = features.positive_softmax_features(inputs, projection)
  values = np.asarray(result.values)
  assert np.all(values > 0)
  np.testing.assert_allclose(values.max(-1), 1 / np.sqrt(12), rtol=1e-6)


def test_positive_features_finite_at_large_norm(projection):
  rng = np.random.default_rng(1)
  direction = rng.normal(size=(4, 8))
  x = 30.0 * direction / np.linalg.norm(direction, axis=-1, keepdims=True)
  stabilized = features.positive_softmax_features(
      jnp.asarray(x, jnp.float32), projection)
  assert np.all(np.isfinite(stabilized.values))
  assert np.all(np.isfinite(stabilized.log_scale))
  assert np.all(np.asarray(stabilized.values).max(-1) > 0)
  # The unstabilized float32 features underflow to 0 at this norm.
  raw = features.positive_softmax_features(
      jnp.asarray(x, jnp.float32), projection, stabilizer='none')
  assert np.all(np.asarray(raw.values) == 0)


def test_positive_features_gradient_ignores_stabilizer(inputs, projection):
  x = jnp.asarray(0.5 * inputs)

  def stabilized_sum(x):
    result = features.positive_softmax_features(x, projection)
    return jnp.sum(result.values * jnp.exp(result.log_scale)[..., None])

  def direct_sum(x):
    log_features = x @ projection.T - 0.5 * jnp.sum(x * x, -1, keepdims=True)
    return jnp.sum(jnp.exp(log_features)) / jnp.sqrt(12.0)

  np.testing.assert_allclose(
      jax.grad(stabilized_sum)(x), jax.grad(direct_sum)(x), rtol=1e-5,
      atol=1e-6)


@pytest.mark.parametrize('feature_fn', [
    features.positive_softmax_features,
    features.hyperbolic_softmax_features,
])
def test_softmax_kernel_estimate_close_at_large_m(feature_fn):
  depth = 8
  rng = np.random.default_rng(2)
  q = 0.4 * rng.normal(size=(6, depth))
  k = 0.4 * rng.normal(size=(7, depth))
  projection = projections.orthogonal_gaussian_matrix(
      jax.random.PRNGKey(3), 8192, depth)
  scale = depth**-0.25
  q_features = _exact_features(
      feature_fn(jnp.asarray(q * scale, jnp.float32), projection))
  k_features = _exact_features(
      feature_fn(jnp.asarray(k * scale, jnp.float32), projection))

  estimate = q_features @ k_features.T
  exact = np.exp(q @ k.T / np.sqrt(depth))
  relative_error = np.abs(estimate - exact) / exact
  assert relative_error.mean() < 0.02
  assert relative_error.max() < 0.1


def test_hyperbolic_features_match_formula(inputs, projection):
  x = 0.5 * inputs
  result = features.hyperbolic_softmax_features(x, projection)
  assert result.values.shape == (2, 5, 3, 24)
  x64 = np.asarray(x, np.float64)
  projected = x64 @ np.asarray(projection, np.float64).T
  half_norm = 0.5 * np.sum(x64 * x64, -1, keepdims=True)
  expected = np.concatenate(
      [np.exp(projected - half_norm), np.exp(-projected - half_norm)],
      axis=-1) / np.sqrt(24)
  np.testing.assert_allclose(_exact_features(result), expected, rtol=1e-5)


def _favor_attention_errors(projection, q, k, v, exact_attention,
                            exact_kernel):
  """Return (mean |attention error|, kernel mean squared error)."""
  scale = q.shape[-1]**-0.25
  q_features = features.positive_softmax_features(q * scale, projection)
  k_features = features.positive_softmax_features(k * scale, projection)
  attention = linear_attention.bidirectional_linear_attention(
      q_features.values, k_features.values, v,
      key_log_scale=k_features.log_scale)
  kernel = jnp.einsum(
      'bqhm,bkhm->bhqk',
      q_features.values * jnp.exp(q_features.log_scale)[..., None],
      k_features.values * jnp.exp(k_features.log_scale)[..., None])
  return (jnp.mean(jnp.abs(attention - exact_attention)),
          jnp.mean((kernel - exact_kernel)**2))


_errors_per_projection = jax.jit(jax.vmap(
    _favor_attention_errors, in_axes=(0, None, None, None, None, None)))


@pytest.fixture(name='attention_problem')
def fixture_attention_problem():
  depth = 16
  rng = np.random.default_rng(4)
  q, k, v = (rng.normal(size=(1, 16, 1, depth)) for _ in range(3))
  q *= 0.3
  k *= 0.3
  exact_attention = _softmax_attention_reference(q, k, v)
  exact_kernel = np.exp(np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(depth))
  return depth, tuple(
      jnp.asarray(array, jnp.float32)
      for array in (q, k, v, exact_attention, exact_kernel))


def test_favor_error_falls_with_features(attention_problem):
  depth, arrays = attention_problem
  # The blocks of an orthogonal matrix are independent, so the first m rows
  # of a larger draw (m a multiple of depth) are a draw with m rows.
  keys = jax.random.split(jax.random.PRNGKey(5), 8)
  largest = np.stack([
      projections.orthogonal_gaussian_matrix(key, 1024, depth)
      for key in keys])
  mean_errors = []
  for n_features in (16, 64, 256, 1024):
    errors, _ = _errors_per_projection(largest[:, :n_features], *arrays)
    mean_errors.append(float(errors.mean()))

  for fewer, more in zip(mean_errors, mean_errors[1:]):
    assert more < fewer, mean_errors
  # Monte Carlo error falls as 1 / sqrt(m): 64 times the features should
  # divide it by about 8.
  assert mean_errors[-1] < mean_errors[0] / 4, mean_errors


def test_orthogonal_beats_iid_at_m_equal_depth(attention_problem):
  depth, arrays = attention_problem
  n_draws = 256
  # Each block of depth rows is an independent draw with m = depth.
  orthogonal = projections.orthogonal_gaussian_matrix(
      jax.random.PRNGKey(6), n_draws * depth, depth)
  iid = projections.iid_gaussian_matrix(
      jax.random.PRNGKey(7), n_draws * depth, depth)
  kernel_mse = {}
  for name, matrix in (('orthogonal', orthogonal), ('iid', iid)):
    _, errors = _errors_per_projection(
        matrix.reshape(n_draws, depth, depth), *arrays)
    kernel_mse[name] = float(errors.mean())
  assert kernel_mse['orthogonal'] < kernel_mse['iid'], kernel_mse


def test_relu_features_with_projection(inputs, projection):
  result = features.relu_features(inputs, projection, epsilon=1e-3)
  expected = np.maximum(
      np.asarray(inputs, np.float64) @ np.asarray(projection, np.float64).T,
      0) + 1e-3
  np.testing.assert_allclose(result.values, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(result.log_scale, np.zeros((2, 5, 3)))


def test_relu_features_without_projection(inputs):
  result = features.relu_features(inputs, epsilon=0.5)
  np.testing.assert_allclose(result.values, np.maximum(inputs, 0) + 0.5)
  assert result.values.shape == inputs.shape


def test_relu_features_negative_epsilon_raises(inputs):
  with pytest.raises(ValueError, match='epsilon'):
    features.relu_features(inputs, epsilon=-1.0)


def test_features_depth_mismatch_raises(projection):
  x = jnp.ones((2, 3, 5))
  with pytest.raises(ValueError, match=r'\[\.\.\., 8\]'):
    features.positive_softmax_features(x, projection)


def test_features_unknown_stabilizer_raises(inputs, projection):
  with pytest.raises(ValueError, match='stabilizer'):
    features.positive_softmax_features(inputs, projection, stabilizer='max')


def test_features_bfloat16_input_computes_in_float32(inputs, projection):
  x = jnp.asarray(0.5 * inputs, jnp.bfloat16)
  result = features.positive_softmax_features(x, projection)
  assert result.values.dtype == jnp.float32
  np.testing.assert_allclose(
      _exact_features(result),
      _positive_reference(np.asarray(x, np.float32), projection), rtol=1e-5)
