"""Scores of language and image models from a summed negative log-likelihood.

Every function takes the total NLL in nats over a corpus and a count, and
averages at the corpus level (total over total, not a mean of per-book
scores):
  token perplexity   = exp(nll / tokens)
  bits per byte      = nll / ln(2) / bytes
  word perplexity    = exp(nll / words), PG-19's headline metric, where words
                       are the whitespace-separated words of the original text
  bits per dimension = nll / ln(2) / subpixels, for images

A NaN NLL, as a diverged model produces, gives NaN scores instead of an error.
A perplexity too large for a float is returned as inf.
"""

import math
from typing import Dict

import numpy as np


def _check_nll(nll: float) -> None:
  if nll < 0 or nll == math.inf:
    raise ValueError(
        f'Total NLL must be finite and non-negative, got {nll!r}. Pass the sum '
        'of -log p(token) in nats over the weighted tokens.')


def _check_count(name: str, count) -> None:
  if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
    raise ValueError(f'{name} must be an integer, got {count!r}.')
  if count <= 0:
    raise ValueError(
        f'{name} must be positive, got {count}. A score needs a non-empty '
        'evaluation set.')


def _exp_or_inf(value: float) -> float:
  try:
    return math.exp(value)
  except OverflowError:
    return math.inf


def token_perplexity(nll: float, num_tokens: int) -> float:
  """Compute exp(nll / num_tokens)."""
  _check_nll(nll)
  _check_count('num_tokens', num_tokens)
  return _exp_or_inf(nll / num_tokens)


def bits_per_byte(nll: float, num_bytes: int) -> float:
  """Compute nll / ln(2) / num_bytes."""
  _check_nll(nll)
  _check_count('num_bytes', num_bytes)
  return nll / math.log(2) / num_bytes


def word_perplexity(nll: float, num_words: int) -> float:
  """Compute exp(nll / num_words), the word-level perplexity of PG-19."""
  _check_nll(nll)
  _check_count('num_words', num_words)
  return _exp_or_inf(nll / num_words)


def bits_per_dimension(nll: float, num_subpixels: int) -> float:
  """Compute nll / ln(2) / num_subpixels, where a subpixel is one channel."""
  _check_nll(nll)
  _check_count('num_subpixels', num_subpixels)
  return nll / math.log(2) / num_subpixels


def language_model_scores(nll: float, num_tokens: int, num_bytes: int,
                          num_words: int) -> Dict[str, float]:
  """Compute every text score from the total NLL in nats and the counts.

  `nll` sums over the same tokens as `num_tokens`. With PG-19's streams these
  include one end-of-book token per book, whose loss also enters bits per byte
  and word perplexity.

  Returns:
    A dict with keys 'nll_per_token' (nats), 'token_perplexity',
    'bits_per_byte', 'word_perplexity' and 'nll_per_word' (nats, the log of
    the word perplexity).
  """
  scores = {
      'token_perplexity': token_perplexity(nll, num_tokens),
      'bits_per_byte': bits_per_byte(nll, num_bytes),
      'word_perplexity': word_perplexity(nll, num_words),
  }
  scores['nll_per_token'] = nll / num_tokens
  scores['nll_per_word'] = nll / num_words
  return scores


def image_model_scores(nll: float, num_subpixels: int) -> Dict[str, float]:
  """Compute image scores from the total NLL in nats and the subpixel count.

  Returns:
    A dict with keys 'nll_per_subpixel' (nats) and 'bits_per_dimension'.
  """
  bits = bits_per_dimension(nll, num_subpixels)
  return {
      'nll_per_subpixel': nll / num_subpixels,
      'bits_per_dimension': bits,
  }
