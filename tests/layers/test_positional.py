"""Tests of the positional encodings and of PerformerLM's choice among them."""

import gin
import numpy as np
import pytest
from trax import shapes
from trax.layers import base

from favor_trax.layers import positional
from favor_trax.models import performer_lm

SHAPE = (4, 3, 2)
D_EMBS = (6, 5, 3)
D_MODEL = sum(D_EMBS)
LENGTH = 24  # 4 * 3 * 2


def _axial(mode='eval', max_len=LENGTH, batch=2, length=LENGTH):
  layer = positional.AxialPositionalEncoding(
      D_MODEL, max_len, shape=SHAPE, d_embs=D_EMBS, mode=mode)
  layer.init(shapes.ShapeDtype((batch, length, D_MODEL), np.float32))
  return layer


def _reference_encoding(tables, length):
  """Build the encoding of positions 0..length-1 with loops, in numpy."""
  rows = []
  for position in range(length):
    row, rest = divmod(position, SHAPE[1] * SHAPE[2])
    column, channel = divmod(rest, SHAPE[2])
    rows.append(np.concatenate(
        [tables[0][row], tables[1][column], tables[2][channel]]))
  return np.stack(rows)


def test_axial_matches_numpy_reference():
  layer = _axial()
  tables = [np.asarray(table) for table in layer.weights]
  x = np.random.default_rng(0).normal(size=(2, LENGTH, D_MODEL))
  x = x.astype(np.float32)

  output = np.asarray(layer(x))

  expected = x + _reference_encoding(tables, LENGTH)[None]
  np.testing.assert_allclose(output, expected, rtol=1e-6, atol=1e-6)


def test_axial_tables_have_axis_shapes():
  layer = _axial()

  assert [table.shape for table in layer.weights] == [(4, 6), (3, 5), (2, 3)]


def test_axial_shorter_input_takes_first_positions():
  layer = _axial()
  tables = [np.asarray(table) for table in layer.weights]
  x = np.zeros((1, 7, D_MODEL), np.float32)

  np.testing.assert_allclose(np.asarray(layer(x))[0],
                             _reference_encoding(tables, 7), rtol=1e-6)


@pytest.mark.parametrize('call_lengths', [[1] * LENGTH, [5, 1, 7, 11]],
                         ids=['token_by_token', 'several_per_call'])
def test_axial_predict_equals_full_sequence(call_lengths):
  full = _axial(mode='eval')
  predict = _axial(mode='predict', length=1)
  predict.weights = full.weights
  x = np.random.default_rng(1).normal(size=(2, LENGTH, D_MODEL))
  x = x.astype(np.float32)

  pieces = []
  start = 0
  for call_length in call_lengths:
    pieces.append(np.asarray(predict(x[:, start:start + call_length])))
    start += call_length

  assert start == LENGTH
  assert int(predict.state) == LENGTH
  np.testing.assert_allclose(np.concatenate(pieces, axis=1),
                             np.asarray(full(x)), rtol=1e-6, atol=1e-6)


def test_axial_default_depths_split_evenly():
  layer = positional.AxialPositionalEncoding(32, 12288, shape=(64, 64, 3))
  layer.init(shapes.ShapeDtype((1, 8, 32), np.float32))

  assert [table.shape for table in layer.weights] == [(64, 11), (64, 11),
                                                      (3, 10)]


@pytest.mark.parametrize('arguments, message', [
    (dict(d_embs=(6, 5)), 'one depth per axis'),
    (dict(d_embs=(6, 5, 4)), 'sum to 15'),
    (dict(d_embs=(6, 0, 8)), 'positive'),
    (dict(shape=(4, 0, 2)), 'positive integers'),
    (dict(max_len=25), 'max_len = 25'),
    (dict(mode='decode'), 'mode'),
])
def test_axial_bad_arguments_raise(arguments, message):
  kwargs = dict(d_model=D_MODEL, max_len=LENGTH, shape=SHAPE, d_embs=D_EMBS)
  kwargs.update(arguments)

  with pytest.raises(ValueError, match=message):
    positional.AxialPositionalEncoding(**kwargs)


def test_axial_wrong_input_depth_raises():
  layer = positional.AxialPositionalEncoding(D_MODEL, LENGTH, shape=SHAPE,
                                             d_embs=D_EMBS)

  # Trax wraps errors raised during init in its LayerError.
  with pytest.raises(base.LayerError, match='inputs of depth 8'):
    layer.init(shapes.ShapeDtype((1, 4, 8), np.float32))


def test_axial_gradient_reaches_tables():
  import jax  # pylint: disable=import-outside-toplevel
  layer = _axial()
  x = np.ones((2, LENGTH, D_MODEL), np.float32)

  def loss(weights):
    y, _ = layer.pure_fn(x, weights, layer.state, layer.rng)
    return y.sum()

  gradients = jax.grad(loss)(layer.weights)

  # Each row of table i is used by prod(SHAPE) / SHAPE[i] positions, twice
  # per batch of 2.
  for axis, gradient in enumerate(gradients):
    uses = 2 * LENGTH // SHAPE[axis]
    np.testing.assert_allclose(np.asarray(gradient), uses)


def test_no_encoding_passes_input_through():
  layer = positional.NoPositionalEncoding(d_model=D_MODEL, max_len=LENGTH,
                                          mode='eval')
  x = np.random.default_rng(2).normal(size=(2, 5, D_MODEL)).astype(np.float32)
  layer.init(shapes.signature(x))

  np.testing.assert_array_equal(np.asarray(layer(x)), x)
  assert not layer.weights


def test_sinusoidal_is_trax_positional_encoding():
  layer = positional.SinusoidalPositionalEncoding(d_model=D_MODEL,
                                                  max_len=LENGTH, mode='eval')

  # Gin wraps Trax's class in a subclass, so compare the class names.
  assert type(layer).__name__ == 'PositionalEncoding'
  assert layer.name == 'PositionalEncoding'


# PerformerLM with each encoding.

VOCAB = 16
MODEL_LENGTH = 24

ENCODINGS = {
    'sinusoidal': positional.SinusoidalPositionalEncoding,
    'axial': lambda **kwargs: positional.AxialPositionalEncoding(
        shape=SHAPE, **kwargs),
    'none': positional.NoPositionalEncoding,
}


def _model(encoding, mode='eval'):
  model = performer_lm.PerformerLM(
      vocab_size=VOCAB, d_model=D_MODEL, d_ff=32, n_layers=1, n_heads=2,
      max_len=MODEL_LENGTH, dropout=0.0, positional_encoding=encoding,
      mode=mode)
  model.init(shapes.ShapeDtype((2, MODEL_LENGTH), np.int32))
  return model


def _tokens(seed):
  return np.random.default_rng(seed).integers(
      0, VOCAB, size=(2, MODEL_LENGTH)).astype(np.int32)


@pytest.mark.parametrize('name', sorted(ENCODINGS))
def test_model_with_encoding_gives_log_probabilities(name):
  log_probs = np.asarray(_model(ENCODINGS[name])(_tokens(0)))

  assert log_probs.shape == (2, MODEL_LENGTH, VOCAB)
  np.testing.assert_allclose(np.exp(log_probs).sum(-1), 1.0, rtol=1e-5)


def test_encodings_change_model_output():
  tokens = _tokens(0)
  outputs = {name: np.asarray(_model(encoding)(tokens))
             for name, encoding in ENCODINGS.items()}

  assert np.abs(outputs['axial'] - outputs['none']).max() > 1e-3
  assert np.abs(outputs['sinusoidal'] - outputs['none']).max() > 1e-3


def test_model_with_axial_encoding_is_causal():
  model = _model(ENCODINGS['axial'])
  tokens = _tokens(0)
  position = 9
  changed = tokens.copy()
  changed[:, position:] = _tokens(1)[:, position:]

  original = np.asarray(model(tokens))
  perturbed = np.asarray(model(changed))

  # The model shifts right, so the output at t predicts token t from < t.
  np.testing.assert_allclose(perturbed[:, :position + 1],
                             original[:, :position + 1], atol=1e-5)
  assert np.abs(perturbed[:, position + 1:]
                - original[:, position + 1:]).max() > 1e-3


def test_model_default_keeps_layer_layout():
  model = _model(positional.SinusoidalPositionalEncoding)

  encoding = model.sublayers[3]
  assert type(encoding).__name__ == 'PositionalEncoding'
  assert encoding.weights.shape == (MODEL_LENGTH, D_MODEL)


def test_gin_selects_axial_encoding():
  gin.clear_config()
  try:
    gin.parse_config([
        'PerformerLM.positional_encoding = '
        '@favor_trax.AxialPositionalEncoding',
        'favor_trax.AxialPositionalEncoding.shape = (4, 3, 2)',
        'favor_trax.AxialPositionalEncoding.d_embs = (6, 5, 3)',
    ])
    model = performer_lm.PerformerLM(
        vocab_size=VOCAB, d_model=D_MODEL, d_ff=32, n_layers=1, n_heads=2,
        max_len=MODEL_LENGTH, dropout=0.0, mode='eval')
  finally:
    gin.clear_config()
  model.init(shapes.ShapeDtype((2, MODEL_LENGTH), np.int32))

  encoding = model.sublayers[3]
  assert isinstance(encoding, positional.AxialPositionalEncoding)
  assert [table.shape for table in encoding.weights] == [(4, 6), (3, 5),
                                                         (2, 3)]
