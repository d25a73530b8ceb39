"""A small sample corpus in PG-19's on-disk layout, built from offline text.

The text is the Python reference documentation that CPython ships in
`pydoc_data.topics` (about 80 topics of English prose, 0.5 MB in CPython 3.11).
It lets the PG-19 pipeline and a training run work without a download. It is
not PG-19, so scores on it are not comparable to PG-19 results.

Topics are sorted by name. Of every ten consecutive topics, the ninth goes to
validation, the tenth to test and the rest to train. Each split's topics are
then grouped, in order, into books of `TOPICS_PER_BOOK` topics. The output is
the same on every run with the same Python version.
"""

import csv
import pathlib
from typing import Dict, List, Union

from absl import logging

SPLITS = ('train', 'validation', 'test')
TOPICS_PER_BOOK = 4
FIRST_BOOK_ID = 900001


def load_topics() -> Dict[str, str]:
  """Return the help topics of `pydoc_data.topics`, keyed by topic name.

  Raises:
    ImportError: this Python installation does not ship `pydoc_data`.
  """
  try:
    from pydoc_data import topics  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ImportError(
        'The sample corpus needs the pydoc_data package of the Python standard '
        'library, which this Python installation lacks (some Linux '
        'distributions split it into a separate package). Install the full '
        'standard library, or pass the path of real PG-19 data.') from error
  return dict(topics.topics)


def assign_topics_to_splits(topic_names: List[str]) -> Dict[str, List[str]]:
  """Split sorted topic names 8:1:1 into train, validation and test."""
  splits = {split: [] for split in SPLITS}
  for index, name in enumerate(sorted(topic_names)):
    position = index % 10
    if position == 8:
      splits['validation'].append(name)
    elif position == 9:
      splits['test'].append(name)
    else:
      splits['train'].append(name)
  return splits


def write_demo_corpus(target_dir: Union[str, pathlib.Path]) -> pathlib.Path:
  """Write the sample corpus into `target_dir` and return its path.

  `target_dir` gets `metadata.csv` and `train/`, `validation/` and `test/`
  folders of `<book_id>.txt` files, as in PG-19. Book ids start at
  `FIRST_BOOK_ID`, titles read "Python reference: <topic names>", and
  publication dates and links are empty.

  Raises:
    FileExistsError: `target_dir` exists and is not an empty directory.
    ImportError: `pydoc_data` is missing.
  """
  target_dir = pathlib.Path(target_dir)
  if target_dir.exists() and (not target_dir.is_dir()
                              or any(target_dir.iterdir())):
    raise FileExistsError(
        f'Cannot write the sample corpus to {target_dir}: the path exists and '
        'is not an empty directory. Pass a new or empty directory.')

  topics = load_topics()
  topics_by_split = assign_topics_to_splits(list(topics))

  metadata_rows = []
  book_id = FIRST_BOOK_ID
  for split in SPLITS:
    split_dir = target_dir / split
    split_dir.mkdir(parents=True)
    names = topics_by_split[split]
    for first in range(0, len(names), TOPICS_PER_BOOK):
      book_topics = names[first:first + TOPICS_PER_BOOK]
      text = '\n\n'.join(topics[name].strip() for name in book_topics) + '\n'
      (split_dir / f'{book_id}.txt').write_text(text, encoding='utf-8')
      title = 'Python reference: ' + ', '.join(book_topics)
      metadata_rows.append([str(book_id), title, '', ''])
      book_id += 1

  with open(target_dir / 'metadata.csv', 'w', encoding='utf-8',
            newline='') as metadata_file:
    csv.writer(metadata_file).writerows(metadata_rows)

  logging.warning(
      'Wrote a sample corpus of %d books of Python reference text '
      '(pydoc_data.topics) to %s. This is NOT PG-19, and scores on it are not '
      'comparable to PG-19 results. To use PG-19, pass --data_dir (a directory '
      'in the PG-19 layout), or bind Pg19Corpus.data_dir or '
      'Pg19Corpus.tfds_data_dir in gin.', len(metadata_rows), target_dir)
  return target_dir
