"""CSV files of benchmark records: one row per measured point."""

import csv
import pathlib
from typing import Dict, Iterable, List, Sequence


def write_csv(records: Iterable[Dict], path, fields: Sequence[str],
              append: bool = False):
  """Write records as CSV rows with the given columns, creating folders.

  Keys of a record that are not in `fields` are left out. With `append`, rows
  go after those already in the file, and the header is written only to a new
  file.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  new_file = not append or not path.exists()
  with open(path, 'a' if append else 'w', newline='', encoding='utf-8') as f:
    writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction='ignore')
    if new_file:
      writer.writeheader()
    writer.writerows(records)


def read_csv(path) -> List[Dict[str, str]]:
  """Return the rows of a CSV file as dicts of strings."""
  with open(path, newline='', encoding='utf-8') as f:
    return list(csv.DictReader(f))
