"""Tests of perplexities, bits per byte and bits per dimension."""

import math

import pytest

from tasks import metrics


def test_token_perplexity_constant_loss():
  # 100 tokens at 2 nats each.
  assert metrics.token_perplexity(200.0, 100) == pytest.approx(math.exp(2.0))


def test_bits_per_byte_eight_bits():
  # 8 bits per byte is 8 ln(2) nats per byte.
  nll = 100 * 8 * math.log(2)
  assert metrics.bits_per_byte(nll, 100) == pytest.approx(8.0)


def test_word_perplexity_hand_computation():
  # Every token costs `loss` nats and every word has `tokens_per_word` tokens,
  # so each word costs tokens_per_word * loss nats, the log word perplexity.
  loss = 0.7
  tokens_per_word = 6
  num_words = 250
  num_tokens = tokens_per_word * num_words
  nll = loss * num_tokens

  scores = metrics.language_model_scores(nll, num_tokens, num_tokens,
                                         num_words)

  assert scores['nll_per_word'] == pytest.approx(tokens_per_word * loss)
  assert math.log(scores['word_perplexity']) == pytest.approx(
      tokens_per_word * loss)
  assert scores['word_perplexity'] == pytest.approx(
      metrics.word_perplexity(nll, num_words))


def test_word_perplexity_full_pg19_scale():
  # 1 bit per byte and 6 bytes per word over the PG-19 test split's words.
  num_words = 6_966_499
  num_bytes = 6 * num_words
  nll = num_bytes * math.log(2)
  assert metrics.bits_per_byte(nll, num_bytes) == pytest.approx(1.0)
  assert metrics.word_perplexity(nll, num_words) == pytest.approx(2.0**6)


def test_language_model_scores_labels():
  scores = metrics.language_model_scores(1000.0, 500, 400, 100)
  assert set(scores) == {'nll_per_token', 'token_perplexity', 'bits_per_byte',
                         'word_perplexity', 'nll_per_word'}
  assert scores['nll_per_token'] == pytest.approx(2.0)
  assert scores['token_perplexity'] == pytest.approx(math.exp(2.0))
  assert scores['bits_per_byte'] == pytest.approx(1000.0 / math.log(2) / 400)
  assert scores['word_perplexity'] == pytest.approx(math.exp(10.0))


def test_bits_per_dimension_image():
  num_subpixels = 3 * 64 * 64 * 10
  nll = 3.5 * math.log(2) * num_subpixels
  scores = metrics.image_model_scores(nll, num_subpixels)
  assert scores['bits_per_dimension'] == pytest.approx(3.5)
  assert scores['nll_per_subpixel'] == pytest.approx(3.5 * math.log(2))
  assert metrics.bits_per_dimension(nll, num_subpixels) == pytest.approx(3.5)


def test_huge_perplexity_is_inf():
  assert metrics.word_perplexity(1e6, 10) == math.inf


def test_nan_nll_gives_nan():
  scores = metrics.language_model_scores(math.nan, 10, 10, 2)
  assert math.isnan(scores['token_perplexity'])
  assert math.isnan(scores['bits_per_byte'])
  assert math.isnan(scores['word_perplexity'])


@pytest.mark.parametrize('bad_count', [0, -3, 2.5, True, None])
def test_invalid_count_raises(bad_count):
  with pytest.raises(ValueError, match='num_words'):
    metrics.word_perplexity(1.0, bad_count)


@pytest.mark.parametrize('bad_nll', [-1.0, math.inf])
def test_invalid_nll_raises(bad_nll):
  with pytest.raises(ValueError, match='Total NLL'):
    metrics.token_perplexity(bad_nll, 10)
