"""Tests of reading PG-19 books and metadata from a local directory."""

import shutil

import pytest

from tasks import pg19
from tasks import pg19_sources


def expected_order(split_books):
  return sorted(split_books, key=int)


@pytest.mark.parametrize('split', ['train', 'validation', 'test'])
def test_read_books_yields_every_book(corpus_dir, default_books, split):
  books = list(pg19.read_books(corpus_dir, split))

  assert [book_id for book_id, _ in books] == expected_order(
      default_books[split])
  for book_id, text in books:
    assert text == default_books[split][book_id]


def test_read_books_numeric_id_order(make_corpus):
  books = {'train': {'100': 'c', '9': 'a', '10': 'b', 'extra': 'd'},
           'validation': {'1': 'v'}, 'test': {'2': 't'}}
  data_dir = make_corpus('ordered', books)

  book_ids = [book_id for book_id, _ in pg19.read_books(data_dir, 'train')]

  assert book_ids == ['9', '10', '100', 'extra']


def test_read_books_ignores_other_files(corpus_dir):
  (corpus_dir / 'test' / 'README.md').write_text('not a book')
  (corpus_dir / 'test' / 'folder.txt').mkdir()

  book_ids = [book_id for book_id, _ in pg19.read_books(corpus_dir, 'test')]

  assert book_ids == ['99']


@pytest.mark.parametrize('split', ['train', 'validation', 'test'])
def test_pg19_mini_every_book_once(pg19_mini_dir, split):
  file_ids = sorted(path.stem for path in (pg19_mini_dir / split).glob('*.txt'))

  book_ids = [book_id for book_id, _ in pg19.read_books(pg19_mini_dir, split)]

  assert sorted(book_ids) == file_ids
  assert len(set(book_ids)) == len(book_ids)


def test_pg19_mini_metadata(pg19_mini_dir):
  metadata = pg19.read_metadata(pg19_mini_dir / 'metadata.csv')
  file_ids = {path.stem for path in pg19_mini_dir.glob('*/*.txt')}
  assert set(metadata) == file_ids
  assert all(row.title for row in metadata.values())


def test_metadata_quoted_commas(tmp_path):
  path = tmp_path / 'metadata.csv'
  path.write_text(
      '1,"Dombey and Son, Vol. 1",1848,link/1\n'
      '2,"He said ""Yes"", then left",1901,link/2\n'
      '\n'
      '3,Plain Title,,link/3\n', encoding='utf-8')

  metadata = pg19.read_metadata(path)

  assert list(metadata) == ['1', '2', '3']
  assert metadata['1'].title == 'Dombey and Son, Vol. 1'
  assert metadata['1'].publication_date == '1848'
  assert metadata['1'].link == 'link/1'
  assert metadata['2'].title == 'He said "Yes", then left'
  assert metadata['3'].publication_date == ''


def test_metadata_unquoted_commas(tmp_path):
  path = tmp_path / 'metadata.csv'
  path.write_text('5,War, Peace, and More,1869,link/5\n', encoding='utf-8')

  row = pg19.read_metadata(path)['5']

  assert row.title == 'War, Peace, and More'
  assert row.publication_date == '1869'
  assert row.link == 'link/5'


def test_metadata_short_row_raises(tmp_path):
  path = tmp_path / 'metadata.csv'
  path.write_text('1,Title,1900,link\n2,Only a title\n', encoding='utf-8')

  with pytest.raises(pg19.DataError, match='line 2') as error:
    pg19.read_metadata(path)
  assert str(path) in str(error.value)


def test_metadata_duplicate_id_raises(tmp_path):
  path = tmp_path / 'metadata.csv'
  path.write_text('1,A,1900,a\n1,B,1901,b\n', encoding='utf-8')

  with pytest.raises(pg19.DataError, match='Book id 1 appears twice') as error:
    pg19.read_metadata(path)
  assert str(path) in str(error.value)


def test_missing_data_dir_raises(tmp_path):
  missing = tmp_path / 'no_such_dir'

  with pytest.raises(pg19.DataError) as error:
    list(pg19.read_books(missing, 'train'))

  message = str(error.value)
  assert str(missing) in message
  assert 'metadata.csv' in message
  assert 'deepmind/pg19' in message
  assert 'tensorflow-datasets' in message


def test_missing_metadata_raises(corpus_dir):
  (corpus_dir / 'metadata.csv').unlink()

  with pytest.raises(pg19.DataError) as error:
    list(pg19.read_books(corpus_dir, 'train'))

  assert str(corpus_dir / 'metadata.csv') in str(error.value)
  assert 'deepmind/pg19' in str(error.value)


def test_missing_split_folder_raises(corpus_dir):
  shutil.rmtree(corpus_dir / 'validation')

  with pytest.raises(pg19.DataError) as error:
    list(pg19.read_books(corpus_dir, 'validation'))

  assert str(corpus_dir / 'validation') in str(error.value)
  assert 'train/, validation/ and test/' in str(error.value)


def test_other_splits_readable_without_one(corpus_dir):
  shutil.rmtree(corpus_dir / 'validation')
  assert [book_id for book_id, _ in pg19.read_books(corpus_dir, 'test')] == [
      '99']


def test_empty_split_raises(corpus_dir):
  for path in (corpus_dir / 'test').glob('*.txt'):
    path.unlink()

  with pytest.raises(pg19.DataError, match='empty') as error:
    list(pg19.read_books(corpus_dir, 'test'))

  assert str(corpus_dir / 'test') in str(error.value)


def test_unknown_split_raises(corpus_dir):
  with pytest.raises(ValueError, match="Unknown split 'dev'"):
    list(pg19.read_books(corpus_dir, 'dev'))


def test_empty_book_skipped_with_warning(make_corpus, caplog):
  books = {'train': {'1': 'First book.', '2': '', '3': ' \n\t\n', '4': 'Last.'},
           'validation': {'5': 'v'}, 'test': {'6': 't'}}
  data_dir = make_corpus('empty_books', books)

  book_ids = [book_id for book_id, _ in pg19.read_books(data_dir, 'train')]

  assert book_ids == ['1', '4']
  assert 'Skipping book 2' in caplog.text
  assert 'Skipping book 3' in caplog.text
  assert str(data_dir / 'train' / '2.txt') in caplog.text


def test_invalid_utf8_replaced_with_warning(make_corpus, caplog):
  # Two invalid sequences: a lone 0xFF byte and a truncated 3-byte sequence.
  # The valid U+FFFD in the file is not counted as a replacement.
  raw = b'caf\xc3\xa9 \xff ok \xe2\x82 end \xef\xbf\xbd'
  books = {'train': {'1': raw}, 'validation': {'2': 'v'}, 'test': {'3': 't'}}
  data_dir = make_corpus('bad_utf8', books)

  [(book_id, text)] = list(pg19.read_books(data_dir, 'train'))

  assert book_id == '1'
  assert text == 'café \ufffd ok \ufffd end \ufffd'
  assert 'Book 1' in caplog.text
  assert 'replaced 2 invalid byte sequences' in caplog.text


def test_valid_utf8_logs_no_warning(corpus_dir, caplog):
  list(pg19.read_books(corpus_dir, 'train'))
  assert 'not valid UTF-8' not in caplog.text


def test_file_without_metadata_row_is_read(make_corpus, default_books, caplog):
  rows = [['7', 'Seven', '1900', 'link/7']]
  data_dir = make_corpus('partial_metadata', default_books, rows)

  book_ids = [book_id for book_id, _ in pg19.read_books(data_dir, 'train')]

  assert book_ids == expected_order(default_books['train'])
  assert '3 books in' in caplog.text
  assert 'have no row in' in caplog.text


def test_metadata_row_without_file_warns(make_corpus, default_books, caplog):
  rows = [[book_id, 'Title', '1900', 'link']
          for split_books in default_books.values() for book_id in split_books]
  rows.append(['5000', 'Lost Book', '1900', 'link/5000'])
  data_dir = make_corpus('extra_metadata', default_books, rows)

  pg19_sources.LocalPg19Source(data_dir)

  assert '1 books in' in caplog.text
  assert 'no <book_id>.txt file' in caplog.text
  assert '5000' in caplog.text


def test_shuffled_order_is_seeded(make_corpus):
  books = {'train': {str(i): f'book {i}' for i in range(1, 30)},
           'validation': {'100': 'v'}, 'test': {'200': 't'}}
  source = pg19_sources.LocalPg19Source(make_corpus('many', books))

  def order(seed):
    return [book_id for book_id, _ in source.iter_books('train', seed)]

  assert order(3) == order(3)
  assert order(3) != order(4)
  assert sorted(order(3), key=int) == [str(i) for i in range(1, 30)]
