"""Tests for favor_trax.layers.favor.FavorAttention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trax import shapes
from trax.layers import base

from favor_trax.layers import favor
from favor_trax.ops import exact

D_MODEL = 16
N_HEADS = 2


def _inputs(seed=0, batch=2, length=10):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(batch, length, D_MODEL)).astype(np.float32)


def _initialized_layer(x, **kwargs):
  arguments = dict(d_model=D_MODEL, n_heads=N_HEADS, n_random_features=32,
                   chunk_size=4)
  arguments.update(kwargs)
  layer = favor.FavorAttention(**arguments)
  layer.init(shapes.signature(x), rng=jax.random.PRNGKey(0))
  return layer


def _exact_layer_output(layer, x, causal):
  """Apply the layer's dense weights around exact softmax attention."""
  (w_q, b_q), (w_k, b_k), (w_v, b_v), (w_o, b_o) = layer.weights
  batch, length, _ = x.shape

  def heads(w, b):
    return (x @ w + b).reshape(batch, length, N_HEADS, -1)

  attended = exact.softmax_attention(
      heads(w_q, b_q), heads(w_k, b_k), heads(w_v, b_v), causal=causal)
  return attended.reshape(batch, length, -1) @ w_o + b_o


@pytest.mark.parametrize('causal', [False, True])
@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_favor_layer_output_shape(causal, mode):
  x = _inputs(length=7)
  layer = _initialized_layer(x, causal=causal, mode=mode)
  y = layer(x)
  assert y.shape == x.shape
  assert y.dtype == jnp.float32
  assert np.all(np.isfinite(y))


def test_favor_layer_state_holds_projection():
  x = _inputs()
  layer = _initialized_layer(x, d_qk=6, n_random_features=20)
  projection, redraw_key, step = layer.state
  assert projection.shape == (20, 6)
  np.testing.assert_array_equal(
      projection, layer.draw_projection(redraw_key, 0))
  assert int(step) == 0


@pytest.mark.parametrize('causal', [False, True])
@pytest.mark.parametrize('kernel', ['positive_softmax', 'hyperbolic_softmax'])
def test_favor_layer_close_to_exact_attention(causal, kernel):
  # Inputs of scale 0.5 keep |q|, |k| near 1, where the estimator's variance,
  # which grows like exp(2 |q + k|^2), is moderate.
  x = 0.5 * _inputs(seed=1)
  layer = _initialized_layer(x, causal=causal, kernel=kernel,
                             n_random_features=4096, mode='eval')
  favor_output = np.asarray(layer(x))
  exact_output = np.asarray(_exact_layer_output(layer, x, causal))

  relative_error = (np.abs(favor_output - exact_output).mean() /
                    np.abs(exact_output).mean())
  assert relative_error < 0.05


def test_favor_layer_relu_kernel_runs():
  x = _inputs(length=6)
  layer = _initialized_layer(x, causal=True, kernel='relu')
  y = layer(x)
  assert y.shape == x.shape
  assert np.all(np.isfinite(y))


def test_favor_layer_eval_bitwise_repeatable():
  x = _inputs()
  layer = _initialized_layer(x, causal=True, redraw_every=1, mode='eval')
  projection_before = np.asarray(layer.state[0])
  first = np.asarray(layer(x))
  second = np.asarray(layer(x))
  np.testing.assert_array_equal(first, second)
  np.testing.assert_array_equal(layer.state[0], projection_before)
  assert int(layer.state[2]) == 0


def test_favor_layer_redraws_every_n_train_steps():
  x = _inputs()
  layer = _initialized_layer(x, causal=True, redraw_every=3)
  initial, redraw_key, _ = layer.state
  forward = jax.jit(layer.pure_fn)
  state = layer.state

  for call in range(1, 4):
    _, state = forward(x, layer.weights, state, layer.rng)
    np.testing.assert_array_equal(state[0], initial,
                                  err_msg=f'after train call {call}')
    assert int(state[2]) == call

  _, state = forward(x, layer.weights, state, layer.rng)
  assert not np.allclose(state[0], initial)
  np.testing.assert_allclose(
      state[0], layer.draw_projection(redraw_key, 1), rtol=1e-6)
  assert int(state[2]) == 4


def test_favor_layer_redraw_independent_of_inputs():
  layer = _initialized_layer(_inputs(), redraw_every=1)
  forward = jax.jit(layer.pure_fn)
  projections_seen = []
  for seed in (2, 3):
    state = layer.state
    for _ in range(2):
      _, state = forward(_inputs(seed), layer.weights, state, layer.rng)
    projections_seen.append(np.asarray(state[0]))
  np.testing.assert_array_equal(projections_seen[0], projections_seen[1])


def test_favor_layer_no_redraw_when_zero():
  x = _inputs()
  layer = _initialized_layer(x, redraw_every=0)
  initial = np.asarray(layer.state[0])
  for _ in range(3):
    layer(x)
  np.testing.assert_array_equal(layer.state[0], initial)
  assert int(layer.state[2]) == 3


def test_favor_layer_eval_never_redraws():
  x = _inputs()
  layer = _initialized_layer(x, redraw_every=2, mode='eval')
  initial = np.asarray(layer.state[0])
  for _ in range(5):
    layer(x)
  np.testing.assert_array_equal(layer.state[0], initial)
  assert int(layer.state[2]) == 0


def test_favor_layer_gradients_finite():
  x = _inputs()
  layer = _initialized_layer(x, causal=True)

  def loss(weights):
    y, _ = layer.pure_fn(x, weights, layer.state, layer.rng)
    return jnp.sum(y**2)

  gradients = jax.tree_util.tree_leaves(jax.grad(loss)(layer.weights))
  assert len(gradients) == 8
  for gradient in gradients:
    assert np.all(np.isfinite(gradient))
  assert all(np.any(gradient != 0) for gradient in gradients)


@pytest.mark.parametrize('kernel', ['positive_softmax', 'hyperbolic_softmax'])
def test_favor_layer_predict_matches_causal_pass(kernel):
  length = 9
  x = _inputs(seed=4, length=length)
  full_layer = _initialized_layer(x, causal=True, kernel=kernel, mode='eval')
  full_output = np.asarray(full_layer(x))

  decoder = favor.FavorAttention(
      D_MODEL, n_heads=N_HEADS, n_random_features=32, causal=True,
      kernel=kernel, redraw_every=1, mode='predict')
  decoder.init(shapes.signature(x[:, :1]), rng=jax.random.PRNGKey(1))
  decoder.weights = full_layer.weights
  decoder.state = full_layer.state + (decoder.state[3],)

  # A two-position prefix, then one position per call.
  decode = jax.jit(decoder.pure_fn)
  state = decoder.state
  outputs = []
  for start, stop in [(0, 2)] + [(i, i + 1) for i in range(2, length)]:
    output, state = decode(x[:, start:stop], decoder.weights, state,
                           decoder.rng)
    outputs.append(np.asarray(output))
  np.testing.assert_allclose(np.concatenate(outputs, axis=1), full_output,
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(state[0], full_layer.state[0])
  assert int(state[2]) == 0


@pytest.mark.parametrize('arguments, message', [
    (dict(n_heads=0), 'n_heads'),
    (dict(n_random_features=0), 'n_random_features'),
    (dict(redraw_every=-1), 'redraw_every'),
    (dict(kernel='cosine'), 'kernel'),
    (dict(mode='test'), 'mode'),
    (dict(dropout=1.5), 'dropout'),
    (dict(mode='predict', causal=False), 'causal=True'),
])
def test_favor_layer_invalid_arguments_raise(arguments, message):
  with pytest.raises(ValueError, match=message):
    favor.FavorAttention(D_MODEL, **arguments)


def test_favor_layer_wrong_input_depth_raises():
  x = _inputs()
  layer = _initialized_layer(x)
  # Trax re-raises errors from forward as LayerError with the message.
  with pytest.raises(base.LayerError, match='d_model=16'):
    layer(np.ones((2, 5, 8), np.float32))
