"""Tests of ChunkedFeedForward against the same block run unchunked."""

import numpy as np
import pytest
from trax import shapes

from favor_trax.layers import feed_forward

CHUNK = 8


def _chunked_and_unchunked(x, chunk_size):
  chunked = feed_forward.ChunkedFeedForward(
      16, 32, chunk_size=chunk_size, mode='eval')
  unchunked = feed_forward.ChunkedFeedForward(16, 32, chunk_size=0,
                                              mode='eval')
  chunked.init(shapes.signature(x))
  unchunked.init(shapes.signature(x))
  unchunked.weights = chunked.weights
  return chunked, unchunked


@pytest.mark.parametrize('length', [1, CHUNK - 1, CHUNK, 3 * CHUNK + 5])
def test_chunked_equals_unchunked(length):
  x = np.random.default_rng(length).normal(size=(2, length, 16))
  x = x.astype(np.float32)
  chunked, unchunked = _chunked_and_unchunked(x, CHUNK)

  np.testing.assert_allclose(chunked(x), unchunked(x), atol=1e-6, rtol=1e-6)


def test_chunked_gradients_equal_unchunked():
  import jax  # pylint: disable=import-outside-toplevel
  x = np.random.default_rng(0).normal(size=(2, 3 * CHUNK + 5, 16))
  x = x.astype(np.float32)
  chunked, unchunked = _chunked_and_unchunked(x, CHUNK)

  def loss(layer, weights):
    y, _ = layer.pure_fn(x, weights, layer.state, layer.rng)
    return (y ** 2).sum()

  grads_chunked = jax.grad(lambda w: loss(chunked, w))(chunked.weights)
  grads_unchunked = jax.grad(lambda w: loss(unchunked, w))(unchunked.weights)
  for got, expected in zip(jax.tree_util.tree_leaves(grads_chunked),
                           jax.tree_util.tree_leaves(grads_unchunked)):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_negative_chunk_size_fails():
  with pytest.raises(ValueError, match='chunk_size'):
    feed_forward.ChunkedFeedForward(16, 32, chunk_size=-1)
