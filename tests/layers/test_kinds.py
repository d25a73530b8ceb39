"""Tests of the attention kinds: causality, shared weight layout, agreement."""

import jax
import numpy as np
import pytest
from trax import shapes

from favor_trax.layers import kinds
from favor_trax.ops import exact

D_MODEL = 16
LENGTH = 24
# LSH attention changes which earlier keys a query attends to when later keys
# hash differently, so it is excluded from the strict causality test.
STRICTLY_CAUSAL = ['favor', 'dot_product', 'local', 'none']


def _layer(kind, mode='eval', **kwargs):
  layer = kinds.KINDS[kind](D_MODEL, n_heads=2, causal=True, mode=mode,
                            **kwargs)
  layer.init(shapes.ShapeDtype((2, LENGTH, D_MODEL), np.float32))
  return layer


def _inputs(seed):
  return np.random.default_rng(seed).normal(
      size=(2, LENGTH, D_MODEL)).astype(np.float32)


@pytest.mark.parametrize('kind', STRICTLY_CAUSAL)
def test_causal_kind_ignores_later_inputs(kind):
  extra = {'block_size': 5} if kind == 'local' else {}
  layer = _layer(kind, **extra)
  x = _inputs(0)
  position = 11
  changed = x.copy()
  changed[:, position + 1:] = _inputs(1)[:, position + 1:] * 30

  np.testing.assert_allclose(np.asarray(layer(changed))[:, :position + 1],
                             np.asarray(layer(x))[:, :position + 1],
                             atol=1e-5)


@pytest.mark.parametrize('kind', ['dot_product', 'local', 'none'])
def test_kind_shares_favor_weight_layout(kind):
  favor_shapes = jax.tree_util.tree_map(np.shape, _layer('favor').weights)
  kind_shapes = jax.tree_util.tree_map(np.shape, _layer(kind).weights)
  assert kind_shapes == favor_shapes


def test_dot_product_equals_exact_attention_of_projections():
  layer = _layer('dot_product', query_chunk_size=5)
  x = _inputs(2)
  (w_q, b_q), (w_k, b_k), (w_v, b_v), (w_o, b_o) = layer.weights

  def heads(w, b):
    return (x @ np.asarray(w) + np.asarray(b)).reshape(2, LENGTH, 2, -1)

  attended = exact.softmax_attention(heads(w_q, b_q), heads(w_k, b_k),
                                     heads(w_v, b_v), causal=True)
  expected = np.asarray(attended).reshape(2, LENGTH, -1) @ np.asarray(w_o)
  expected += np.asarray(b_o)

  np.testing.assert_allclose(np.asarray(layer(x)), expected, atol=1e-5)


def test_favor_with_many_features_approaches_dot_product():
  favor_layer = _layer('favor', n_random_features=4096)
  exact_layer = _layer('dot_product')
  exact_layer.weights = favor_layer.weights
  x = _inputs(3) * 0.5

  favor_out = np.asarray(favor_layer(x))
  exact_out = np.asarray(exact_layer(x))

  relative_error = (np.linalg.norm(favor_out - exact_out) /
                    np.linalg.norm(exact_out))
  assert relative_error < 0.05


def test_identity_outputs_projected_values():
  layer = _layer('none')
  x = _inputs(4)
  (_, _), (_, _), (w_v, b_v), (w_o, b_o) = layer.weights
  expected = (x @ np.asarray(w_v) + np.asarray(b_v)) @ np.asarray(w_o)
  np.testing.assert_allclose(np.asarray(layer(x)), expected + np.asarray(b_o),
                             atol=1e-5)


@pytest.mark.parametrize('kind', ['dot_product', 'local'])
def test_exact_kinds_reject_predict_mode(kind):
  with pytest.raises(ValueError, match='predict'):
    kinds.KINDS[kind](D_MODEL, n_heads=2, causal=True, mode='predict')
