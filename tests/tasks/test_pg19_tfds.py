"""Tests of reading PG-19 from a prepared tensorflow-datasets directory.

The prepared dataset is built offline: the real TFDS "pg19" builder runs on a
small corpus in PG-19's layout instead of its remote copy of the release.
"""

import pathlib

import numpy as np
import pytest

from tasks import pg19

tfds = pytest.importorskip('tensorflow_datasets')


@pytest.fixture(scope='module')
def prepared_tfds_dir(tmp_path_factory):
  """A TFDS data directory with "pg19" prepared from a small local corpus."""
  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.datasets.pg19 import pg19_dataset_builder
  # pylint: enable=g-import-not-at-top
  if not hasattr(pg19_dataset_builder, '_DATA_DIR'):
    pytest.skip('This tensorflow-datasets version reads PG-19 from a location '
                'the test cannot redirect.')

  source_dir = tmp_path_factory.mktemp('release')
  books = {'train': {'7': 'Seven.\n', '12': '  Twelve, with spaces.  \n'},
           'validation': {'3': 'Über three.'},
           'test': {'99': 'Ninety-nine.'}}
  for split, split_books in books.items():
    (source_dir / split).mkdir()
    for book_id, text in split_books.items():
      (source_dir / split / f'{book_id}.txt').write_text(text, encoding='utf-8')
  # The TFDS builder splits rows on every comma, so titles here have none.
  (source_dir / 'metadata.csv').write_text(
      ''.join(f'{book_id},Title {book_id},1900,link/{book_id}\n'
              for split_books in books.values() for book_id in split_books),
      encoding='utf-8')

  tfds_dir = tmp_path_factory.mktemp('tfds')
  # pylint: disable=protected-access
  original_data_dir = pg19_dataset_builder._DATA_DIR
  pg19_dataset_builder._DATA_DIR = tfds.core.Path(source_dir)
  try:
    builder = tfds.builder('pg19', data_dir=str(tfds_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  finally:
    pg19_dataset_builder._DATA_DIR = original_data_dir
  # pylint: enable=protected-access
  return tfds_dir, books


def test_tfds_reads_every_book(prepared_tfds_dir):
  tfds_dir, books = prepared_tfds_dir
  corpus = pg19.Pg19Corpus(tfds_data_dir=tfds_dir)

  for split, split_books in books.items():
    read = dict(corpus.books(split))
    # The TFDS builder strips whitespace around each book.
    assert read == {book_id: text.strip()
                    for book_id, text in split_books.items()}


def test_tfds_eval_stream_covers_tokens(prepared_tfds_dir):
  tfds_dir, books = prepared_tfds_dir
  corpus = pg19.Pg19Corpus(tfds_data_dir=tfds_dir)

  batches = list(corpus.eval_stream('validation', 2, 4))

  inputs = np.concatenate([batch[0] for batch in batches]).reshape(-1)
  weights = np.concatenate([batch[2] for batch in batches]).reshape(-1)
  expected = corpus.tokenize(books['validation']['3'])
  np.testing.assert_array_equal(inputs[weights == 1.0], expected)


def test_tfds_train_stream_is_seeded(prepared_tfds_dir):
  tfds_dir, _ = prepared_tfds_dir
  corpus = pg19.Pg19Corpus(tfds_data_dir=tfds_dir)

  first = [next(corpus.train_stream(2, 4, 0))[0] for _ in range(2)]

  np.testing.assert_array_equal(first[0], first[1])


def test_tfds_not_prepared_raises(tmp_path):
  with pytest.raises(pg19.DataError, match='not prepared') as error:
    pg19.Pg19Corpus(tfds_data_dir=tmp_path)

  message = str(error.value)
  assert str(tmp_path) in message
  assert 'download_and_prepare' in message
  assert 'deepmind/pg19' in message


def test_tfds_missing_dir_raises(tmp_path):
  missing = pathlib.Path(tmp_path) / 'absent'

  with pytest.raises(pg19.DataError, match='TFDS data directory not found') as (
      error):
    pg19.Pg19Corpus(tfds_data_dir=missing)

  assert str(missing) in str(error.value)
