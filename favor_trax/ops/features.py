"""Random feature maps phi with E[phi(q) . phi(k)] equal to an attention kernel.

Linear attention replaces the kernel K(q, k) by phi(q) . phi(k), so that
sum_j K(q_i, k_j) v_j = phi(q_i) . (sum_j phi(k_j) v_j^T) costs O(L) instead of
O(L^2). The softmax kernel exp(x . y) has these estimators here:

* positive and hyperbolic features: FAVOR+ (Choromanski et al., "Rethinking
  Attention with Performers", ICLR 2021).
* trigonometric features: random Fourier features of the Gaussian kernel
  (Rahimi and Recht, "Random Features for Large-Scale Kernel Machines", NIPS
  2007) times exp(|x|^2 / 2), which can be negative.
* generalized exponential features, and FAVOR++, the member of that family
  whose free parameter minimizes a variance objective given a statistic of
  the queries and keys (after the optimal positive random features of
  Likhosherstov et al., "Chefs' Random Tables: Non-Trigonometric Random
  Features", NeurIPS 2022).

ReLU features approximate no softmax and define generalized attention.

Every feature map takes inputs x of shape [..., d] and returns `Features`:
`values` of shape [..., n] and `log_scale` of shape [...], with

    phi(x) = values * exp(log_scale)[..., None].

Exponential feature maps overflow or underflow for large |x|, so they subtract
a per-position maximum c(x) inside the exponential and return it as
`log_scale`. A per-query factor exp(c(q)) cancels between the numerator and the
denominator of attention, so callers may drop the query `log_scale`. Key scales
differ between keys and do not cancel. `favor_trax.ops.linear_attention` puts
them back relative to a shared maximum. Every `log_scale` is under
`jax.lax.stop_gradient`, and `values` carries the whole gradient of phi, so the
gradient of `values * exp(log_scale)` is the gradient of phi.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


STABILIZERS = ('position', 'none')


class Features(NamedTuple):
  """Feature values and their log scale: phi(x) = values * exp(log_scale).

  Attributes:
    values: array of shape [..., n_features].
    log_scale: array of shape [...], constant over the feature axis.
  """
  values: jax.Array
  log_scale: jax.Array


def _compute_dtype(dtype):
  """Return float32, or float64 when the input is float64."""
  return jnp.promote_types(dtype, jnp.float32)


def _project(x, projection):
  """Return x W^T for x [..., d] and projection W [m, d], in >= float32."""
  if projection.ndim != 2:
    raise ValueError(
        f'projection must have shape [n_features, depth], got shape '
        f'{projection.shape}.')
  if x.ndim < 1 or x.shape[-1] != projection.shape[1]:
    raise ValueError(
        f'x must have shape [..., {projection.shape[1]}] to match projection '
        f'of shape {projection.shape}, got shape {x.shape}.')
  dtype = _compute_dtype(x.dtype)
  x = x.astype(dtype)
  return x, jnp.einsum('...d,md->...m', x, projection.astype(dtype))


def _exponential_features(log_features, stabilizer):
  """Return Features for phi = exp(log_features) / sqrt(n_features).

  With stabilizer 'position', c = max over the feature axis is subtracted
  before exp, so every position has max(values) = 1 / sqrt(n_features).
  """
  if stabilizer not in STABILIZERS:
    raise ValueError(
        f'stabilizer must be one of {STABILIZERS}, got {stabilizer!r}.')
  n_features = log_features.shape[-1]
  if stabilizer == 'position':
    log_scale = jax.lax.stop_gradient(jnp.max(log_features, axis=-1))
  else:
    log_scale = jnp.zeros(log_features.shape[:-1], log_features.dtype)
  values = jnp.exp(log_features - log_scale[..., None]) / math.sqrt(n_features)
  return Features(values, log_scale)


def positive_softmax_features(x, projection, stabilizer='position'):
  """Compute FAVOR+ positive random features for the softmax kernel.

  phi(x) = exp(W x - |x|^2 / 2) / sqrt(m), for W of shape [m, d] with rows
  w ~ N(0, I_d) (or orthogonal rows with Gaussian marginals). Because
  E_w[exp(w.(q + k))] = exp(|q + k|^2 / 2), each term has expectation
  exp(|q + k|^2 / 2 - |q|^2 / 2 - |k|^2 / 2) = exp(q . k), so
  E[phi(q) . phi(k)] = exp(q . k), and every feature is positive.

  The caller scales x by d^-1/4 beforehand, so that q . k becomes
  q . k / sqrt(d), the scaled dot product of softmax attention.

  Args:
    x: queries or keys of shape [..., d], already scaled by d^-1/4.
    projection: random matrix W of shape [m, d].
    stabilizer: 'position' subtracts the maximum log-feature of each position
      and returns it as `log_scale`. 'none' returns the raw features with
      `log_scale` 0. In float32 they underflow to 0 or overflow to inf once
      |w.x - |x|^2 / 2| exceeds about 87.

  Returns:
    `Features` with values of shape [..., m] in float32 (float64 for float64
    input) and log_scale of shape [...].
  """
  x, projected = _project(x, projection)
  squared_norm = 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)
  return _exponential_features(projected - squared_norm, stabilizer)


def hyperbolic_softmax_features(x, projection, stabilizer='position'):
  """Compute FAVOR+ hyperbolic random features for the softmax kernel.

  phi(x) = [exp(W x - |x|^2 / 2), exp(-W x - |x|^2 / 2)] / sqrt(2m). Since
  w and -w have the same distribution, each half is an unbiased estimate, so
  E[phi(q) . phi(k)] = exp(q . k). Pairing w with -w lowers the variance
  (the estimate uses cosh(w.(q + k)) in place of exp(w.(q + k))).

  Args:
    x: queries or keys of shape [..., d], already scaled by d^-1/4.
    projection: random matrix W of shape [m, d].
    stabilizer: 'position' or 'none', as in `positive_softmax_features`.

  Returns:
    `Features` with values of shape [..., 2m] in float32 (float64 for float64
    input) and log_scale of shape [...].
  """
  x, projected = _project(x, projection)
  squared_norm = 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)
  log_features = jnp.concatenate(
      [projected - squared_norm, -projected - squared_norm], axis=-1)
  return _exponential_features(log_features, stabilizer)


def trigonometric_softmax_features(x, projection):
  """Compute trigonometric random features for the softmax kernel.

  phi(x) = exp(|x|^2 / 2) [sin(W x), cos(W x)] / sqrt(m), for W of shape
  [m, d] with rows w ~ N(0, I_d). Since sin(a) sin(b) + cos(a) cos(b) =
  cos(a - b) and E_w[cos(w . (q - k))] = exp(-|q - k|^2 / 2),
  E[phi(q) . phi(k)] = exp(|q|^2 / 2 + |k|^2 / 2 - |q - k|^2 / 2) = exp(q . k).

  Unlike the exponential maps, these features can be negative. The attention
  denominator sum_j phi(q_i) . phi(k_j) can then be 0 or negative, and a
  denominator near 0 gives outputs far outside the range of v.
  `favor_trax.ops.linear_attention` only moves denominators of magnitude
  below sqrt(tiny). The variance of one feature product,
  exp(|q|^2 + |k|^2) (1 + exp(-2 |q - k|^2)) / 2 - exp(2 q . k), is large
  next to exp(q . k)^2 unless |q| and |k| are small.

  `log_scale` is |x|^2 / 2. The values carry the gradient of exp(|x|^2 / 2)
  through a factor exp(g - stop_gradient(g)) = 1 with g = |x|^2 / 2.

  Args:
    x: queries or keys of shape [..., d], already scaled by d^-1/4.
    projection: random matrix W of shape [m, d].

  Returns:
    `Features` with values of shape [..., 2m] in float32 (float64 for float64
    input), at most 1 / sqrt(m) in magnitude, and log_scale of shape [...].
  """
  x, projected = _project(x, projection)
  n_rows = projection.shape[0]
  half_squared_norm = 0.5 * jnp.sum(x * x, axis=-1)
  log_scale = jax.lax.stop_gradient(half_squared_norm)
  gradient_carrier = jnp.exp(half_squared_norm - log_scale)
  values = jnp.concatenate([jnp.sin(projected), jnp.cos(projected)], axis=-1)
  # Each row contributes sin(a) sin(b) + cos(a) cos(b), one estimate of
  # exp(-|q - k|^2 / 2), so the mean over rows divides by m, not 2m.
  values = values * (gradient_carrier / math.sqrt(n_rows))[..., None]
  return Features(values, log_scale)


def _is_concrete(value):
  """Return whether `value` is known outside of a JAX transformation."""
  return not isinstance(value, jax.core.Tracer)


def generalized_exponential_features(x, projection, coefficient,
                                     stabilizer='position'):
  """Compute generalized exponential random features for the softmax kernel.

  phi(x)_r = D exp(A |w_r|^2 + B w_r . x - |x|^2 / 2) / sqrt(m) for the rows
  w_r ~ N(0, I_d) of W, with B = sqrt(1 - 4A) and D = (1 - 4A)^(d / 4). For
  A < 1/4 a Gaussian integral gives
  E_w[exp(2A |w|^2 + B w . s)] = (1 - 4A)^(-d/2) exp(B^2 |s|^2 / (2 (1 - 4A))),
  so with s = q + k each term has expectation
  D^2 (1 - 4A)^(-d/2) exp(|q + k|^2 / 2 - |q|^2 / 2 - |k|^2 / 2) = exp(q . k).
  The second moment of one term,
  ((1 - 4A)^2 / (1 - 8A))^(d/2) exp(2 (1 - 4A) |q + k|^2 / (1 - 8A) -
  |q|^2 - |k|^2), is finite for A < 1/8. A = 0 gives
  `positive_softmax_features`. For A < 0 every feature is positive and
  bounded, since A |w|^2 + B w . x <= B^2 |x|^2 / (4 |A|).

  The identity needs rows with the N(0, I_d) distribution, as iid rows and
  orthogonal rows with 'chi' scaling have. With 'fixed' scaling the estimate
  is biased, as it is for positive features.

  A is under `jax.lax.stop_gradient`: the expectation does not depend on A, so
  a gradient through A would follow only the noise of the estimate.

  Args:
    x: queries or keys of shape [..., d], already scaled by d^-1/4.
    projection: random matrix W of shape [m, d].
    coefficient: A, a float or an array that broadcasts against x.shape[:-1],
      below 1/8. Queries and keys that are paired in attention need the same
      A. Concrete values are checked, and traced ones are not.
    stabilizer: 'position' or 'none', as in `positive_softmax_features`.

  Returns:
    `Features` with values of shape [..., m] in float32 (float64 for float64
    input) and log_scale of shape [...].
  """
  if _is_concrete(coefficient) and not np.all(np.asarray(coefficient) < 0.125):
    raise ValueError(
        f'coefficient A must be below 1/8 for a finite variance, got '
        f'{coefficient!r}.')
  x, projected = _project(x, projection)
  dtype = projected.dtype
  depth = projection.shape[1]
  a = jax.lax.stop_gradient(jnp.asarray(coefficient, dtype))[..., None]
  one_minus_4a = 1 - 4 * a
  squared_row_norms = jnp.sum(projection.astype(dtype)**2, axis=-1)
  log_features = (a * squared_row_norms + jnp.sqrt(one_minus_4a) * projected -
                  0.5 * jnp.sum(x * x, axis=-1, keepdims=True) +
                  0.25 * depth * jnp.log(one_minus_4a))
  return _exponential_features(log_features, stabilizer)


def favor_plus_plus_coefficient(rho):
  """Return the FAVOR++ coefficient A for the statistic rho >= 0.

  FAVOR++ is named after the optimal positive random features of
  Likhosherstov et al. (2022). This function picks the A of
  `generalized_exponential_features` that minimizes the mean, over all
  query-key pairs (x_i, y_j), of the log second moment of one feature
  product. With rho = mean_ij |x_i + y_j|^2 / d that mean is, up to a term
  free of A,
  (d/2) log((1 - 4A)^2 / (1 - 8A)) + 2 d rho (1 - 4A) / (1 - 8A).
  Its derivative in A is 0 where 16 A^2 - (2 - 4 rho) A - rho = 0, and the
  root below 1/8 is

      A = (1 - 2 rho - sqrt((2 rho + 1)^2 + 8 rho)) / 16 <= 0.

  rho = 0 gives A = 0, the positive features of FAVOR+.

  Args:
    rho: a float or array >= 0, for example from `favor_plus_plus_rho`.
      Concrete values are checked, and traced ones are not.

  Returns:
    A, of the shape of rho.
  """
  if _is_concrete(rho) and not np.all(np.asarray(rho) >= 0):
    raise ValueError(f'rho must be >= 0, got {rho!r}.')
  rho = jnp.asarray(rho)
  return (1 - 2 * rho - jnp.sqrt((2 * rho + 1)**2 + 8 * rho)) / 16


def _masked_moments(x, mask):
  """Return mean(x) [batch, heads, d] and mean(|x|^2) [batch, heads]."""
  if mask is None:
    weights = jnp.full(x.shape[:2], 1 / max(x.shape[1], 1), x.dtype)
  else:
    counts = jnp.sum(mask, axis=1, keepdims=True)
    weights = jnp.where(mask, 1 / jnp.maximum(counts, 1), 0).astype(x.dtype)
  # The where keeps inf or nan of masked positions out of the sums.
  x = jnp.where((weights > 0)[:, :, None, None], x, 0)
  mean = jnp.einsum('bl,blhd->bhd', weights, x)
  mean_squared_norm = jnp.einsum('bl,blh->bh', weights, jnp.sum(x * x, -1))
  return mean, mean_squared_norm


def favor_plus_plus_rho(queries, keys, query_mask=None, key_mask=None):
  """Compute rho = mean_ij |x_i + y_j|^2 / d for each example and head.

  The mean over all pairs of a query x_i and a key y_j equals
  mean|x|^2 + mean|y|^2 + 2 mean(x) . mean(y), which costs O(L d).

  NOTE: rho depends on every position. Causal attention that uses it lets the
  output at position i depend on later queries and keys, so causal attention
  needs a rho fixed in advance.

  Args:
    queries: feature-map inputs x of shape [batch, query_length, heads, d],
      already scaled by d^-1/4.
    keys: feature-map inputs y of shape [batch, key_length, heads, d].
    query_mask: optional bool array of shape [batch, query_length]. False
      excludes a query.
    key_mask: optional bool array of shape [batch, key_length]. False excludes
      a key.

  Returns:
    rho of shape [batch, 1, heads], which broadcasts against the
    [batch, length, heads] leading axes of queries and keys, in float32
    (float64 for float64 input), under `jax.lax.stop_gradient`. An example
    with no unmasked query or key gets the terms of that set as 0.
  """
  if queries.ndim != 4 or keys.ndim != 4:
    raise ValueError(
        f'queries and keys must have shape [batch, length, heads, d], got '
        f'shapes {queries.shape} and {keys.shape}.')
  if queries.shape[0] != keys.shape[0] or queries.shape[2:] != keys.shape[2:]:
    raise ValueError(
        f'keys must have the batch, heads and depth of queries '
        f'{queries.shape}, got shape {keys.shape}.')
  for name, mask, array in (('query_mask', query_mask, queries),
                            ('key_mask', key_mask, keys)):
    if mask is not None and mask.shape != array.shape[:2]:
      raise ValueError(
          f'{name} must have shape [batch, length] = {array.shape[:2]}, got '
          f'shape {mask.shape}.')
  return _favor_plus_plus_rho(queries, keys, query_mask, key_mask)


@jax.jit
def _favor_plus_plus_rho(queries, keys, query_mask, key_mask):
  """Compute `favor_plus_plus_rho` on validated inputs."""
  dtype = jnp.promote_types(_compute_dtype(queries.dtype), keys.dtype)
  queries = jax.lax.stop_gradient(queries.astype(dtype))
  keys = jax.lax.stop_gradient(keys.astype(dtype))

  query_mean, query_squared_norm = _masked_moments(queries, query_mask)
  key_mean, key_squared_norm = _masked_moments(keys, key_mask)
  mean_squared_sum = (query_squared_norm + key_squared_norm +
                      2 * jnp.sum(query_mean * key_mean, axis=-1))
  return (mean_squared_sum / queries.shape[-1])[:, None, :]


def favor_plus_plus_features(x, projection, rho, stabilizer='position'):
  """Compute FAVOR++ features: generalized exponential features with optimal A.

  A = `favor_plus_plus_coefficient(rho)`, and the features are
  `generalized_exponential_features(x, projection, A)`: positive, unbiased
  for exp(x . y), and bounded when rho > 0. Queries and keys that are paired
  in attention must get the same rho.

  Args:
    x: queries or keys of shape [..., d], already scaled by d^-1/4.
    projection: random matrix W of shape [m, d].
    rho: a float >= 0 or an array that broadcasts against x.shape[:-1], such
      as the [batch, 1, heads] output of `favor_plus_plus_rho`.
    stabilizer: 'position' or 'none', as in `positive_softmax_features`.

  Returns:
    `Features` with values of shape [..., m] in float32 (float64 for float64
    input) and log_scale of shape [...].
  """
  coefficient = favor_plus_plus_coefficient(rho)
  return generalized_exponential_features(x, projection, coefficient,
                                          stabilizer)


def relu_features(x, projection=None, epsilon=1e-3):
  """Compute ReLU features for generalized attention: ReLU(W x) + epsilon.

  This kernel phi(q) . phi(k) approximates no softmax. Attention weights are
  proportional to it directly. The positive `epsilon` keeps the attention
  denominator away from 0.

  Args:
    x: queries or keys of shape [..., d].
    projection: matrix W of shape [m, d], or None to use ReLU(x) + epsilon
      with m = d.
    epsilon: non-negative offset added to every feature.

  Returns:
    `Features` with values of shape [..., m] in float32 (float64 for float64
    input) and log_scale 0 of shape [...].
  """
  if epsilon < 0:
    raise ValueError(f'epsilon must be >= 0, got {epsilon!r}.')
  if projection is None:
    if x.ndim < 1:
      raise ValueError(f'x must have shape [..., d], got shape {x.shape}.')
    projected = x.astype(_compute_dtype(x.dtype))
  else:
    _, projected = _project(x, projection)
  values = jax.nn.relu(projected) + epsilon
  return Features(values, jnp.zeros(values.shape[:-1], values.dtype))
