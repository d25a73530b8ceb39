"""Tests of PerformerLM: causality, batch independence and bad arguments."""

import jax
import numpy as np
import pytest
from trax import shapes

from favor_trax.layers import favor
from favor_trax.models import performer_lm

VOCAB = 40
LENGTH = 24


def _model(mode='eval'):
  model = performer_lm.PerformerLM(
      vocab_size=VOCAB, d_model=32, d_ff=64, n_layers=2, n_heads=2,
      max_len=LENGTH, dropout=0.0, ff_chunk_size=5, mode=mode)
  model.init(shapes.ShapeDtype((2, LENGTH), np.int32))
  return model


def _tokens(seed):
  return np.random.default_rng(seed).integers(
      2, VOCAB, size=(2, LENGTH)).astype(np.int32)


def test_outputs_are_log_probabilities():
  log_probs = np.asarray(_model()(_tokens(0)))

  assert log_probs.shape == (2, LENGTH, VOCAB)
  np.testing.assert_allclose(np.exp(log_probs).sum(-1), 1.0, rtol=1e-5)


def test_prediction_ignores_current_and_later_tokens():
  model = _model()
  tokens = _tokens(0)
  position = 10
  changed = tokens.copy()
  changed[:, position:] = _tokens(1)[:, position:]

  original = np.asarray(model(tokens))
  perturbed = np.asarray(model(changed))

  # The model shifts right, so the output at t predicts token t from < t.
  np.testing.assert_allclose(perturbed[:, :position + 1],
                             original[:, :position + 1], atol=1e-5)
  assert np.abs(perturbed[:, position + 1:] - original[:, position + 1:]).max() > 1e-3


def test_examples_of_a_batch_are_independent():
  model = _model()
  tokens = _tokens(0)
  changed = tokens.copy()
  changed[1] = _tokens(2)[1]

  np.testing.assert_allclose(np.asarray(model(changed))[0],
                             np.asarray(model(tokens))[0], atol=1e-5)


@pytest.mark.parametrize('argument', ['vocab_size', 'd_model', 'n_layers',
                                      'n_heads'])
def test_nonpositive_size_fails(argument):
  sizes = dict(vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=2)
  sizes[argument] = 0
  with pytest.raises(ValueError, match=argument):
    performer_lm.PerformerLM(**sizes)


def test_unknown_mode_fails():
  with pytest.raises(ValueError, match='mode'):
    performer_lm.PerformerLM(vocab_size=VOCAB, mode='training')


def test_gin_binding_reaches_favor_attention():
  import gin  # pylint: disable=import-outside-toplevel
  gin.clear_config()
  try:
    gin.parse_config('favor_trax.FavorAttention.n_random_features = 7')
    model = _model()
  finally:
    gin.clear_config()

  layers = list(_favor_layers(model))
  assert len(layers) == 2
  for layer in layers:
    assert layer.state[0].shape == (7, 16)


def _favor_layers(layer):
  if isinstance(layer, favor.FavorAttention):
    yield layer
  for sublayer in layer.sublayers:
    yield from _favor_layers(sublayer)


def _residual_model(mode='eval'):
  model = performer_lm.PerformerLM(
      vocab_size=VOCAB, d_model=32, d_ff=64, n_layers=2, n_heads=2,
      max_len=LENGTH, dropout=0.0, ff_chunk_size=5, reversible=False,
      mode=mode)
  model.init(shapes.ShapeDtype((2, LENGTH), np.int32))
  return model


def _find_branch(layer):
  """Return the first Serial under layer that starts with a LayerNorm."""
  if layer.sublayers and layer.sublayers[0].name == 'LayerNorm':
    return layer
  for sublayer in layer.sublayers:
    found = _find_branch(sublayer)
    if found is not None:
      return found
  return None


def test_residual_model_adds_each_branch():
  model = _residual_model()
  tokens = _tokens(0)
  # ShiftRight, Embedding, Dropout, PositionalEncoding, then one residual
  # per attention and feed-forward branch, then LayerNorm, Dense, LogSoftmax.
  layers = model.sublayers
  assert len(layers) == 4 + 4 + 3
  residuals = layers[4:8]
  branches = [_find_branch(residual) for residual in residuals]
  assert [branch.sublayers[1].name for branch in branches] == [
      'FavorAttention', 'ChunkedFeedForward'] * 2

  def apply(layer, x):
    output, _ = layer.pure_fn(x, layer.weights, layer.state,
                              jax.random.PRNGKey(0))
    return np.asarray(output)

  x = tokens
  for layer in layers[:4]:
    x = apply(layer, x)
  for branch in branches:
    x = x + apply(branch, x)
  for layer in layers[8:]:
    x = apply(layer, x)
  np.testing.assert_allclose(apply(model, tokens), x, atol=1e-5)


def test_residual_model_is_causal():
  model = _residual_model()
  tokens = _tokens(0)
  position = 10
  changed = tokens.copy()
  changed[:, position:] = _tokens(1)[:, position:]
  original = np.asarray(model(tokens))
  altered = np.asarray(model(changed))
  np.testing.assert_allclose(altered[:, :position + 1],
                             original[:, :position + 1], atol=1e-6)
  assert not np.allclose(altered[:, position + 1:],
                         original[:, position + 1:], atol=1e-3)
