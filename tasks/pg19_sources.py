"""Readers of PG-19 books: a local directory in PG-19's layout, or TFDS.

Local layout, as in the DeepMind PG-19 release:
  metadata.csv   rows of book_id,short_book_title,publication_date,book_link
                 with no header row. Titles may be quoted and contain commas.
  train/, validation/, test/
                 one <book_id>.txt file per book, UTF-8 text.

How the readers treat irregular input:
- A missing data directory, metadata.csv or split folder, or a split without
  books, raises `DataError`. Its message names the path, the expected layout
  and where to get PG-19.
- A metadata row whose title has unquoted commas is read as if quoted: the
  first field is the book id and the last two are the date and the link.
- A book that is empty or only whitespace is skipped with a warning.
- Bytes that are not valid UTF-8 are decoded as U+FFFD replacement characters,
  and a warning names the book and the number of invalid byte sequences.
- A .txt file with no metadata row is still read, and metadata rows with no
  file in any split folder are ignored. Each case logs one warning per split
  (or per directory) with the count and the first few ids.

Books come in ascending order of book id (numeric ids by value), unless a
caller asks for a shuffled order.
"""

import csv
import dataclasses
import pathlib
from typing import Dict, Iterator, List, Optional, Tuple, Union

from absl import logging
import numpy as np

from tasks import data_error
from tasks import prepared_tfds

DataError = data_error.DataError

SPLITS = ('train', 'validation', 'test')

# Number of ids that a warning about unmatched books lists before "...".
_IDS_IN_WARNING = 5

LAYOUT_HELP = (
    'Expected the PG-19 layout: metadata.csv (rows of book_id,'
    'short_book_title,publication_date,book_link, no header row) and the '
    'folders train/, validation/ and test/, each containing one <book_id>.txt '
    'file per book. PG-19 is available as the DeepMind PG-19 release (github '
    'deepmind/pg19) and as the tensorflow-datasets dataset "pg19"; pass the '
    'release directory as data_dir, or a prepared TFDS data directory as '
    'tfds_data_dir.')


@dataclasses.dataclass(frozen=True)
class BookMetadata:
  """One row of metadata.csv."""
  book_id: str
  title: str
  publication_date: str
  link: str


def book_sort_key(book_id: str) -> Tuple[int, int, str]:
  """Order numeric ids by value, before any non-numeric id."""
  if book_id.isdigit():
    return (0, int(book_id), '')
  return (1, 0, book_id)


def check_split(split: str) -> None:
  """Raise ValueError unless `split` is one of `SPLITS`."""
  if split not in SPLITS:
    raise ValueError(
        f'Unknown split {split!r}: expected one of {", ".join(SPLITS)}.')


def _format_ids(book_ids: List[str]) -> str:
  listed = ', '.join(book_ids[:_IDS_IN_WARNING])
  if len(book_ids) > _IDS_IN_WARNING:
    listed += ', ...'
  return listed


def decode_book(raw: bytes, book_id: str, location: str) -> str:
  """Decode a book's bytes as UTF-8, replacing invalid byte sequences.

  Logs a warning naming the book and the number of invalid sequences when
  there are any. `location` is the file or dataset the bytes come from.
  """
  try:
    return raw.decode('utf-8')
  except UnicodeDecodeError:
    pass

  text = raw.decode('utf-8', errors='replace')
  # U+FFFD characters that were valid UTF-8 in the file are not replacements.
  replaced = text.count('\ufffd') - raw.count('\ufffd'.encode('utf-8'))
  logging.warning(
      'Book %s (%s) is not valid UTF-8: replaced %d invalid byte sequences '
      'with U+FFFD.', book_id, location, replaced)
  return text


def is_empty_book(text: str, book_id: str, location: str) -> bool:
  """Return whether the text is empty or whitespace, logging a warning if so."""
  if text.strip():
    return False
  logging.warning('Skipping book %s (%s): it is empty.', book_id, location)
  return True


def read_metadata(path: Union[str, pathlib.Path]) -> Dict[str, BookMetadata]:
  """Read PG-19's metadata.csv into a dict keyed by book id.

  Blank lines are skipped. A row with more than four fields is taken to have
  unquoted commas in its title.

  Raises:
    DataError: the file is missing, a row has fewer than four fields or an
      empty book id, or two rows have the same book id.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f'PG-19 metadata file not found: {path}. {LAYOUT_HELP}')

  metadata = {}
  with open(path, encoding='utf-8', errors='replace', newline='') as file:
    reader = csv.reader(file)
    for row in reader:
      if not row:
        continue
      book_id = row[0].strip()
      if len(row) < 4 or not book_id:
        raise DataError(
            f'Invalid row at line {reader.line_num} of {path}: {row!r}. '
            f'Each row needs a non-empty book id and four fields. '
            f'{LAYOUT_HELP}')
      if book_id in metadata:
        raise DataError(
            f'Book id {book_id} appears twice in {path} (second time at line '
            f'{reader.line_num}). Remove the duplicate row.')
      metadata[book_id] = BookMetadata(
          book_id=book_id,
          title=','.join(row[1:-2]),
          publication_date=row[-2],
          link=row[-1])
  return metadata


class LocalPg19Source:
  """Books of a local directory in PG-19's layout.

  The constructor checks the directory and metadata.csv. Each split folder is
  checked the first time that split is read, so a directory with only some
  splits can still serve those.
  """

  def __init__(self, data_dir: Union[str, pathlib.Path]):
    self.data_dir = pathlib.Path(data_dir)
    if not self.data_dir.is_dir():
      raise DataError(
          f'PG-19 data directory not found: {self.data_dir}. {LAYOUT_HELP}')
    self.metadata = read_metadata(self.data_dir / 'metadata.csv')
    self._book_paths = {}
    self._warn_about_rows_without_files()

  def describe(self) -> str:
    return f'PG-19 directory {self.data_dir}'

  def _list_txt_files(self, split: str) -> Dict[str, pathlib.Path]:
    split_dir = self.data_dir / split
    return {path.stem: path for path in split_dir.glob('*.txt')
            if path.is_file()}

  def _warn_about_rows_without_files(self) -> None:
    ids_with_files = set()
    for split in SPLITS:
      if (self.data_dir / split).is_dir():
        ids_with_files.update(self._list_txt_files(split))
    without_files = sorted(set(self.metadata) - ids_with_files,
                           key=book_sort_key)
    if without_files:
      logging.warning(
          '%d books in %s have no <book_id>.txt file in any split folder and '
          'are ignored: %s', len(without_files),
          self.data_dir / 'metadata.csv', _format_ids(without_files))

  def book_paths(self, split: str) -> List[Tuple[str, pathlib.Path]]:
    """List (book_id, path) of every .txt file of a split, by book id.

    Raises:
      DataError: the split folder is missing or contains no .txt file.
    """
    check_split(split)
    if split in self._book_paths:
      return self._book_paths[split]

    split_dir = self.data_dir / split
    if not split_dir.is_dir():
      raise DataError(
          f'PG-19 split folder not found: {split_dir}. {LAYOUT_HELP}')
    files = self._list_txt_files(split)
    if not files:
      raise DataError(
          f'PG-19 split folder {split_dir} contains no <book_id>.txt file, so '
          f'the {split} split is empty. {LAYOUT_HELP}')

    without_rows = sorted(set(files) - set(self.metadata), key=book_sort_key)
    if without_rows:
      logging.warning(
          '%d books in %s have no row in %s and are read anyway: %s',
          len(without_rows), split_dir, self.data_dir / 'metadata.csv',
          _format_ids(without_rows))

    paths = [(book_id, files[book_id])
             for book_id in sorted(files, key=book_sort_key)]
    self._book_paths[split] = paths
    return paths

  def iter_books(
      self, split: str,
      shuffle_seed: Optional[int] = None) -> Iterator[Tuple[str, str]]:
    """Yield (book_id, text) for each non-empty book of a split.

    Books come in ascending id order, or in a random order drawn from
    `shuffle_seed` when one is given.
    """
    paths = self.book_paths(split)
    if shuffle_seed is not None:
      order = np.random.default_rng(shuffle_seed).permutation(len(paths))
      paths = [paths[index] for index in order]

    for book_id, path in paths:
      text = decode_book(path.read_bytes(), book_id, str(path))
      if not is_empty_book(text, book_id, str(path)):
        yield book_id, text


def read_books(data_dir: Union[str, pathlib.Path],
               split: str) -> Iterator[Tuple[str, str]]:
  """Yield (book_id, text) for each non-empty book of a split, by book id.

  `data_dir` is a directory in PG-19's layout. See the module docstring for how
  empty books, invalid UTF-8 and unmatched metadata are handled.
  """
  return LocalPg19Source(data_dir).iter_books(split)


class TfdsPg19Source(prepared_tfds.PreparedTfdsDataset):
  """Books of the tensorflow-datasets dataset "pg19", prepared beforehand.

  This reader never downloads. Note that the TFDS builder strips leading and
  trailing whitespace from each book, so its texts can be a few bytes shorter
  than the files of the release.
  """

  DATASET = 'pg19'
  READER = 'PG-19'
  LOCAL_COPY = ('a local copy of the DeepMind PG-19 release (github '
                'deepmind/pg19)')
  LAYOUT_HELP = LAYOUT_HELP

  def iter_books(
      self, split: str,
      shuffle_seed: Optional[int] = None) -> Iterator[Tuple[str, str]]:
    """Yield (book_id, text) for each non-empty book of a split.

    Books come in the stored order, or with the shard files in a random order
    drawn from `shuffle_seed` when one is given.

    Raises:
      DataError: the prepared dataset has no examples in the split.
    """
    check_split(split)
    location = f'{split} split of {self.describe()}'
    for example in self.examples(split, shuffle_seed):
      book_id = str(int(example['book_id']))
      text = decode_book(example['book_text'], book_id, location)
      if not is_empty_book(text, book_id, location):
        yield book_id, text
