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


def _padded_problem(seed, valid_length, padded_positions, heads=2,
                    n_features=6, depth_v=3):
  """Return a batch-1 problem and the same keys with padding inserted.

  Returns:
    (compact, padded, key_mask, valid_positions): compact and padded are
    tuples (q_values, k_values, v, key_log_scale). Padded keys hold nan
    features, inf values and a log scale of 500, which a correct mask keeps
    out of every sum.
  """
  compact = _random_problem(seed, 1, valid_length, heads=heads,
                            n_features=n_features, depth_v=depth_v,
                            log_scale_std=5.0)
  length = valid_length + len(padded_positions)
  key_mask = np.ones((1, length), dtype=bool)
  key_mask[0, list(padded_positions)] = False
  valid_positions = np.flatnonzero(key_mask[0])
  garbage = _random_problem(seed + 1, 1, length, heads=heads,
                            n_features=n_features, depth_v=depth_v)
  padded = []
  for array, filler in zip(compact, garbage):
    array_padded = filler.copy()
    array_padded[:, valid_positions] = array
    padded.append(array_padded)
  q_values, k_values, v, key_log_scale = padded
  k_values[:, ~key_mask[0]] = np.nan
  v[:, ~key_mask[0]] = np.inf
  key_log_scale[:, ~key_mask[0]] = 500.0
  return compact, (q_values, k_values, v, key_log_scale), key_mask, (
      valid_positions)


def _output_and_gradients(loss_fn, arguments):
  """Return the output and the gradients of loss_fn -> (loss, output)."""
  (_, output), gradients = jax.value_and_grad(
      loss_fn, argnums=(0, 1, 2), has_aux=True)(*arguments)
  return output, gradients


@pytest.mark.parametrize('causal', [False, True])
def test_key_mask_removes_keys_and_gradients(causal):
  # Padding at the start, in the middle and at the end of the sequence, and
  # chunks of 4 so that some chunks hold only padding.
  compact, padded, key_mask, valid_positions = _padded_problem(
      30, valid_length=9, padded_positions=(0, 1, 5, 6, 7, 8, 12, 15))
  cotangent = np.random.default_rng(31).normal(size=compact[2].shape).astype(
      np.float32)

  def attend(q_values, k_values, v, key_log_scale, key_mask):
    if causal:
      return linear_attention.causal_linear_attention(
          q_values, k_values, v, key_log_scale=key_log_scale, chunk_size=4,
          key_mask=key_mask)
    return linear_attention.bidirectional_linear_attention(
        q_values, k_values, v, key_mask=key_mask, key_log_scale=key_log_scale)

  def compact_loss(q_values, k_values, v):
    out = attend(q_values, k_values, v, compact[3], None)
    return jnp.sum(out * cotangent), out

  def padded_loss(q_values, k_values, v):
    out = attend(q_values, k_values, v, padded[3], key_mask)
    # Only the outputs at real positions enter the loss.
    return jnp.sum(out[:, valid_positions] * cotangent), out

  compact_out, compact_gradients = _output_and_gradients(compact_loss,
                                                         compact[:3])
  padded_out, padded_gradients = _output_and_gradients(padded_loss,
                                                       padded[:3])

  np.testing.assert_allclose(padded_out[:, valid_positions], compact_out,
                             rtol=1e-5, atol=1e-6)
  padding = np.flatnonzero(~key_mask[0])
  for name, padded_gradient, compact_gradient in zip(
      ('q', 'k', 'v'), padded_gradients, compact_gradients):
    padded_gradient = np.asarray(padded_gradient)
    scale = np.max(np.abs(compact_gradient))
    np.testing.assert_allclose(
        padded_gradient[:, valid_positions], compact_gradient, rtol=1e-4,
        atol=1e-5 * scale, err_msg=f'gradient with respect to {name}_values')
    np.testing.assert_array_equal(
        padded_gradient[:, padding], 0,
        err_msg=f'gradient with respect to {name}_values at padding')


def test_causal_key_mask_leading_padding_gives_zero():
  _, padded, key_mask, _ = _padded_problem(32, valid_length=3,
                                           padded_positions=(0, 1, 2))
  out = np.asarray(linear_attention.causal_linear_attention(
      *padded[:3], key_log_scale=padded[3], chunk_size=2, key_mask=key_mask))
  # Queries 0..2 see only padded keys.
  np.testing.assert_array_equal(out[:, :3], 0)
  assert np.all(np.isfinite(out))


def test_causal_step_key_mask_equals_deleted_keys():
  compact, padded, key_mask, valid_positions = _padded_problem(
      33, valid_length=6, padded_positions=(0, 3, 4, 9))
  expected = linear_attention.causal_linear_attention(
      *compact[:3], key_log_scale=compact[3], chunk_size=4)

  q_values, k_values, v, key_log_scale = padded
  state = linear_attention.init_causal_state(1, 2, 6, 3)
  step = jax.jit(linear_attention.causal_linear_attention_step)
  outputs = []
  for position in range(key_mask.shape[1]):
    state, output = step(state, q_values[:, position], k_values[:, position],
                         v[:, position], key_log_scale[:, position],
                         key_mask[:, position])
    outputs.append(output)
  outputs = np.stack(outputs, axis=1)

  assert np.all(np.isfinite(outputs))
  np.testing.assert_array_equal(outputs[:, 0], 0)
  np.testing.assert_allclose(outputs[:, valid_positions], expected,
                             rtol=1e-4, atol=1e-5)


def test_causal_key_mask_wrong_shape_raises():
  q_values, k_values, v, _ = _random_problem(34, 1, 4)
  with pytest.raises(ValueError, match='key_mask must have'):
    linear_attention.causal_linear_attention(
        q_values, k_values, v, key_mask=np.ones((1, 3), dtype=bool))


@pytest.mark.parametrize('causal', [False, True])
def test_signed_features_match_quadratic(causal):
  # Trigonometric features are signed. The sums must not assume positivity.
  q_values, k_values, v, key_log_scale = _random_problem(35, 2, 11)
  rng = np.random.default_rng(36)
  q_values = q_values * rng.choice([-1.0, 1.0], size=q_values.shape)
  k_values = k_values * rng.choice([-1.0, 1.0], size=k_values.shape)
  q_values, k_values = (array.astype(np.float32)
                        for array in (q_values, k_values))
  if causal:
    out = linear_attention.causal_linear_attention(
        q_values, k_values, v, key_log_scale=key_log_scale, chunk_size=4)
  else:
    out = linear_attention.bidirectional_linear_attention(
        q_values, k_values, v, key_log_scale=key_log_scale)
  expected = _quadratic_reference(q_values, k_values, v, key_log_scale,
                                  causal=causal)
  # Denominators near 0 amplify rounding, so the absolute tolerance scales
  # with the largest output.
  np.testing.assert_allclose(out, expected, rtol=1e-3,
                             atol=1e-5 * np.abs(expected).max())


def _long_sequence(length, depth, max_norm, seed):
  """Return q, k with norms spread over [0, max_norm] and v, as float32."""
  rng = np.random.default_rng(seed)
  arrays = []
  for _ in range(2):
    direction = rng.normal(size=(1, length, 1, depth))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    norms = rng.uniform(0, max_norm, size=(1, length, 1, 1))
    arrays.append(direction * norms)
  arrays.append(rng.normal(size=(1, length, 1, depth)))
  return [array.astype(np.float32) for array in arrays]


def test_low_precision_long_sequence_close():
  length, depth, n_features = 16_384, 16, 32
  q, k, v = _long_sequence(length, depth, max_norm=30.0, seed=37)
  projection = projections.orthogonal_gaussian_matrix(
      jax.random.PRNGKey(38), n_features, depth)

  def attend(q, k, v):
    scale = depth**-0.25
    q_features = features.positive_softmax_features(q * scale, projection)
    k_features = features.positive_softmax_features(k * scale, projection)
    arguments = (q_features.values, k_features.values, v)
    causal = linear_attention.causal_linear_attention(
        *arguments, key_log_scale=k_features.log_scale)
    bidirectional = linear_attention.bidirectional_linear_attention(
        *arguments, key_log_scale=k_features.log_scale)
    return causal, bidirectional

  # One jit for all runs compiles once, which takes most of the time.
  @jax.jit
  def attend_all(problems):
    return [attend(*problem) for problem in problems]

  dtypes = (jnp.bfloat16, jnp.float16)
  low = [[jnp.asarray(array, dtype) for array in (q, k, v)]
         for dtype in dtypes]
  # The float32 references get the same rounded inputs, so the comparison
  # measures the precision of the computation, not of the inputs.
  rounded = [[array.astype(jnp.float32) for array in problem]
             for problem in low]
  outputs = attend_all(low + rounded)

  for index, dtype in enumerate(dtypes):
    tolerance = float(jnp.finfo(dtype).eps)
    for mode, result, expected in zip(
        ('causal', 'bidirectional'), outputs[index],
        outputs[index + len(dtypes)]):
      name = f'{mode} attention in {jnp.dtype(dtype).name}'
      assert result.dtype == dtype, name
      result = np.asarray(result, np.float32)
      expected = np.asarray(expected, np.float32)
      assert np.all(np.isfinite(result)), name
      assert np.all(np.isfinite(expected)), name
      # Rounding the output to dtype moves it by at most eps/2 relative.
      np.testing.assert_allclose(result, expected, rtol=tolerance,
                                 atol=tolerance * np.abs(expected).max(),
                                 err_msg=name)


CAUSAL_STATE_FIELDS = ('kv_sum', 'k_sum', 'max_log_scale')


def _attend_in_blocks(problem, block_lengths, chunk_size, key_mask=None):
  """Run causal_linear_attention_with_state block by block.

  Returns:
    (final state, outputs of all blocks concatenated along the length).
  """
  q_values, k_values, v, key_log_scale = problem
  batch, _, heads, n_features = k_values.shape
  state = linear_attention.init_causal_state(batch, heads, n_features,
                                             v.shape[-1])
  outputs = []
  start = 0
  for block_length in block_lengths:
    block = slice(start, start + block_length)
    block_mask = None if key_mask is None else key_mask[:, block]
    state, output = linear_attention.causal_linear_attention_with_state(
        state, q_values[:, block], k_values[:, block], v[:, block],
        key_log_scale=key_log_scale[:, block], chunk_size=chunk_size,
        key_mask=block_mask)
    outputs.append(output)
    start += block_length
  return state, jnp.concatenate(outputs, axis=1)


@pytest.mark.parametrize('block_lengths, chunk_size', [
    ((5, 1, 7, 4), 4),
    ((17,), 4),
    ((3, 3, 3, 3, 3, 2), 8),
])
def test_with_state_blocks_match_full_pass(block_lengths, chunk_size):
  problem = _random_problem(40, 2, 17, log_scale_std=20.0)
  full = linear_attention.causal_linear_attention(
      *problem[:3], key_log_scale=problem[3], chunk_size=chunk_size)

  _, blocks = _attend_in_blocks(problem, block_lengths, chunk_size)
  np.testing.assert_allclose(blocks, full, rtol=1e-5, atol=1e-5)


def test_with_state_matches_step_outputs_and_state():
  problem = _random_problem(41, 2, 13, log_scale_std=20.0)
  q_values, k_values, v, key_log_scale = problem
  state = linear_attention.init_causal_state(2, 2, 6, 3)
  step = jax.jit(linear_attention.causal_linear_attention_step)
  outputs = []
  for position in range(13):
    state, output = step(state, q_values[:, position], k_values[:, position],
                         v[:, position], key_log_scale[:, position])
    outputs.append(output)

  block_state, blocks = _attend_in_blocks(problem, (6, 7), chunk_size=4)
  np.testing.assert_allclose(blocks, np.stack(outputs, axis=1), rtol=1e-5,
                             atol=1e-5)
  for name in CAUSAL_STATE_FIELDS:
    np.testing.assert_allclose(getattr(block_state, name),
                               getattr(state, name), rtol=1e-5, atol=1e-6,
                               err_msg=name)


def test_with_state_chunk_padding_leaves_state_unchanged():
  # Log scales far below 0: padding with log scale 0 would raise the running
  # maximum to 0 and underflow the sums.
  problem = list(_random_problem(42, 1, 6, log_scale_std=1.0))
  problem[3] = problem[3] - 500.0
  state, _ = _attend_in_blocks(problem, (6,), chunk_size=4)
  unpadded_state, _ = _attend_in_blocks(problem, (6,), chunk_size=3)

  np.testing.assert_allclose(state.max_log_scale,
                             np.max(problem[3], axis=1), rtol=1e-6)
  np.testing.assert_allclose(state.kv_sum, unpadded_state.kv_sum, rtol=1e-5)
  assert np.all(state.k_sum > 0)


def test_with_state_gradients_match_full_pass():
  problem = _random_problem(43, 2, 11, log_scale_std=1.0)
  key_log_scale = problem[3]
  cotangent = np.random.default_rng(44).normal(
      size=problem[2].shape).astype(np.float32)

  def full_loss(q_values, k_values, v):
    out = linear_attention.causal_linear_attention(
        q_values, k_values, v, key_log_scale=key_log_scale, chunk_size=4)
    return jnp.sum(out * cotangent)

  def block_loss(q_values, k_values, v):
    _, out = _attend_in_blocks((q_values, k_values, v, key_log_scale),
                               (4, 2, 5), chunk_size=4)
    return jnp.sum(out * cotangent)

  gradients = jax.grad(block_loss, argnums=(0, 1, 2))(*problem[:3])
  expected = jax.grad(full_loss, argnums=(0, 1, 2))(*problem[:3])
  for name, gradient, reference in zip(('q', 'k', 'v'), gradients, expected):
    scale = np.max(np.abs(reference))
    np.testing.assert_allclose(
        gradient, reference, rtol=1e-4, atol=1e-5 * scale,
        err_msg=f'gradient with respect to {name}_values')


def test_with_state_key_mask_equals_deleted_keys():
  compact, padded, key_mask, valid_positions = _padded_problem(
      45, valid_length=7, padded_positions=(2, 8, 9, 10))
  compact_state, expected = _attend_in_blocks(compact, (7,), chunk_size=4)
  padded_state, outputs = _attend_in_blocks(padded, (5, 6), chunk_size=4,
                                            key_mask=key_mask)

  np.testing.assert_allclose(outputs[:, valid_positions], expected,
                             rtol=1e-5, atol=1e-5)
  for name in CAUSAL_STATE_FIELDS:
    np.testing.assert_allclose(getattr(padded_state, name),
                               getattr(compact_state, name), rtol=1e-5,
                               atol=1e-6, err_msg=name)


def test_with_state_empty_block_returns_state():
  problem = _random_problem(46, 1, 0)
  state = linear_attention.init_causal_state(1, 2, 6, 3)
  new_state, out = linear_attention.causal_linear_attention_with_state(
      state, *problem[:3], key_log_scale=problem[3])
  assert out.shape == (1, 0, 2, 3)
  assert new_state is state


def test_with_state_wrong_state_shape_raises():
  q_values, k_values, v, _ = _random_problem(47, 1, 4)
  state = linear_attention.init_causal_state(1, 2, 6, 5)
  with pytest.raises(ValueError, match='state.kv_sum must have shape'):
    linear_attention.causal_linear_attention_with_state(
        state, q_values, k_values, v)
