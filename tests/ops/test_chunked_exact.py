"""Tests of query-chunked exact attention and blocked local attention."""

import jax
import numpy as np
import pytest

from favor_trax.ops import chunked_exact
from favor_trax.ops import exact


def _qkv(seed, batch=2, length=13, heads=2, depth=4):
  rng = np.random.default_rng(seed)
  shape = (batch, length, heads, depth)
  return tuple(rng.normal(size=shape).astype(np.float32) for _ in range(3))


def _banded_reference(q, k, v, block_size, causal):
  """Softmax attention in float64 with the local band as an explicit mask."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  length = q.shape[1]
  logits = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
  query_block = np.arange(length)[:, None] // block_size
  key_block = np.arange(length)[None, :] // block_size
  allowed = key_block >= query_block - 1
  if causal:
    allowed &= np.arange(length)[None, :] <= np.arange(length)[:, None]
  else:
    allowed &= key_block <= query_block + 1
  logits = np.where(allowed, logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum('bhqk,bkhd->bqhd', weights, v)


@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.parametrize('length,chunk_size', [(13, 4), (16, 4), (1, 4),
                                               (5, 16)])
def test_chunked_equals_exact(causal, length, chunk_size):
  q, k, v = _qkv(length, length=length)

  got = chunked_exact.query_chunked_softmax_attention(
      q, k, v, causal=causal, chunk_size=chunk_size)

  expected = exact.softmax_attention(q, k, v, causal=causal)
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_chunked_respects_key_mask():
  q, k, v = _qkv(0)
  key_mask = np.ones((2, 13), bool)
  key_mask[1, 9:] = False

  got = chunked_exact.query_chunked_softmax_attention(
      q, k, v, causal=False, chunk_size=4, key_mask=key_mask)

  expected = exact.softmax_attention(q, k, v, key_mask=key_mask)
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_chunked_gradients_equal_exact():
  q, k, v = _qkv(1)

  def loss(fn):
    return lambda q, k, v: (fn(q, k, v) ** 2).sum()

  chunked = jax.grad(loss(lambda q, k, v: chunked_exact.
                          query_chunked_softmax_attention(
                              q, k, v, causal=True, chunk_size=4)),
                     argnums=(0, 1, 2))(q, k, v)
  reference = jax.grad(loss(lambda q, k, v: exact.softmax_attention(
      q, k, v, causal=True)), argnums=(0, 1, 2))(q, k, v)
  for got, expected in zip(chunked, reference):
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)


def test_chunked_handles_empty_sequence():
  q, k, v = _qkv(0, length=0)
  out = chunked_exact.query_chunked_softmax_attention(q, k, v, causal=True)
  assert out.shape == (2, 0, 2, 4)


@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.parametrize('length,block_size', [(13, 4), (16, 4), (3, 4),
                                               (1, 1)])
def test_local_equals_banded_reference(causal, length, block_size):
  q, k, v = _qkv(length, length=length)

  got = chunked_exact.local_attention(q, k, v, block_size=block_size,
                                      causal=causal)

  expected = _banded_reference(q, k, v, block_size, causal)
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_local_with_long_block_equals_exact():
  q, k, v = _qkv(3)
  got = chunked_exact.local_attention(q, k, v, block_size=13, causal=True)
  expected = exact.softmax_attention(q, k, v, causal=True)
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_nonpositive_sizes_fail():
  q, k, v = _qkv(0)
  with pytest.raises(ValueError, match='chunk_size'):
    chunked_exact.query_chunked_softmax_attention(q, k, v, chunk_size=0)
  with pytest.raises(ValueError, match='block_size'):
    chunked_exact.local_attention(q, k, v, block_size=0)
