"""Tests of the sample corpus built from Python's reference documentation."""

import pytest

from tasks import demo_corpus
from tasks import pg19


def test_demo_corpus_has_three_splits(tmp_path):
  data_dir = pg19.write_demo_corpus(tmp_path / 'demo')

  for split in pg19.SPLITS:
    books = list(pg19.read_books(data_dir, split))
    assert books, f'no book in split {split}'
    for book_id, text in books:
      assert len(text) > 1000, f'book {book_id} is short'


def test_demo_corpus_is_english_prose(tmp_path):
  data_dir = pg19.write_demo_corpus(tmp_path / 'demo')

  text = ' '.join(text for _, text in pg19.read_books(data_dir, 'train'))
  words = text.lower().split()

  assert len(words) > 10000
  for common_word in ('the', 'is', 'of', 'and', 'statement'):
    assert common_word in words


def test_demo_corpus_metadata_matches_files(tmp_path):
  data_dir = pg19.write_demo_corpus(tmp_path / 'demo')

  metadata = pg19.read_metadata(data_dir / 'metadata.csv')
  file_ids = {path.stem for path in data_dir.glob('*/*.txt')}

  assert set(metadata) == file_ids
  for row in metadata.values():
    assert row.title.startswith('Python reference: ')
    assert row.publication_date == ''


def test_demo_corpus_uses_every_topic_once(tmp_path):
  topics = demo_corpus.load_topics()
  data_dir = pg19.write_demo_corpus(tmp_path / 'demo')

  metadata = pg19.read_metadata(data_dir / 'metadata.csv')
  titled_topics = []
  for row in metadata.values():
    titled_topics.extend(row.title[len('Python reference: '):].split(', '))

  assert sorted(titled_topics) == sorted(topics)


def test_demo_corpus_is_deterministic(tmp_path):
  first = pg19.write_demo_corpus(tmp_path / 'first')
  second = pg19.write_demo_corpus(tmp_path / 'second')

  first_files = sorted(path.relative_to(first) for path in first.rglob('*'))
  second_files = sorted(path.relative_to(second) for path in second.rglob('*'))
  assert first_files == second_files
  for relative in first_files:
    if (first / relative).is_file():
      assert (first / relative).read_bytes() == (second / relative).read_bytes()


def test_demo_corpus_rejects_nonempty_dir(tmp_path):
  (tmp_path / 'notes.txt').write_text('keep me')

  with pytest.raises(FileExistsError, match=str(tmp_path)):
    pg19.write_demo_corpus(tmp_path)
  assert (tmp_path / 'notes.txt').read_text() == 'keep me'


def test_corpus_without_source_uses_demo(tmp_path, caplog):
  demo_dir = tmp_path / 'sample'

  corpus = pg19.Pg19Corpus(demo_dir=demo_dir)

  assert corpus.source.data_dir == demo_dir
  assert 'NOT PG-19' in caplog.text
  assert '--data_dir' in caplog.text
  assert 'Pg19Corpus.data_dir' in caplog.text
  statistics = corpus.split_statistics('validation')
  assert statistics.num_books > 0
  assert statistics.num_words > 0
