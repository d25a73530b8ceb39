"""Fixtures that write small corpora in PG-19's layout under tmp_path."""

import csv
import pathlib

import pytest

# Location of the optional real sample of PG-19, relative to the repository.
PG19_MINI_DIR = (pathlib.Path(__file__).resolve().parents[2] / '..' / 'shared'
                 / 'data' / 'pg19_mini')

# Books of the default fixture corpus: split -> {book_id: text}. Lengths vary
# around the window lengths that the tests use, and one text is multi-byte.
DEFAULT_BOOKS = {
    'train': {
        '7': 'It was a dark and stormy night; the rain fell in torrents.\n',
        '12': 'Short.',
        '105': 'Call me Ishmael. ' * 20,
        '42': 'Über die Brücke ging die Frau — langsam, ohne Eile.\n',
    },
    'validation': {
        '3': 'A tale of two cities, more or less. ' * 5,
        '30': 'x' * 16,
    },
    'test': {
        '99': 'The end is near, said the last line of the book.\n',
    },
}


def write_corpus(root, books=None, metadata_rows=None):
  """Write a corpus in PG-19's layout and return its directory.

  Args:
    root: directory to create.
    books: split -> {book_id: text or bytes}. Defaults to DEFAULT_BOOKS.
    metadata_rows: rows of metadata.csv. Defaults to one row per book.
  """
  root = pathlib.Path(root)
  books = DEFAULT_BOOKS if books is None else books
  for split, split_books in books.items():
    split_dir = root / split
    split_dir.mkdir(parents=True)
    for book_id, text in split_books.items():
      data = text if isinstance(text, bytes) else text.encode('utf-8')
      (split_dir / f'{book_id}.txt').write_bytes(data)

  if metadata_rows is None:
    metadata_rows = [[book_id, f'Title of {book_id}, a novel', '1900',
                      f'link/{book_id}']
                     for split_books in books.values()
                     for book_id in split_books]
  with open(root / 'metadata.csv', 'w', encoding='utf-8',
            newline='') as file:
    csv.writer(file).writerows(metadata_rows)
  return root


@pytest.fixture
def default_books():
  """Split -> {book_id: text} of the `corpus_dir` fixture."""
  return DEFAULT_BOOKS


@pytest.fixture
def make_corpus(tmp_path):
  """A function (name, books=None, metadata_rows=None) -> corpus directory."""

  def make(name, books=None, metadata_rows=None):
    return write_corpus(tmp_path / name, books, metadata_rows)

  return make


@pytest.fixture
def corpus_dir(tmp_path):
  """A corpus of DEFAULT_BOOKS in PG-19's layout."""
  return write_corpus(tmp_path / 'pg19')


@pytest.fixture
def pg19_mini_dir():
  """The shared sample of real PG-19 books, or a skip when it is absent."""
  if not (PG19_MINI_DIR / 'metadata.csv').is_file():
    pytest.skip(f'Real PG-19 sample not found at {PG19_MINI_DIR}.')
  return PG19_MINI_DIR
