"""Tests for favor_trax.ops.projections."""

import math

import jax
import numpy as np
import pytest

from favor_trax.ops import projections


def _chi_mean(depth):
  """Mean of the chi distribution with `depth` degrees of freedom."""
  return math.sqrt(2) * math.exp(
      math.lgamma((depth + 1) / 2) - math.lgamma(depth / 2))


@pytest.mark.parametrize('n_features', [1, 5, 8, 23, 64])
def test_orthogonal_shape_any_n_features(n_features):
  matrix = projections.orthogonal_gaussian_matrix(
      jax.random.PRNGKey(0), n_features, 8)
  assert matrix.shape == (n_features, 8)
  assert np.all(np.isfinite(matrix))


def test_iid_shape_and_moments():
  matrix = np.asarray(projections.iid_gaussian_matrix(
      jax.random.PRNGKey(1), 2000, 16))
  assert matrix.shape == (2000, 16)
  assert abs(matrix.mean()) < 0.02
  assert abs(matrix.var() - 1.0) < 0.03


@pytest.mark.parametrize('scaling', ['chi', 'fixed'])
def test_orthogonal_rows_orthogonal_within_block(scaling):
  depth = 8
  matrix = np.asarray(projections.orthogonal_gaussian_matrix(
      jax.random.PRNGKey(2), 21, depth, scaling=scaling), np.float64)
  unit_rows = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
  for start in range(0, 21, depth):
    block = unit_rows[start:start + depth]
    gram = block @ block.T
    np.testing.assert_allclose(gram, np.eye(len(block)), atol=1e-5)


def test_orthogonal_blocks_independent():
  depth = 8
  matrix = np.asarray(projections.orthogonal_gaussian_matrix(
      jax.random.PRNGKey(3), 2 * depth, depth))
  unit_rows = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
  cross_gram = unit_rows[:depth] @ unit_rows[depth:].T
  # Independent uniform unit vectors in 8 dimensions: among 64 pairs some
  # cosine exceeds 0.1 in magnitude with overwhelming probability.
  assert np.max(np.abs(cross_gram)) > 0.1


def test_orthogonal_chi_norms_match_chi_distribution():
  depth = 16
  n_features = 4096
  matrix = np.asarray(projections.orthogonal_gaussian_matrix(
      jax.random.PRNGKey(4), n_features, depth, scaling='chi'), np.float64)
  norms = np.linalg.norm(matrix, axis=1)
  expected_mean = _chi_mean(depth)
  expected_std = math.sqrt(depth - expected_mean**2)
  standard_error = expected_std / math.sqrt(n_features)
  assert abs(norms.mean() - expected_mean) < 4 * standard_error
  assert abs(norms.std() - expected_std) < 0.1 * expected_std


def test_orthogonal_fixed_norms_equal_sqrt_depth():
  depth = 16
  matrix = np.asarray(projections.orthogonal_gaussian_matrix(
      jax.random.PRNGKey(5), 40, depth, scaling='fixed'))
  np.testing.assert_allclose(
      np.linalg.norm(matrix, axis=1), math.sqrt(depth), rtol=1e-5)


def test_orthogonal_rows_have_no_sign_bias():
  # A Haar-distributed Q has entries symmetric about 0. QR output without the
  # sign(diag(R)) correction fixes the signs of the first column.
  keys = jax.random.split(jax.random.PRNGKey(6), 400)
  draw = jax.vmap(lambda key: projections.orthogonal_gaussian_matrix(
      key, 4, 4, scaling='fixed'))
  matrices = np.asarray(draw(keys))
  sign_means = np.sign(matrices).mean(axis=0)
  assert np.max(np.abs(sign_means)) < 0.2


def test_orthogonal_deterministic_per_key():
  first = projections.orthogonal_gaussian_matrix(jax.random.PRNGKey(7), 10, 4)
  again = projections.orthogonal_gaussian_matrix(jax.random.PRNGKey(7), 10, 4)
  other = projections.orthogonal_gaussian_matrix(jax.random.PRNGKey(8), 10, 4)
  np.testing.assert_array_equal(first, again)
  assert not np.allclose(first, other)


@pytest.mark.parametrize('n_features, depth, scaling', [
    (0, 4, 'chi'),
    (4, 0, 'chi'),
    (4.0, 4, 'chi'),
    (4, 4, 'gaussian'),
])
def test_orthogonal_invalid_arguments_raise(n_features, depth, scaling):
  with pytest.raises(ValueError):
    projections.orthogonal_gaussian_matrix(
        jax.random.PRNGKey(0), n_features, depth, scaling=scaling)


def test_iid_invalid_sizes_raise():
  with pytest.raises(ValueError, match='n_features'):
    projections.iid_gaussian_matrix(jax.random.PRNGKey(0), -1, 4)
