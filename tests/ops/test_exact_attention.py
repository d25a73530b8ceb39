"""Tests for favor_trax.ops.exact against a per-query float64 loop."""

import jax.numpy as jnp
import numpy as np
import pytest

from favor_trax.ops import exact


def _loop_reference(q, k, v, causal=False, key_mask=None):
  """Softmax attention one (example, head, query) at a time, in float64."""
  q, k, v = (np.asarray(array, np.float64) for array in (q, k, v))
  batch, query_length, heads, depth = q.shape
  out = np.zeros((batch, query_length, heads, v.shape[-1]))
  for b in range(batch):
    for h in range(heads):
      for i in range(query_length):
        allowed = np.ones(k.shape[1], dtype=bool)
        if causal:
          allowed[i + 1:] = False
        if key_mask is not None:
          allowed &= key_mask[b]
        if not allowed.any():
          continue
        logits = k[b, allowed, h] @ q[b, i, h] / np.sqrt(depth)
        weights = np.exp(logits - logits.max())
        out[b, i, h] = weights @ v[b, allowed, h] / weights.sum()
  return out


@pytest.fixture(name='qkv')
def fixture_qkv():
  rng = np.random.default_rng(0)
  q = rng.normal(size=(2, 6, 3, 4)).astype(np.float32)
  k = rng.normal(size=(2, 6, 3, 4)).astype(np.float32)
  v = rng.normal(size=(2, 6, 3, 5)).astype(np.float32)
  return q, k, v


@pytest.mark.parametrize('causal', [False, True])
def test_softmax_attention_matches_loop(qkv, causal):
  out = exact.softmax_attention(*qkv, causal=causal)
  assert out.shape == (2, 6, 3, 5)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(
      out, _loop_reference(*qkv, causal=causal), rtol=1e-5, atol=1e-6)


def test_softmax_attention_key_mask(qkv):
  key_mask = np.array([[True] * 4 + [False] * 2, [True] * 6])
  out = exact.softmax_attention(*qkv, key_mask=key_mask)
  np.testing.assert_allclose(
      out, _loop_reference(*qkv, key_mask=key_mask), rtol=1e-5, atol=1e-6)


def test_softmax_attention_all_keys_masked_gives_zero(qkv):
  key_mask = np.array([[False] * 6, [True] * 6])
  out = np.asarray(exact.softmax_attention(*qkv, key_mask=key_mask))
  np.testing.assert_array_equal(out[0], 0)
  assert np.all(np.isfinite(out))


def test_softmax_attention_large_logits_finite():
  rng = np.random.default_rng(1)
  q = 100 * rng.normal(size=(1, 4, 1, 8)).astype(np.float32)
  k = 100 * rng.normal(size=(1, 4, 1, 8)).astype(np.float32)
  v = rng.normal(size=(1, 4, 1, 8)).astype(np.float32)
  out = exact.softmax_attention(q, k, v)
  np.testing.assert_allclose(out, _loop_reference(q, k, v), atol=1e-5)


def test_softmax_attention_keeps_bfloat16(qkv):
  q, k, v = (jnp.asarray(array, jnp.bfloat16) for array in qkv)
  out = exact.softmax_attention(q, k, v)
  assert out.dtype == jnp.bfloat16


def test_softmax_attention_causal_length_mismatch_raises(qkv):
  q, k, v = qkv
  with pytest.raises(ValueError, match='equal query and key lengths'):
    exact.softmax_attention(q[:, :3], k, v, causal=True)


def test_softmax_attention_bad_rank_raises(qkv):
  q, k, v = qkv
  with pytest.raises(ValueError, match='batch, length, heads, depth'):
    exact.softmax_attention(q[0], k, v)
