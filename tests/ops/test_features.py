"""Tests for favor_trax.ops.features against float64 NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

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


def _trigonometric_reference(x, projection):
  x = np.asarray(x, np.float64)
  projected = x @ np.asarray(projection, np.float64).T
  scale = np.exp(0.5 * np.sum(x * x, -1, keepdims=True))
  return scale * np.concatenate([np.sin(projected), np.cos(projected)],
                                axis=-1) / np.sqrt(projection.shape[0])


def test_trigonometric_features_match_formula(inputs, projection):
  x = 0.5 * inputs
  result = features.trigonometric_softmax_features(x, projection)
  assert result.values.shape == (2, 5, 3, 24)
  assert result.values.dtype == jnp.float32
  assert np.all(np.abs(result.values) <= 1 / np.sqrt(12) + 1e-7)
  # float32 sin and cos of arguments up to about 5 have absolute errors near
  # 1e-7.
  np.testing.assert_allclose(
      _exact_features(result), _trigonometric_reference(x, projection),
      rtol=1e-5, atol=1e-6)


def test_trigonometric_features_gradient_matches_formula(inputs, projection):
  x = jnp.asarray(0.5 * inputs)
  weights = jnp.asarray(np.random.default_rng(8).normal(size=(2, 5, 3, 24)),
                        jnp.float32)

  def weighted_sum(x):
    result = features.trigonometric_softmax_features(x, projection)
    return jnp.sum(weights * result.values *
                   jnp.exp(result.log_scale)[..., None])

  def direct_sum(x):
    projected = x @ projection.T
    phi = jnp.exp(0.5 * jnp.sum(x * x, -1, keepdims=True)) * jnp.concatenate(
        [jnp.sin(projected), jnp.cos(projected)], axis=-1) / jnp.sqrt(12.0)
    return jnp.sum(weights * phi)

  np.testing.assert_allclose(
      jax.grad(weighted_sum)(x), jax.grad(direct_sum)(x), rtol=1e-4,
      atol=1e-5)


def test_trigonometric_kernel_estimate_close_at_large_m():
  depth = 8
  rng = np.random.default_rng(2)
  x = 0.3 * rng.normal(size=(6, depth))
  y = 0.3 * rng.normal(size=(7, depth))
  projection = projections.orthogonal_gaussian_matrix(
      jax.random.PRNGKey(3), 8192, depth)
  x_features = _exact_features(features.trigonometric_softmax_features(
      jnp.asarray(x, jnp.float32), projection))
  y_features = _exact_features(features.trigonometric_softmax_features(
      jnp.asarray(y, jnp.float32), projection))

  relative_error = np.abs(x_features @ y_features.T - np.exp(x @ y.T))
  relative_error /= np.exp(x @ y.T)
  assert relative_error.mean() < 0.02
  assert relative_error.max() < 0.1


def _generalized_reference(x, projection, coefficient):
  """phi(x) = D exp(A |w|^2 + B w.x - |x|^2 / 2) / sqrt(m) in float64."""
  x = np.asarray(x, np.float64)
  projection = np.asarray(projection, np.float64)
  a = np.asarray(coefficient, np.float64)[..., None]
  log_phi = (a * np.sum(projection**2, -1) +
             np.sqrt(1 - 4 * a) * (x @ projection.T) -
             0.5 * np.sum(x * x, -1, keepdims=True) +
             0.25 * x.shape[-1] * np.log(1 - 4 * a))
  return np.exp(log_phi) / np.sqrt(projection.shape[0])


def test_generalized_features_zero_coefficient_is_positive(inputs,
                                                           projection):
  x = 0.5 * inputs
  generalized = features.generalized_exponential_features(x, projection, 0.0)
  positive = features.positive_softmax_features(x, projection)
  np.testing.assert_allclose(_exact_features(generalized),
                             _exact_features(positive), rtol=1e-6)


def test_generalized_features_match_formula(inputs, projection):
  x = 0.5 * inputs
  # One coefficient per example and head, broadcast over the length axis.
  coefficient = np.array([[[-0.4, -0.1, 0.05]], [[-1.0, 0.0, 0.1]]])
  result = features.generalized_exponential_features(x, projection,
                                                     coefficient)
  assert result.values.shape == (2, 5, 3, 12)
  np.testing.assert_allclose(
      _exact_features(result),
      _generalized_reference(x, projection, coefficient), rtol=1e-5)


def _second_moment(x, y, coefficient):
  """E[(m phi(x)_r phi(y)_r)^2] of one generalized exponential feature."""
  a, depth = coefficient, x.shape[-1]
  squared_sum = np.sum((x + y)**2)
  return ((1 - 4 * a)**2 / (1 - 8 * a))**(depth / 2) * np.exp(
      2 * (1 - 4 * a) * squared_sum / (1 - 8 * a) - x @ x - y @ y)


@pytest.mark.parametrize('coefficient', [-0.6, -0.15, 0.0, 0.05])
def test_generalized_features_unbiased(coefficient):
  depth, n_features = 8, 200_000
  rng = np.random.default_rng(9)
  x, y = (0.4 * rng.normal(size=depth) for _ in range(2))
  projection = projections.iid_gaussian_matrix(
      jax.random.PRNGKey(10), n_features, depth)
  phi_x, phi_y = (
      _exact_features(features.generalized_exponential_features(
          jnp.asarray(z, jnp.float32), projection, coefficient))
      for z in (x, y))
  # With iid rows the estimate is a mean of n_features iid terms
  # m phi(x)_r phi(y)_r, whose variance has a closed form.
  terms = n_features * phi_x * phi_y
  exact = np.exp(x @ y)
  variance = _second_moment(x, y, coefficient) - exact**2
  standard_error = np.sqrt(variance / n_features)

  assert abs(terms.mean() - exact) < 4 * standard_error
  if coefficient < 0:
    # The terms are bounded, so the sample variance is reliable. For A >= 0
    # they are heavy-tailed and the sample variance underestimates it.
    np.testing.assert_allclose(terms.var(), variance, rtol=0.1)


def test_generalized_features_coefficient_too_large_raises(inputs,
                                                           projection):
  with pytest.raises(ValueError, match='below 1/8'):
    features.generalized_exponential_features(inputs, projection, 0.125)


def test_favor_plus_plus_coefficient_minimizes_objective():
  depth = 16
  for rho in (0.0, 0.05, 0.3, 1.0, 4.0):

    def mean_log_second_moment(a, rho=rho):
      return (depth / 2 * np.log((1 - 4 * a)**2 / (1 - 8 * a)) +
              2 * depth * rho * (1 - 4 * a) / (1 - 8 * a))

    numeric = optimize.minimize_scalar(
        mean_log_second_moment, bounds=(-20.0, 0.1249), method='bounded',
        options={'xatol': 1e-12})
    coefficient = float(features.favor_plus_plus_coefficient(rho))
    assert coefficient <= 0
    np.testing.assert_allclose(coefficient, numeric.x, atol=1e-6,
                               err_msg=f'rho={rho}')


def test_favor_plus_plus_rho_is_pairwise_mean():
  rng = np.random.default_rng(11)
  queries = rng.normal(size=(2, 5, 3, 4))
  keys = rng.normal(size=(2, 6, 3, 4))
  query_mask = rng.random((2, 5)) < 0.7
  key_mask = rng.random((2, 6)) < 0.7
  query_mask[:, 0] = key_mask[:, 0] = True
  # Masked positions hold garbage that must not reach the statistic.
  queries[~query_mask] = np.nan
  keys[~key_mask] = np.inf

  rho = features.favor_plus_plus_rho(
      jnp.asarray(queries, jnp.float32), jnp.asarray(keys, jnp.float32),
      query_mask=query_mask, key_mask=key_mask)

  assert rho.shape == (2, 1, 3)
  for example in range(2):
    valid_queries = queries[example][query_mask[example]]
    valid_keys = keys[example][key_mask[example]]
    sums = valid_queries[:, None] + valid_keys[None, :]
    expected = np.mean(np.sum(sums**2, -1), axis=(0, 1)) / 4
    np.testing.assert_allclose(rho[example, 0], expected, rtol=1e-5)


def test_favor_plus_plus_gradient_ignores_rho(inputs, projection):
  x = jnp.asarray(0.5 * inputs)

  def feature_sum(x, rho_from_input):
    rho = (features.favor_plus_plus_rho(x, x) if rho_from_input
           else rho_constant)
    result = features.favor_plus_plus_features(x, projection, rho)
    return jnp.sum(result.values * jnp.exp(result.log_scale)[..., None])

  rho_constant = features.favor_plus_plus_rho(x, x)
  np.testing.assert_allclose(
      jax.grad(feature_sum)(x, True), jax.grad(feature_sum)(x, False),
      rtol=1e-6)


def test_favor_plus_plus_negative_rho_raises(inputs, projection):
  with pytest.raises(ValueError, match='rho'):
    features.favor_plus_plus_features(inputs, projection, -0.5)


def _favor_errors(projection, q, k, v, exact_attention, exact_kernel, rho):
  """Return [FAVOR+ errors, FAVOR++ errors] on one projection.

  Each entry is (mean |attention error|, kernel mean squared error).
  """
  scale = q.shape[-1]**-0.25
  x, y = q * scale, k * scale
  errors = []
  for feature_fn in (
      features.positive_softmax_features,
      lambda z, w: features.favor_plus_plus_features(z, w, rho)):
    x_features = feature_fn(x, projection)
    y_features = feature_fn(y, projection)
    attention = linear_attention.bidirectional_linear_attention(
        x_features.values, y_features.values, v,
        key_log_scale=y_features.log_scale)
    kernel = jnp.einsum(
        'bqhm,bkhm->bhqk',
        x_features.values * jnp.exp(x_features.log_scale)[..., None],
        y_features.values * jnp.exp(y_features.log_scale)[..., None])
    errors.append((jnp.mean(jnp.abs(attention - exact_attention)),
                   jnp.mean((kernel - exact_kernel)**2)))
  return errors


_favor_errors_per_projection = jax.jit(jax.vmap(
    _favor_errors, in_axes=(0, None, None, None, None, None, None)))


def test_favor_plus_plus_beats_positive_features():
  # |q|^2 and |k|^2 near depth / 2 give rho near 0.3, where the optimal A is
  # about -0.1 and the variance gain is large.
  depth, length, n_draws = 16, 16, 256
  rng = np.random.default_rng(12)
  q, k, v = (rng.normal(size=(1, length, 1, depth)) for _ in range(3))
  q *= 0.75
  k *= 0.75
  exact_attention = _softmax_attention_reference(q, k, v)
  exact_kernel = np.exp(np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(depth))
  arrays = tuple(jnp.asarray(array, jnp.float32)
                 for array in (q, k, v, exact_attention, exact_kernel))
  rho = features.favor_plus_plus_rho(arrays[0] * depth**-0.25,
                                     arrays[1] * depth**-0.25)
  assert 0.2 < float(rho.squeeze()) < 0.4
  # Each block of depth rows is an independent draw with m = depth.
  matrices = projections.orthogonal_gaussian_matrix(
      jax.random.PRNGKey(13), n_draws * depth, depth).reshape(
          n_draws, depth, depth)

  positive, favor_plus_plus = _favor_errors_per_projection(
      matrices, *arrays, rho)

  positive_kernel_mse = float(positive[1].mean())
  favor_plus_plus_kernel_mse = float(favor_plus_plus[1].mean())
  assert favor_plus_plus_kernel_mse < positive_kernel_mse / 2, (
      positive_kernel_mse, favor_plus_plus_kernel_mse)
  positive_attention_error = float(positive[0].mean())
  favor_plus_plus_attention_error = float(favor_plus_plus[0].mean())
  assert favor_plus_plus_attention_error < positive_attention_error, (
      positive_attention_error, favor_plus_plus_attention_error)
