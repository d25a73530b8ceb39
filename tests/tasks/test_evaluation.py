"""Tests of evaluation modes: non-overlapping, sliding and streaming windows.

The references score each token directly: a fake model whose loss at a
position is the length of the context there, and a tiny PerformerLM
run once per token on exactly the context that the mode promises.
"""

import functools
import math

import jax
from jax import numpy as jnp
import numpy as np
import pytest
from trax import layers as tl
from trax import shapes

from favor_trax import decoding
from favor_trax.layers import kinds
from favor_trax.layers import positional
from favor_trax.models import performer_lm
from favor_trax.training import config
from tasks import evaluation
from tasks import experiment
from tasks import pg19
from tasks import vocabulary
from tasks import windows

VOCAB_SIZE = 20

TINY_MODEL = dict(vocab_size=VOCAB_SIZE, d_model=16, d_ff=32, n_layers=2,
                  n_heads=2, dropout=0.0)


def _random_books(lengths, seed=0):
  """Books of random ids in [2, VOCAB_SIZE), each ended by the eos id 1."""
  rng = np.random.default_rng(seed)
  return [np.append(rng.integers(2, VOCAB_SIZE, size=length - 1),
                    vocabulary.EOS_ID).astype(np.int32)
          for length in lengths]


def _tiny_model_fn(**overrides):
  arguments = dict(TINY_MODEL, max_len=64)
  arguments.update(overrides)
  return functools.partial(performer_lm.PerformerLM, **arguments)


def _eval_model(model_fn, length, batch_size=2):
  model = model_fn(mode='eval')
  model.init(shapes.ShapeDtype((batch_size, length), jnp.int32),
             rng=jax.random.PRNGKey(3))
  return model


def _one_window_per_book(books, length, batch_size=2):
  """Batches that hold each book in a single window of `length` tokens."""
  return windows.batch_in_order(
      (windows.make_window(book, 0, length, vocabulary.PAD_ID)
       for book in books), batch_size, length, vocabulary.PAD_ID)


def _stream(model_fn, eval_model, books, window, batch_size=2):
  predict_model = decoding.predict_model(model_fn, eval_model.weights,
                                         eval_model.state, batch_size)
  evaluation.check_books_fit(predict_model, [len(book) for book in books],
                             window)
  return evaluation.score_books_streaming(predict_model, books, batch_size,
                                          window)


@pytest.mark.parametrize('window', [1, 8, 13])
def test_streaming_equals_one_pass_over_each_book(window):
  model_fn = _tiny_model_fn()
  eval_model = _eval_model(model_fn, 64)
  # Three books for a batch of two: one group of two, one of a single book.
  books = _random_books([37, 12, 25])

  expected = evaluation.score_tokens(
      eval_model, eval_model.weights, eval_model.state,
      _one_window_per_book(books, 64))
  nll, n_tokens, n_correct = _stream(model_fn, eval_model, books, window)

  assert n_tokens == sum(len(book) for book in books)
  assert n_tokens == expected[1]
  assert n_correct == expected[2]
  np.testing.assert_allclose(nll, expected[0], rtol=1e-5)


def test_streaming_without_positions_passes_max_len():
  model_fn = _tiny_model_fn(max_len=16,
                            positional_encoding=positional.NoPositionalEncoding)
  eval_model = _eval_model(model_fn, 128)
  books = _random_books([100, 41])

  expected = evaluation.score_tokens(
      eval_model, eval_model.weights, eval_model.state,
      _one_window_per_book(books, 128))
  nll, n_tokens, _ = _stream(model_fn, eval_model, books, 16)

  assert n_tokens == expected[1]
  np.testing.assert_allclose(nll, expected[0], rtol=1e-5)


def test_streaming_carries_context_across_windows():
  model_fn = _tiny_model_fn()
  eval_model = _eval_model(model_fn, 64)
  books = _random_books([40, 40])

  windowed = evaluation.score_tokens(
      eval_model, eval_model.weights, eval_model.state,
      _one_window_per_book(
          [book[start:start + 8] for book in books
           for start in range(0, 40, 8)], 8))
  streamed = _stream(model_fn, eval_model, books, 8)

  # Windows of 8 alone lose the earlier context that streaming keeps.
  assert abs(streamed[0] - windowed[0]) > 1e-3 * windowed[0]


@pytest.mark.parametrize('positional_encoding, limit', [
    (positional.SinusoidalPositionalEncoding, 32),
    (functools.partial(positional.AxialPositionalEncoding, shape=(4, 8)), 32),
    (positional.NoPositionalEncoding, None),
])
def test_position_limit(positional_encoding, limit):
  model = _tiny_model_fn(max_len=32,
                         positional_encoding=positional_encoding)(
                             mode='predict')
  assert evaluation.position_limit(model) == limit


def test_streaming_rejects_book_past_max_len():
  model = _tiny_model_fn(max_len=32)(mode='predict')
  # 30 tokens take 30 positions in calls of 10, but 36 in calls of 12.
  evaluation.check_books_fit(model, [30, 12], 10)
  with pytest.raises(config.ConfigError, match='max_len = 32'):
    evaluation.check_books_fit(model, [30, 12], 12)


@pytest.mark.parametrize('attention_layer, name', [
    (kinds.DotProductAttention, 'DotProductAttention'),
    (kinds.LocalAttention, 'LocalAttention'),
    (kinds.LSHAttention, 'LSHSelfAttention'),
])
def test_check_streamable_rejects_exact_attention(attention_layer, name):
  model = _tiny_model_fn(attention_layer=attention_layer)(mode='eval')
  with pytest.raises(config.ConfigError, match=name):
    evaluation.check_streamable(model)


@pytest.mark.parametrize('attention_layer', [kinds.FavorAttention,
                                             kinds.IdentityAttention])
def test_check_streamable_accepts_favor(attention_layer):
  model = _tiny_model_fn(attention_layer=attention_layer)(mode='eval')
  evaluation.check_streamable(model)


def _context_length_model(vocab_size):
  """A fake model whose log-probability at position i is -(i + 1).

  After tl.ShiftRight, position i of a window has i tokens of context, so
  the loss of a scored token is its context length plus one.
  """
  def log_probs(inputs):
    positions = jnp.arange(inputs.shape[1], dtype=jnp.float32)
    return -jnp.broadcast_to((positions + 1.0)[None, :, None],
                             inputs.shape + (vocab_size,))
  model = tl.Fn('ContextLength', log_probs)
  model.init(shapes.ShapeDtype((1, 4), jnp.int32))
  return model


def _expected_context(position, window, stride):
  """Context length that sliding windows give the token at `position`."""
  if position < window:
    return position
  window_index = -(-(position - window + 1) // stride)
  return position - window_index * stride


@pytest.mark.parametrize('window, stride', [(16, 16), (16, 5), (16, 1),
                                            (7, 3)])
def test_sliding_loss_reveals_context_length(corpus_dir, window, stride):
  corpus = pg19.Pg19Corpus(data_dir=corpus_dir)
  model = _context_length_model(corpus.vocabulary.vocab_size)

  nll, n_tokens, _ = evaluation.score_tokens(
      model, model.weights, model.state,
      corpus.eval_stream('train', 3, window, stride))

  book_lengths = corpus.book_token_counts('train')
  expected = sum(_expected_context(position, window, stride) + 1
                 for length in book_lengths for position in range(length))
  assert n_tokens == sum(book_lengths)
  assert nll == expected


def test_sliding_matches_per_token_reference(make_corpus):
  window, stride = 8, 3
  books = {'validation': {'1': 'abcdefghijklmnopqrstuvw', '2': 'short'}}
  corpus = pg19.Pg19Corpus(data_dir=make_corpus('sliding', books),
                           vocabulary=vocabulary.ByteVocabulary())
  model_fn = _tiny_model_fn(vocab_size=corpus.vocabulary.vocab_size)
  model = _eval_model(model_fn, window, batch_size=4)

  nll, n_tokens, _ = evaluation.score_tokens(
      model, model.weights, model.state,
      corpus.eval_stream('validation', 4, window, stride))

  # One window per token, starting `context` tokens before it.
  reference_windows = []
  reference_positions = []
  for _, tokens in corpus.tokenized_books('validation'):
    for position in range(len(tokens)):
      context = _expected_context(position, window, stride)
      reference_windows.append(windows.make_window(
          tokens, position - context, window, vocabulary.PAD_ID))
      reference_positions.append((context, tokens[position]))
  inputs = np.stack([ids for ids, _ in reference_windows])
  log_probs, _ = model.pure_fn(inputs, model.weights, model.state,
                               jax.random.PRNGKey(0))
  expected = -sum(float(log_probs[row, context, token])
                  for row, (context, token) in enumerate(reference_positions))

  assert n_tokens == len(reference_positions)
  np.testing.assert_allclose(nll, expected, rtol=1e-5)


def test_sliding_stride_equal_window_matches_non_overlapping(corpus_dir):
  corpus = pg19.Pg19Corpus(data_dir=corpus_dir)
  model_fn = _tiny_model_fn(vocab_size=corpus.vocabulary.vocab_size)
  model = _eval_model(model_fn, 16)

  plain = evaluation.score_tokens(model, model.weights, model.state,
                                  corpus.eval_stream('train', 2, 16))
  strided = evaluation.score_tokens(
      model, model.weights, model.state,
      corpus.eval_stream('train', 2, 16, stride=16))
  assert strided == plain


class TwoPiecesPerWord(vocabulary.Vocabulary):
  """Encodes every whitespace-separated word as two ids, 2 and 3."""

  @property
  def vocab_size(self):
    return 4

  def encode(self, text):
    return np.array([2, 3] * len(text.split()), dtype=np.int32)

  def decode(self, ids):
    raise NotImplementedError


def _constant_loss_model(loss, vocab_size):
  """A fake model that gives every token the log-probability -loss."""
  model = tl.Fn('ConstantLoss', lambda inputs: jnp.full(
      inputs.shape + (vocab_size,), -loss, jnp.float32))
  model.init(shapes.ShapeDtype((1, 4), jnp.int32))
  return model


@pytest.mark.parametrize('mode, stride', [('non_overlapping', None),
                                          ('sliding', 3)])
def test_word_perplexity_of_two_piece_words(make_corpus, mode, stride):
  loss = 0.75
  books = {'test': {'1': 'one two three\nfour five', '2': 'six  seven'}}
  corpus = pg19.Pg19Corpus(data_dir=make_corpus('words', books),
                           vocabulary=TwoPiecesPerWord())
  model = _constant_loss_model(loss, 4)

  results = experiment.evaluate_split(
      corpus, model, model.weights, model.state, 'test', 2, 8, step=0,
      eval_config=evaluation.EvalConfig(mode=mode, stride=stride))

  num_words, num_books = 7, 2
  assert results['num_words'] == num_words
  assert results['num_books'] == num_books
  assert results['num_tokens'] == 2 * num_words + num_books
  # Each word costs 2 * loss; each book's end-of-book token adds one loss.
  expected = 2 * loss + loss * num_books / num_words
  assert results['nll_per_word'] == pytest.approx(expected)
  assert math.log(results['word_perplexity']) == pytest.approx(expected)
  assert results['mode'] == mode
  assert results['window'] == 8
  assert results['stride'] == (stride or 8)


def test_evaluate_split_streaming_records_mode(make_corpus):
  books = {'test': {'1': 'It was the best of times.', '2': 'The end.'}}
  corpus = pg19.Pg19Corpus(data_dir=make_corpus('stream', books))
  model_fn = _tiny_model_fn(vocab_size=corpus.vocabulary.vocab_size)
  model = _eval_model(model_fn, 32)

  streamed = experiment.evaluate_split(
      corpus, model, model.weights, model.state, 'test', 2, 32, step=0,
      eval_config=evaluation.EvalConfig(mode='streaming', window=5),
      model_fn=model_fn)
  one_pass = experiment.evaluate_split(
      corpus, model, model.weights, model.state, 'test', 2, 32, step=0)

  assert (streamed['mode'], streamed['window'], streamed['stride']) == (
      'streaming', 5, 5)
  assert one_pass['mode'] == 'non_overlapping'
  assert streamed['num_tokens'] == one_pass['num_tokens']
  np.testing.assert_allclose(streamed['total_nll_nats'],
                             one_pass['total_nll_nats'], rtol=1e-5)


@pytest.mark.parametrize('arguments, message', [
    (dict(mode='overlapping'), 'mode must be one of'),
    (dict(mode='sliding'), 'needs EvalConfig.stride'),
    (dict(mode='streaming', stride=4), 'applies only to mode'),
    (dict(window=0), 'window'),
])
def test_eval_config_rejects_bad_settings(arguments, message):
  with pytest.raises(ValueError, match=message):
    evaluation.EvalConfig(**arguments)


def test_eval_config_rejects_stride_past_window():
  eval_config = evaluation.EvalConfig(mode='sliding', window=8, stride=9)
  with pytest.raises(config.ConfigError, match='stride must not exceed'):
    eval_config.window_and_stride(64)
