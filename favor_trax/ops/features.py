"""Random feature maps phi with E[phi(q) . phi(k)] equal to an attention kernel.

Linear attention replaces the kernel K(q, k) by phi(q) . phi(k), so that
sum_j K(q_i, k_j) v_j = phi(q_i) . (sum_j phi(k_j) v_j^T) costs O(L) instead of
O(L^2). The softmax kernel exp(x . y) has these estimators here:

* positive and hyperbolic features: FAVOR+ (Choromanski et al., "Rethinking
  Attention with Performers", ICLR 2021).
* trigonometric features: random Fourier features of the Gaussian kernel
  (Rahimi and Recht, "Random Features for Large-Scale Kernel Machines", NIPS
  2007) times exp(|x|^2 / 2), which can be negative.
* generalized exponential features and FAVOR++, the member of that family with
  the lowest variance for given data statistics (Likhosherstov et al., "Chefs'
  Random Tables: Non-Trigonometric Random Features", NeurIPS 2022).

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
