"""Tests of predict-mode sampling against full causal passes."""

import functools

import jax
from jax import numpy as jnp
import numpy as np
import pytest
from trax import shapes

from favor_trax import decoding
from favor_trax.layers import favor
from favor_trax.models import performer_lm

VOCAB_SIZE = 16
MAX_LEN = 32


def _model_fn(attention_layer=None):
  attention_layer = attention_layer or functools.partial(
      favor.FavorAttention, n_random_features=32, chunk_size=4)
  return functools.partial(
      performer_lm.PerformerLM, vocab_size=VOCAB_SIZE, d_model=32, d_ff=64,
      n_layers=2, n_heads=2, max_len=MAX_LEN, dropout=0.0,
      attention_layer=attention_layer)


def _trained(model_fn, seed=7):
  """Return an eval-mode model whose projections differ from a fresh one."""
  model = model_fn(mode='eval')
  model.init(shapes.ShapeDtype((1, 8), jnp.int32),
             rng=jax.random.PRNGKey(seed))
  return model


def _favor_layers(layer):
  if isinstance(layer, favor.FavorAttention):
    return [layer]
  return [found for sublayer in layer.sublayers
          for found in _favor_layers(sublayer)]


def test_transfer_state_copies_projection():
  model_fn = _model_fn()
  trained = _trained(model_fn)
  fresh = model_fn(mode='predict')
  fresh.init(shapes.ShapeDtype((1, 1), jnp.int32))
  trained_projection = _favor_layers(trained)[0].state[0]
  fresh_projection = _favor_layers(fresh)[0].state[0]
  assert not np.allclose(trained_projection, fresh_projection)

  predict = decoding.predict_model(model_fn, trained.weights, trained.state,
                                   batch_size=1)
  for trained_layer, predict_layer in zip(_favor_layers(trained),
                                          _favor_layers(predict)):
    np.testing.assert_array_equal(predict_layer.state[0],
                                  trained_layer.state[0])
    assert len(predict_layer.state) == 4


@pytest.mark.parametrize('prompt_length', [0, 1, 5])
def test_greedy_matches_full_pass_argmax(prompt_length):
  model_fn = _model_fn()
  trained = _trained(model_fn)
  rng = np.random.default_rng(prompt_length)
  prompt = rng.integers(0, VOCAB_SIZE, (2, prompt_length)).astype(np.int32)
  n_new = MAX_LEN - prompt_length - 1

  predict = decoding.predict_model(model_fn, trained.weights, trained.state,
                                   batch_size=2)
  sampler = decoding.Sampler(predict, VOCAB_SIZE, max_len=MAX_LEN)
  greedy = sampler.sample(prompt, n_new, temperature=0.0)
  reference, _ = decoding.full_pass_greedy(
      trained, trained.weights, trained.state, prompt, n_new,
      length_multiple=8)

  np.testing.assert_array_equal(greedy, reference)
  # The decoded ids are not constant, so the comparison is not vacuous.
  assert len(np.unique(reference)) > 1


def test_greedy_without_projection_transfer_differs():
  model_fn = _model_fn()
  trained = _trained(model_fn)
  prompt = np.arange(6, dtype=np.int32)[None]
  predict = model_fn(mode='predict')
  predict.init(shapes.ShapeDtype((1, 1), jnp.int32))
  predict.weights = trained.weights
  sampler = decoding.Sampler(predict, VOCAB_SIZE, max_len=MAX_LEN)
  untransferred = sampler.sample(prompt, 20, temperature=0.0)
  reference, _ = decoding.full_pass_greedy(
      trained, trained.weights, trained.state, prompt, 20, length_multiple=8)
  assert not np.array_equal(untransferred, reference)


def test_sample_calls_are_independent():
  model_fn = _model_fn()
  trained = _trained(model_fn)
  predict = decoding.predict_model(model_fn, trained.weights, trained.state,
                                   batch_size=1)
  sampler = decoding.Sampler(predict, VOCAB_SIZE, max_len=MAX_LEN)
  prompt = np.array([[3, 1, 4]], np.int32)
  first = sampler.sample(prompt, 10, temperature=1.0, seed=3)
  second = sampler.sample(prompt, 10, temperature=1.0, seed=3)
  np.testing.assert_array_equal(first, second)
  assert len(sampler.token_seconds) == 10


def test_choose_tokens_top_k_keeps_most_likely():
  log_probs = jnp.log(jnp.array([[0.05, 0.4, 0.1, 0.3, 0.15]] * 4000))
  drawn = np.asarray(decoding.choose_tokens(
      log_probs, jax.random.PRNGKey(0), 1.0, 2))
  assert set(np.unique(drawn)) == {1, 3}
  # Renormalized over the top 2: 0.4 / 0.7 and 0.3 / 0.7.
  np.testing.assert_allclose(np.mean(drawn == 1), 4 / 7, atol=0.03)


def test_choose_tokens_temperature_sharpens():
  probabilities = np.array([0.1, 0.2, 0.7])
  log_probs = jnp.log(jnp.array([probabilities] * 20000))
  drawn = np.asarray(decoding.choose_tokens(
      log_probs, jax.random.PRNGKey(1), 0.5, 0))
  expected = probabilities ** 2 / np.sum(probabilities ** 2)
  frequencies = np.bincount(drawn, minlength=3) / len(drawn)
  np.testing.assert_allclose(frequencies, expected, atol=0.015)


def test_choose_tokens_zero_temperature_is_argmax():
  log_probs = jnp.log(jnp.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]]))
  drawn = decoding.choose_tokens(log_probs, jax.random.PRNGKey(0), 0.0, 0)
  np.testing.assert_array_equal(drawn, [1, 0])


def test_sampler_rejects_bad_requests():
  model_fn = _model_fn()
  trained = _trained(model_fn)
  predict = decoding.predict_model(model_fn, trained.weights, trained.state,
                                   batch_size=1)
  sampler = decoding.Sampler(predict, VOCAB_SIZE, max_len=MAX_LEN)
  with pytest.raises(ValueError, match='max_len = 32'):
    sampler.sample(np.zeros((1, 30), np.int32), 3)
  with pytest.raises(ValueError, match=r'ids in \[0, 16\)'):
    sampler.sample(np.array([[16]]), 1)
  with pytest.raises(ValueError, match='temperature'):
    sampler.sample(np.array([[1]]), 1, temperature=-1.0)
  with pytest.raises(ValueError, match='top_k'):
    sampler.sample(np.array([[1]]), 1, top_k=17)
  with pytest.raises(ValueError, match='n_new_tokens'):
    sampler.sample(np.array([[1]]), 0)
