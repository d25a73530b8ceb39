"""Tests of PG-19 token streams, split statistics and gin configuration."""

import itertools

import gin
import numpy as np
import pytest

from tasks import pg19
from tasks import vocabulary
from tasks import windows


def tokenize_books(split_books):
  """Byte ids plus end-of-book id of each book, in book id order."""
  vocab = vocabulary.ByteVocabulary()
  return [np.append(vocab.encode(split_books[book_id]),
                    vocab.eos_id).astype(np.int32)
          for book_id in sorted(split_books, key=int)]


def weighted_tokens(batches):
  """Concatenate the tokens of weight 1 of all rows of all batches, in order."""
  pieces = []
  for inputs, _, weights in batches:
    for row_ids, row_weights in zip(inputs, weights):
      pieces.append(row_ids[row_weights == 1.0])
  return np.concatenate(pieces)


def is_slice(part, whole):
  """Return whether `part` equals whole[i:i + len(part)] for some i."""
  if len(part) > len(whole):
    return False
  candidates = np.lib.stride_tricks.sliding_window_view(whole, len(part))
  return bool((candidates == part).all(axis=1).any())


def check_batch(batch, batch_size, length):
  inputs, targets, weights = batch
  assert inputs.shape == (batch_size, length)
  assert targets.shape == (batch_size, length)
  assert weights.shape == (batch_size, length)
  assert inputs.dtype == np.int32
  assert targets.dtype == np.int32
  assert weights.dtype == np.float32
  np.testing.assert_array_equal(inputs, targets)
  assert set(np.unique(weights)) <= {0.0, 1.0}
  # Padding is id 0 with weight 0, and real tokens are never id 0.
  np.testing.assert_array_equal(inputs == 0, weights == 0.0)


@pytest.mark.parametrize('split', ['train', 'validation', 'test'])
@pytest.mark.parametrize('batch_size,length', [(1, 8), (3, 16), (4, 64),
                                               (2, 1000)])
def test_eval_stream_covers_every_token_once(corpus_dir, default_books, split,
                                             batch_size, length):
  corpus = pg19.Pg19Corpus(data_dir=corpus_dir)

  batches = list(corpus.eval_stream(split, batch_size, length))

  for batch in batches:
    check_batch(batch, batch_size, length)
  expected = np.concatenate(tokenize_books(default_books[split]))
  np.testing.assert_array_equal(weighted_tokens(batches), expected)
  assert len(batches) == corpus.eval_batch_count(split, batch_size, length)


def test_eval_windows_stay_in_one_book(corpus_dir, default_books):
  length = 16
  corpus = pg19.Pg19Corpus(data_dir=corpus_dir)

  rows = [(ids, weights)
          for inputs, _, batch_weights in corpus.eval_stream('train', 1, length)
          for ids, weights in zip(inputs, batch_weights)]

  expected_rows = []
  for tokens in tokenize_books(default_books['train']):
    expected_rows.extend(tokens[start:start + length]
                         for start in range(0, len(tokens), length))
  assert len(rows) == len(expected_rows)
  for (ids, weights), expected in zip(rows, expected_rows):
    np.testing.assert_array_equal(ids[weights == 1.0], expected)
    # Real tokens come first, padding after.
    assert weights[:len(expected)].all()


def test_eval_stream_is_repeatable(corpus_dir):
  corpus = pg19.Pg19Corpus(data_dir=corpus_dir)
  first = list(corpus.eval_stream('train', 2, 16))
  second = list(corpus.eval_stream('train', 2, 16))
  assert len(first) == len(second)
  for batch_a, batch_b in zip(first, second):
    np.testing.assert_array_equal(batch_a[0], batch_b[0])


def test_pg19_mini_eval_covers_validation(pg19_mini_dir):
  corpus = pg19.Pg19Corpus(data_dir=pg19_mini_dir)
  vocab = vocabulary.ByteVocabulary()
  expected = np.concatenate([
      np.append(vocab.encode(text), vocab.eos_id)
      for _, text in pg19.read_books(pg19_mini_dir, 'validation')])

  batches = list(corpus.eval_stream('validation', 8, 2048))

  np.testing.assert_array_equal(weighted_tokens(batches), expected)
  statistics = corpus.split_statistics('validation')
  assert statistics.num_tokens == len(expected)
  assert sum(batch[2].sum() for batch in batches) == statistics.num_tokens


def take_train_batches(corpus, seed, count, batch_size=3, length=16):
  stream = corpus.train_stream(batch_size, length, seed)
  return list(itertools.islice(stream, count))


def test_train_stream_same_seed_same_batches(corpus_dir):
  first = take_train_batches(pg19.Pg19Corpus(data_dir=corpus_dir), 0, 40)
  second = take_train_batches(pg19.Pg19Corpus(data_dir=corpus_dir), 0, 40)

  for batch_a, batch_b in zip(first, second):
    for array_a, array_b in zip(batch_a, batch_b):
      np.testing.assert_array_equal(array_a, array_b)


def test_train_stream_other_seed_differs(corpus_dir):
  corpus = pg19.Pg19Corpus(data_dir=corpus_dir)
  first = np.stack([batch[0] for batch in take_train_batches(corpus, 0, 40)])
  second = np.stack([batch[0] for batch in take_train_batches(corpus, 1, 40)])
  assert not np.array_equal(first, second)


def test_train_stream_windows_are_book_slices(corpus_dir, default_books):
  corpus = pg19.Pg19Corpus(data_dir=corpus_dir, shuffle_buffer_books=2)
  books = tokenize_books(default_books['train'])

  # 40 batches of 3 windows run through several epochs of this corpus.
  for batch in take_train_batches(corpus, 5, 40):
    check_batch(batch, 3, 16)
    inputs, _, weights = batch
    for ids, row_weights in zip(inputs, weights):
      real = ids[row_weights == 1.0]
      assert len(real) > 0
      assert any(is_slice(real, book) for book in books)


def test_train_stream_moves_window_offsets(make_corpus):
  # The text repeats every 16 characters, so windows of 16 cut at fixed
  # boundaries would all start with the same character.
  text = ''.join(chr(ord('a') + i % 16) for i in range(200))
  data_dir = make_corpus('one_book', {'train': {'1': text}})
  corpus = pg19.Pg19Corpus(data_dir=data_dir)

  first_ids = {int(batch[0][0, 0]) for batch in
               take_train_batches(corpus, 0, 100, batch_size=1, length=16)}

  assert len(first_ids) > 4


def test_train_stream_all_books_empty_raises(make_corpus):
  data_dir = make_corpus('blank', {'train': {'1': '', '2': '   '}})
  corpus = pg19.Pg19Corpus(data_dir=data_dir)

  with pytest.raises(pg19.DataError, match='no non-empty book') as error:
    next(corpus.train_stream(2, 8, 0))
  assert str(data_dir) in str(error.value)


@pytest.mark.parametrize('argument,value', [('batch_size', 0),
                                            ('length', -1),
                                            ('length', 2.0)])
def test_streams_reject_bad_sizes(corpus_dir, argument, value):
  corpus = pg19.Pg19Corpus(data_dir=corpus_dir)
  sizes = {'batch_size': 2, 'length': 8}
  sizes[argument] = value

  with pytest.raises(ValueError, match=argument):
    corpus.train_stream(seed=0, **sizes)
  with pytest.raises(ValueError, match=argument):
    corpus.eval_stream('validation', **sizes)


def test_train_stream_rejects_missing_seed(corpus_dir):
  corpus = pg19.Pg19Corpus(data_dir=corpus_dir)
  with pytest.raises(ValueError, match='seed'):
    corpus.train_stream(2, 8, None)


def test_split_statistics_counts(corpus_dir, default_books):
  corpus = pg19.Pg19Corpus(data_dir=corpus_dir)

  for split, split_books in default_books.items():
    statistics = corpus.split_statistics(split)
    texts = list(split_books.values())
    num_bytes = sum(len(text.encode('utf-8')) for text in texts)

    assert statistics.split == split
    assert statistics.num_books == len(texts)
    assert statistics.num_bytes == num_bytes
    assert statistics.num_tokens == num_bytes + len(texts)
    assert statistics.num_words == sum(len(text.split()) for text in texts)


def test_split_statistics_words_by_hand(make_corpus):
  books = {'test': {'1': 'one two  three\nfour', '2': '\tfive — six\n'}}
  corpus = pg19.Pg19Corpus(data_dir=make_corpus('words', books))

  statistics = corpus.split_statistics('test')

  # The em dash is a word of its own: one, two, three, four, five, —, six.
  assert statistics.num_words == 7
  assert statistics.num_books == 2


def test_character_vocabulary_tokens(corpus_dir, default_books):

  class CharacterVocabulary(vocabulary.Vocabulary):

    @property
    def vocab_size(self):
      return 0x110000 + 2

    def encode(self, text):
      return np.array([ord(char) + 2 for char in text], dtype=np.int32)

    def decode(self, ids):
      return ''.join(chr(i - 2) for i in ids if i >= 2)

  corpus = pg19.Pg19Corpus(data_dir=corpus_dir,
                           vocabulary=CharacterVocabulary())

  statistics = corpus.split_statistics('train')
  texts = default_books['train'].values()
  assert statistics.num_tokens == sum(len(text) + 1 for text in texts)
  batches = list(corpus.eval_stream('train', 2, 32))
  assert sum(batch[2].sum() for batch in batches) == statistics.num_tokens


def test_both_sources_raise(corpus_dir, tmp_path):
  with pytest.raises(ValueError, match='Pass only one source'):
    pg19.Pg19Corpus(data_dir=corpus_dir, tfds_data_dir=tmp_path)


def test_gin_binds_data_dir(corpus_dir):
  gin.clear_config()
  try:
    gin.parse_config([
        f'pg19.Pg19Corpus.data_dir = "{corpus_dir}"',
        'pg19.Pg19Corpus.vocabulary = @vocabulary.ByteVocabulary()',
        'Pg19Corpus.shuffle_buffer_books = 3',
    ])
    corpus = pg19.Pg19Corpus()
  finally:
    gin.clear_config()

  assert corpus.source.data_dir == corpus_dir
  assert corpus.shuffle_buffer_books == 3
  assert isinstance(corpus.vocabulary, vocabulary.ByteVocabulary)


def expected_context(position, length, stride):
  """Tokens of context of the token at `position` under sliding windows."""
  if position < length:
    return position
  # The first window that contains `position` among its last `stride`
  # tokens starts at k * stride with k * stride + length > position.
  window_index = -(-(position - length + 1) // stride)
  return position - window_index * stride


@pytest.mark.parametrize('num_tokens', [1, 7, 8, 9, 23, 24, 25])
@pytest.mark.parametrize('length,stride', [(8, 8), (8, 3), (8, 1), (5, 4)])
def test_sliding_windows_score_each_token_once(num_tokens, length, stride):
  # Token ids encode their positions, so a scored id identifies its token.
  tokens = np.arange(num_tokens, dtype=np.int32) + 2
  scored = []
  for window in windows.sliding_windows(num_tokens, length, stride):
    ids, weights = windows.make_window(tokens, window.start, length, 0,
                                       window.first_scored)
    for index in np.flatnonzero(weights):
      position = int(ids[index]) - 2
      # The context is every token of the window before the scored one.
      np.testing.assert_array_equal(ids[:index], tokens[position - index:
                                                        position])
      scored.append((position, int(index)))

  positions = [position for position, _ in scored]
  assert sorted(positions) == list(range(num_tokens))
  for position, context in scored:
    assert context == expected_context(position, length, stride), position
  assert len(windows.sliding_windows(num_tokens, length, stride)) == (
      windows.count_sliding_windows(num_tokens, length, stride))


def test_sliding_first_token_has_no_context():
  tokens = np.arange(20, dtype=np.int32) + 2
  first = windows.sliding_windows(20, 8, 3)[0]
  ids, weights = windows.make_window(tokens, first.start, 8, 0,
                                     first.first_scored)
  assert first == windows.EvalWindow(0, 0)
  assert ids[0] == tokens[0]
  assert weights[0] == 1.0


@pytest.mark.parametrize('split', ['train', 'validation'])
def test_eval_stream_stride_equal_length_is_non_overlapping(corpus_dir,
                                                            split):
  corpus = pg19.Pg19Corpus(data_dir=corpus_dir)
  plain = list(corpus.eval_stream(split, 3, 16))
  strided = list(corpus.eval_stream(split, 3, 16, stride=16))

  assert len(plain) == len(strided)
  for plain_batch, strided_batch in zip(plain, strided):
    for plain_array, strided_array in zip(plain_batch, strided_batch):
      np.testing.assert_array_equal(plain_array, strided_array)


def test_eval_stream_sliding_scores_every_token_once(corpus_dir,
                                                     default_books):
  corpus = pg19.Pg19Corpus(data_dir=corpus_dir)
  batches = list(corpus.eval_stream('train', 3, 16, stride=5))

  expected = np.concatenate(tokenize_books(default_books['train']))
  np.testing.assert_array_equal(weighted_tokens(batches), expected)
  assert len(batches) == corpus.eval_batch_count('train', 3, 16, stride=5)
  # Each later window of a book weights only its last 5 tokens.
  for _, _, weights in batches:
    for row in weights:
      if row.any() and not row[0]:
        assert np.flatnonzero(row)[0] == 16 - 5


@pytest.mark.parametrize('stride', [0, 17, 2.5])
def test_eval_stream_rejects_bad_stride(corpus_dir, stride):
  corpus = pg19.Pg19Corpus(data_dir=corpus_dir)
  with pytest.raises(ValueError, match='stride'):
    corpus.eval_stream('validation', 2, 16, stride=stride)
  with pytest.raises(ValueError, match='stride'):
    corpus.eval_batch_count('validation', 2, 16, stride=stride)
