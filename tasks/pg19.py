"""PG-19 for language modeling: books to token windows, and split statistics.

PG-19 (Rae et al., 2019, "Compressive Transformers for Long-Range Sequence
Modelling") is a corpus of books from Project Gutenberg published before 1919,
split into train, validation and test by book.

`Pg19Corpus` reads books from one of three sources:
- `data_dir`: a local directory in PG-19's layout (see `pg19_sources`),
- `tfds_data_dir`: a TFDS data directory in which "pg19" is prepared,
- neither: a sample corpus of Python reference text written to `demo_dir`
  (see `demo_corpus`). It exercises the pipeline but is not PG-19.

Each book becomes the vocabulary's ids followed by the end-of-book id, and the
streams cut these into windows of `length` tokens, one book per window.
Batches are (inputs, targets, weights) with inputs equal to targets, as Trax
language models that shift right internally expect (see `windows`).

Example:
  corpus = Pg19Corpus(data_dir='/data/pg19')
  train = corpus.train_stream(batch_size=8, length=4096, seed=0)
  inputs, targets, weights = next(train)   # each of shape [8, 4096]
"""

import atexit
import dataclasses
import pathlib
import shutil
import tempfile
from typing import Dict, Iterator, List, Optional, Tuple, Union

from absl import logging
import gin
import numpy as np

from tasks import demo_corpus
from tasks import pg19_sources
from tasks import vocabulary as vocabulary_lib
from tasks import windows

# Public names of the readers, re-exported for callers of this module.
DataError = pg19_sources.DataError
SPLITS = pg19_sources.SPLITS
read_books = pg19_sources.read_books
read_metadata = pg19_sources.read_metadata
write_demo_corpus = demo_corpus.write_demo_corpus

# Whitespace-separated words in the full PG-19 validation and test splits, the
# denominators of PG-19's word-level perplexity.
# NOTE: not recomputed in this repository, which contains no full copy of PG-19.
FULL_PG19_WORD_COUNTS = {'validation': 3_007_061, 'test': 6_966_499}

PathLike = Union[str, pathlib.Path]


@dataclasses.dataclass(frozen=True)
class SplitStatistics:
  """Sizes of one split, counted over its non-empty books.

  Attributes:
    split: 'train', 'validation' or 'test'.
    num_books: books read, empty books excluded.
    num_tokens: tokens the evaluation stream weights 1, end-of-book ids
      included.
    num_bytes: UTF-8 bytes of the books' text.
    num_words: whitespace-separated words, sum of len(text.split()) per book.
  """
  split: str
  num_books: int
  num_tokens: int
  num_bytes: int
  num_words: int


@gin.configurable(module='pg19')
class Pg19Corpus:
  """PG-19 books as training and evaluation streams of token windows."""

  def __init__(self,
               data_dir: Optional[PathLike] = None,
               tfds_data_dir: Optional[PathLike] = None,
               vocabulary: Optional[vocabulary_lib.Vocabulary] = None,
               demo_dir: Optional[PathLike] = None,
               shuffle_buffer_books: int = 32):
    """Open the source of books and check it.

    Args:
      data_dir: directory in PG-19's layout.
      tfds_data_dir: TFDS data directory with "pg19" prepared. Give at most
        one of data_dir and tfds_data_dir. None and '' both mean not given.
      vocabulary: maps text to ids. Defaults to `ByteVocabulary()`.
      demo_dir: new or empty directory for the sample corpus, used only when
        neither data_dir nor tfds_data_dir is given. Defaults to a new
        temporary directory, removed when the process exits.
      shuffle_buffer_books: books whose windows the training stream shuffles
        together. Memory grows with it, because each buffered book is held
        as int32 ids, 4 bytes per token.

    Raises:
      DataError: the source is missing or not in the expected layout.
      ValueError: both data_dir and tfds_data_dir are given.
    """
    windows.check_positive_int('shuffle_buffer_books', shuffle_buffer_books)
    # An empty string, the usual default of a command-line flag, means unset.
    data_dir = data_dir or None
    tfds_data_dir = tfds_data_dir or None
    demo_dir = demo_dir or None
    if data_dir is not None and tfds_data_dir is not None:
      raise ValueError(
          f'Got both data_dir={data_dir} and tfds_data_dir={tfds_data_dir}. '
          'Pass only one source of PG-19.')

    if vocabulary is None:
      vocabulary = vocabulary_lib.ByteVocabulary()
    self.vocabulary = vocabulary
    self.shuffle_buffer_books = shuffle_buffer_books
    # True when the books are the bundled sample text rather than PG-19.
    self.is_sample_corpus = data_dir is None and tfds_data_dir is None
    if tfds_data_dir is not None:
      self.source = pg19_sources.TfdsPg19Source(tfds_data_dir)
    elif data_dir is not None:
      self.source = pg19_sources.LocalPg19Source(data_dir)
    else:
      if demo_dir is None:
        demo_dir = tempfile.mkdtemp(prefix='pg19_sample_')
        atexit.register(shutil.rmtree, demo_dir, ignore_errors=True)
      self.source = pg19_sources.LocalPg19Source(
          demo_corpus.write_demo_corpus(demo_dir))

    self._book_token_counts: Dict[str, List[int]] = {}
    self._statistics: Dict[str, SplitStatistics] = {}
    logging.info('Reading books from %s.', self.source.describe())

  def prepare_vocabulary(self, output_dir: PathLike) -> None:
    """Train or load the vocabulary of a run and save it in output_dir.

    A SentencePiece vocabulary reuses the model saved in output_dir, or
    trains on the train split's books in a fixed random order (seed 0), and
    saves its model there. A byte vocabulary needs nothing. Call this before
    anything is tokenized.
    """
    def train_texts():
      return (text for _, text in
              self.source.iter_books('train', shuffle_seed=0))

    self.vocabulary.prepare(output_dir, train_texts)

  def books(self, split: str) -> Iterator[Tuple[str, str]]:
    """Yield (book_id, text) for every non-empty book of a split, in order."""
    return self.source.iter_books(split)

  def tokenize(self, text: str) -> np.ndarray:
    """Encode a book to int32 ids followed by the end-of-book id: [tokens]."""
    ids = self.vocabulary.encode(text)
    return np.append(ids, self.vocabulary.eos_id).astype(np.int32)

  def tokenized_books(self, split: str) -> Iterator[Tuple[str, np.ndarray]]:
    """Yield (book_id, ids) for every non-empty book of a split, in order."""
    for book_id, text in self.books(split):
      yield book_id, self.tokenize(text)

  def split_statistics(self, split: str) -> SplitStatistics:
    """Count the books, tokens, bytes and words of a split.

    The first call for a split reads every book of it, and later calls reuse
    the counts.
    """
    pg19_sources.check_split(split)
    if split in self._statistics:
      return self._statistics[split]

    token_counts = []
    num_bytes = 0
    num_words = 0
    for _, text in self.books(split):
      token_counts.append(len(self.tokenize(text)))
      num_bytes += len(text.encode('utf-8'))
      num_words += len(text.split())

    statistics = SplitStatistics(
        split=split,
        num_books=len(token_counts),
        num_tokens=sum(token_counts),
        num_bytes=num_bytes,
        num_words=num_words)
    self._book_token_counts[split] = token_counts
    self._statistics[split] = statistics
    logging.info('PG-19 %s split statistics: %s', split, statistics)
    return statistics

  def book_token_counts(self, split: str) -> List[int]:
    """Return the token count of each non-empty book of a split, in order."""
    self.split_statistics(split)
    return list(self._book_token_counts[split])

  def eval_batch_count(self, split: str, batch_size: int, length: int,
                       stride: Optional[int] = None) -> int:
    """Return the number of batches that `eval_stream` yields."""
    windows.check_positive_int('batch_size', batch_size)
    stride = length if stride is None else stride
    windows.check_length_and_stride(length, stride)
    num_windows = sum(
        windows.count_sliding_windows(count, length, stride)
        for count in self.book_token_counts(split))
    return -(-num_windows // batch_size)

  def eval_stream(self, split: str, batch_size: int, length: int,
                  stride: Optional[int] = None) -> Iterator[windows.Batch]:
    """Yield batches that score every token of a split exactly once.

    Books come in order. With stride None or equal to `length`, each book is
    cut into consecutive windows of `length` tokens from its first token.
    With a smaller stride, windows start every `stride` tokens and weight
    only the tokens that no earlier window of the book scored (see
    `windows.sliding_windows`). The last window of a book is padded, and the
    last batch is filled up with rows of weight 0.

    Yields:
      (inputs, targets, weights): int32, int32 and float32 arrays of shape
      [batch_size, length], inputs equal to targets. Weights are 1.0 at the
      scored tokens and 0.0 at context tokens and padding.

    Raises:
      ValueError: batch_size, length or stride is not a positive integer, or
        stride is greater than length.
    """
    pg19_sources.check_split(split)
    windows.check_positive_int('batch_size', batch_size)
    stride = length if stride is None else stride
    windows.check_length_and_stride(length, stride)
    pad_id = self.vocabulary.pad_id

    def all_windows():
      for _, tokens in self.tokenized_books(split):
        for window in windows.sliding_windows(len(tokens), length, stride):
          yield windows.make_window(tokens, window.start, length, pad_id,
                                    window.first_scored)

    return windows.batch_in_order(all_windows(), batch_size, length, pad_id)

  def train_stream(self, batch_size: int, length: int, seed: int,
                   split: str = 'train') -> Iterator[windows.Batch]:
    """Yield shuffled training batches forever.

    Each epoch reads the books of the split in a random order and cuts each
    into windows from a random offset in [0, length), so the tokens before the
    offset are left out of that epoch. The windows of `shuffle_buffer_books`
    consecutive books are shuffled together. All randomness comes from a
    numpy Generator seeded with `seed`, so a seed always gives the same stream.

    Yields:
      (inputs, targets, weights): int32, int32 and float32 arrays of shape
      [batch_size, length], inputs equal to targets.

    Raises:
      DataError: an epoch yields no tokens.
    """
    pg19_sources.check_split(split)
    windows.check_positive_int('batch_size', batch_size)
    windows.check_positive_int('length', length)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
      raise ValueError(f'seed must be an integer, got {seed!r}.')
    return self._generate_train_batches(batch_size, length, seed, split)

  def _generate_train_batches(self, batch_size: int, length: int, seed: int,
                              split: str) -> Iterator[windows.Batch]:
    rng = np.random.default_rng(seed)
    pending = []
    epoch = 0
    while True:
      epoch += 1
      logging.info('Training stream: epoch %d over the %s split of %s '
                   '(seed %d).', epoch, split, self.source.describe(), seed)
      epoch_order_seed = int(rng.integers(2**31))
      buffer_tokens = []
      books_in_epoch = 0

      books = self.source.iter_books(split, shuffle_seed=epoch_order_seed)
      for _, text in books:
        tokens = self.tokenize(text)
        buffer_tokens.append(tokens)
        books_in_epoch += 1
        if len(buffer_tokens) == self.shuffle_buffer_books:
          yield from self._shuffle_buffer(buffer_tokens, pending, batch_size,
                                          length, rng)
          buffer_tokens = []
      yield from self._shuffle_buffer(buffer_tokens, pending, batch_size,
                                      length, rng)

      if books_in_epoch == 0:
        raise DataError(
            f'The {split} split of {self.source.describe()} has no non-empty '
            'book, so the training stream has nothing to yield. Check the '
            'warnings above about skipped books.')

  def _shuffle_buffer(self, buffer_tokens: List[np.ndarray], pending: list,
                      batch_size: int, length: int,
                      rng: np.random.Generator) -> Iterator[windows.Batch]:
    """Yield batches from the windows of the buffered books in random order.

    Windows left over after the last full batch stay in `pending` for the
    next buffer.
    """
    starts = []
    for book_index, tokens in enumerate(buffer_tokens):
      offset = windows.random_offset(len(tokens), length, rng)
      starts.extend((book_index, start) for start in
                    windows.window_starts(len(tokens), length, offset))

    for index in rng.permutation(len(starts)):
      book_index, start = starts[index]
      pending.append(windows.make_window(
          buffer_tokens[book_index], start, length, self.vocabulary.pad_id))
      if len(pending) == batch_size:
        yield windows.stack_windows(pending)
        pending.clear()
