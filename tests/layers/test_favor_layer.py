"""Tests for favor_trax.layers.favor.FavorAttention."""

import logging

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trax import layers as tl
from trax import shapes
from trax.layers import base

from favor_trax.layers import favor
from favor_trax.ops import exact
from favor_trax.ops import projections
from favor_trax.training import loop as training_loop
from favor_trax.training import trax_compat

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


@pytest.mark.parametrize('causal, kernel, extra', [
    (False, 'positive_softmax', {}),
    (True, 'positive_softmax', {}),
    (False, 'hyperbolic_softmax', {}),
    (True, 'hyperbolic_softmax', {}),
    (False, 'trigonometric_softmax', {}),
    (False, 'favor_plus_plus', {}),
    (True, 'favor_plus_plus', {'favor_plus_plus_rho': 0.1}),
])
def test_favor_layer_close_to_exact_attention(causal, kernel, extra):
  # Inputs of scale 0.5 keep |q|, |k| near 1, where the estimator's variance,
  # which grows like exp(2 |q + k|^2), is moderate.
  x = 0.5 * _inputs(seed=1)
  layer = _initialized_layer(x, causal=causal, kernel=kernel,
                             n_random_features=4096, mode='eval', **extra)
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


@pytest.mark.parametrize('kernel, extra', [
    ('positive_softmax', {}),
    ('hyperbolic_softmax', {}),
    ('favor_plus_plus', {'favor_plus_plus_rho': 0.3}),
    ('relu_no_projection', {}),
])
def test_favor_layer_predict_matches_causal_pass(kernel, extra):
  length = 9
  x = _inputs(seed=4, length=length)
  full_layer = _initialized_layer(x, causal=True, kernel=kernel, mode='eval',
                                  **extra)
  full_output = np.asarray(full_layer(x))

  decoder = favor.FavorAttention(
      D_MODEL, n_heads=N_HEADS, n_random_features=32, causal=True,
      kernel=kernel, redraw_every=1, mode='predict', **extra)
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


def test_favor_layer_predict_windows_match_causal_pass():
  length = 19
  x = _inputs(seed=5, length=length)
  full_layer = _initialized_layer(x, causal=True, mode='eval')
  full_output = np.asarray(full_layer(x))

  decoder = favor.FavorAttention(
      D_MODEL, n_heads=N_HEADS, n_random_features=32, causal=True,
      chunk_size=4, mode='predict')
  decoder.init(shapes.signature(x[:, :1]), rng=jax.random.PRNGKey(1))
  decoder.weights = full_layer.weights
  decoder.state = full_layer.state + (decoder.state[3],)
  decode = jax.jit(decoder.pure_fn)

  # Windows longer and shorter than a chunk, and a single position.
  window_state = decoder.state
  outputs = []
  for start, stop in [(0, 5), (5, 6), (6, 12), (12, 19)]:
    output, window_state = decode(x[:, start:stop], decoder.weights,
                                  window_state, decoder.rng)
    outputs.append(np.asarray(output))
  np.testing.assert_allclose(np.concatenate(outputs, axis=1), full_output,
                             rtol=1e-5, atol=1e-5)

  step_state = decoder.state
  for position in range(length):
    _, step_state = decode(x[:, position:position + 1], decoder.weights,
                           step_state, decoder.rng)
  for window_sum, step_sum in zip(window_state[3], step_state[3]):
    np.testing.assert_allclose(window_sum, step_sum, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('arguments, message', [
    (dict(n_heads=0), 'n_heads'),
    (dict(n_random_features=0), 'n_random_features'),
    (dict(redraw_every=-1), 'redraw_every'),
    (dict(kernel='cosine'), 'kernel'),
    (dict(mode='test'), 'mode'),
    (dict(dropout=1.5), 'dropout'),
    (dict(mode='predict', causal=False), 'causal=True'),
    (dict(projection='gaussian'), 'projection'),
    (dict(scaling='unit'), 'scaling'),
    (dict(projection='iid', scaling='fixed'), "scaling='chi'"),
    (dict(kernel='favor_plus_plus', causal=True), 'fixed favor_plus_plus_rho'),
    (dict(favor_plus_plus_rho=0.5), 'applies only'),
    (dict(kernel='favor_plus_plus', favor_plus_plus_rho=-1.0), '>= 0'),
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


@pytest.mark.parametrize('kernel, n_features', [
    ('positive_softmax', 12),
    ('hyperbolic_softmax', 24),
    ('trigonometric_softmax', 24),
    ('favor_plus_plus', 12),
    ('relu', 12),
    ('relu_no_projection', D_MODEL // N_HEADS),
])
def test_favor_layer_kernel_from_gin(kernel, n_features):
  gin.clear_config()
  try:
    gin.parse_config([
        f"favor_trax.FavorAttention.kernel = '{kernel}'",
        "favor_trax.FavorAttention.projection = 'iid'",
        'favor_trax.FavorAttention.n_random_features = 12',
    ])
    layer = favor.FavorAttention(D_MODEL, n_heads=N_HEADS)
  finally:
    gin.clear_config()

  assert layer.n_features == n_features
  projection = layer.draw_projection(jax.random.PRNGKey(0), 0)
  if kernel == 'relu_no_projection':
    assert projection.shape == (0, D_MODEL // N_HEADS)
  else:
    np.testing.assert_array_equal(
        projection,
        projections.iid_gaussian_matrix(
            jax.random.fold_in(jax.random.PRNGKey(0), 0), 12,
            D_MODEL // N_HEADS))


def test_favor_layer_fixed_scaling_row_norms():
  layer = favor.FavorAttention(D_MODEL, n_heads=N_HEADS, n_random_features=20,
                               scaling='fixed')
  projection = np.asarray(layer.draw_projection(jax.random.PRNGKey(1), 0))
  depth = D_MODEL // N_HEADS
  np.testing.assert_allclose(np.linalg.norm(projection, axis=-1),
                             np.sqrt(depth), rtol=1e-5)
  # Rows within a block of depth rows are orthogonal.
  block = projection[:depth]
  np.testing.assert_allclose(block @ block.T, depth * np.eye(depth),
                             atol=1e-4)


@pytest.mark.parametrize('causal', [False, True])
def test_favor_layer_relu_no_projection_matches_formula(causal):
  x = _inputs(seed=5, length=7)
  layer = _initialized_layer(x, causal=causal, kernel='relu_no_projection')
  assert layer.state[0].shape == (0, D_MODEL // N_HEADS)
  (w_q, b_q), (w_k, b_k), (w_v, b_v), (w_o, b_o) = (
      tuple(np.asarray(array, np.float64) for array in dense)
      for dense in layer.weights)

  def heads(w, b):
    return (x @ w + b).reshape(2, 7, N_HEADS, -1)

  q_features = np.maximum(heads(w_q, b_q), 0) + 1e-3
  k_features = np.maximum(heads(w_k, b_k), 0) + 1e-3
  scores = np.einsum('bqhm,bkhm->bhqk', q_features, k_features)
  if causal:
    scores = scores * np.tril(np.ones((7, 7)))
  weights = scores / scores.sum(-1, keepdims=True)
  attended = np.einsum('bhqk,bkhd->bqhd', weights, heads(w_v, b_v))
  expected = attended.reshape(2, 7, -1) @ w_o + b_o

  np.testing.assert_allclose(layer(x), expected, rtol=1e-4, atol=1e-5)


def _layer_with_identity_output(x, **kwargs):
  """A layer whose output projection is the identity, so it returns the
  attention output of the heads, concatenated."""
  layer = _initialized_layer(x, **kwargs)
  weights = list(layer.weights)
  weights[3] = (jnp.eye(D_MODEL), jnp.zeros(D_MODEL))
  layer.weights = tuple(weights)
  return layer


def test_favor_layer_dropout_on_attention_output():
  x = _inputs(seed=6)
  plain = np.asarray(_layer_with_identity_output(x)(x))
  dropped_layer = _layer_with_identity_output(x, dropout=0.5)
  dropped = np.asarray(dropped_layer(x))

  dropped_entries = dropped == 0
  assert 0.35 < dropped_entries.mean() < 0.65
  np.testing.assert_allclose(dropped[~dropped_entries],
                             2 * plain[~dropped_entries], rtol=1e-5)

  other_rng = np.asarray(dropped_layer(x, rng=jax.random.PRNGKey(7)))
  assert np.any((other_rng == 0) != dropped_entries)


def test_favor_layer_dropout_only_in_train_mode():
  x = _inputs(seed=6)
  for mode in ('eval', 'predict'):
    plain = _initialized_layer(x, causal=True, mode=mode)
    dropped = _initialized_layer(x, causal=True, mode=mode, dropout=0.5)
    np.testing.assert_array_equal(dropped(x), plain(x), err_msg=mode)


def test_favor_layer_dropout_logs_no_warning(caplog):
  with caplog.at_level(logging.WARNING):
    for _ in range(3):
      favor.FavorAttention(D_MODEL, n_heads=N_HEADS, dropout=0.1)
  assert not caplog.records


def _token_batches(seed):
  rng = np.random.default_rng(seed)
  while True:
    tokens = rng.integers(0, 16, size=(2, 8)).astype(np.int32)
    yield tokens, tokens, np.ones_like(tokens, dtype=np.float32)


def _tiny_model(mode):
  return tl.Serial(
      tl.Embedding(16, D_MODEL),
      favor.FavorAttention(D_MODEL, n_heads=N_HEADS, n_random_features=8,
                           redraw_every=1, mode=mode),
      tl.Dense(16),
      tl.LogSoftmax())


def _make_tiny_loop(output_dir, random_seed):
  sample_batch = next(_token_batches(0))
  return training_loop.make_loop(
      _tiny_model, _token_batches(1), _token_batches(2), sample_batch,
      str(output_dir), total_steps=100, tokens_per_step=16, warmup_steps=1,
      steps_per_checkpoint=2, steps_per_eval=1000, n_eval_batches=1,
      random_seed=random_seed)


def test_favor_layer_projection_survives_checkpoint(tmp_path):
  trax_compat.apply_all()
  loop = _make_tiny_loop(tmp_path, random_seed=0)
  loop.run(2)
  saved_projection, saved_key, saved_step = (
      np.asarray(array) for array in loop.model.sublayers[1].state)
  # Train call 1 redraws, so the saved projection is number 1, not the one
  # drawn at init.
  assert int(saved_step) == 2
  np.testing.assert_array_equal(
      saved_projection,
      loop.model.sublayers[1].draw_projection(saved_key, 1))

  # Another seed draws another projection at init, so only the checkpoint can
  # bring the saved one back.
  restored = _make_tiny_loop(tmp_path, random_seed=1)

  assert restored.step == 2
  restored_projection, restored_key, restored_step = (
      np.asarray(array) for array in restored.model.sublayers[1].state)
  np.testing.assert_array_equal(restored_projection, saved_projection)
  np.testing.assert_array_equal(restored_key, saved_key)
  assert int(restored_step) == 2


@pytest.mark.parametrize('length', [1, 3, 4, 11])
def test_favor_layer_causal_matches_quadratic_feature_formula(length):
  # The layer runs its projections and feature maps chunk by chunk. The
  # reference maps the whole sequence at once and normalizes the masked
  # L x L kernel matrix in float64.
  x = _inputs(seed=12, length=length)
  layer = _initialized_layer(x, causal=True, mode='eval')
  (w_q, b_q), (w_k, b_k), (w_v, b_v), (w_o, b_o) = (
      [np.asarray(array, np.float64) for array in pair]
      for pair in layer.weights)
  projection = np.asarray(layer.state[0], np.float64)
  x64 = x.astype(np.float64)
  depth = D_MODEL // N_HEADS

  def heads(w, b):
    return (x64 @ w + b).reshape(x.shape[0], length, N_HEADS, depth)

  def phi(y):
    y = y * depth**-0.25
    return np.exp(y @ projection.T - 0.5 * np.sum(y * y, -1, keepdims=True))

  scores = np.einsum('bqhm,bkhm->bhqk', phi(heads(w_q, b_q)),
                     phi(heads(w_k, b_k)))
  scores = scores * np.tril(np.ones((length, length)))
  attended = (np.einsum('bhqk,bkhd->bqhd', scores, heads(w_v, b_v)) /
              np.swapaxes(scores.sum(-1), 1, 2)[..., None])
  expected = attended.reshape(x.shape[0], length, -1) @ w_o + b_o
  np.testing.assert_allclose(layer(x), expected, rtol=1e-4, atol=1e-5)


def test_favor_layer_causal_backward_memory_per_position():
  # XLA's planned scratch memory for one forward and backward pass of the
  # causal layer, in units of one [length, d_model] float32 array. With q,
  # k and v and the [length, heads, m] feature maps stored for the
  # backward pass it is about 44 here. Computed per chunk, it is about 5.
  length, d_model = 4096, 64
  layer = favor.FavorAttention(d_model, n_heads=2, causal=True, chunk_size=64,
                               dropout=0.1, n_random_features=128)
  x = jnp.ones((1, length, d_model), jnp.float32)
  layer.init(shapes.signature(x), rng=jax.random.PRNGKey(0))
  weights, state = layer.weights, layer.state

  def forward_and_backward(x, weights, cotangent):
    def apply(x, weights):
      return layer.pure_fn(x, weights, state, jax.random.PRNGKey(1))[0]
    _, pullback = jax.vjp(apply, x, weights)
    return pullback(cotangent)

  analysis = jax.jit(forward_and_backward).lower(
      x, weights, x).compile().memory_analysis()
  assert analysis.temp_size_in_bytes < 8 * length * d_model * 4
