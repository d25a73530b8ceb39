"""A tensorflow-datasets dataset read from where it was prepared beforehand.

Nothing here downloads: a dataset that is not prepared in the given
directory raises `DataError` with the command that prepares it.
"""

import pathlib
from typing import Iterator, Optional, Union

from absl import logging

from tasks.data_error import DataError


class PreparedTfdsDataset:
  """A prepared TFDS dataset whose splits are read as numpy examples.

  Subclasses set the class attributes:
    DATASET: the TFDS name, such as "pg19".
    READER: the reader's name in log lines, such as "PG-19".
    LOCAL_COPY: the local alternative that error messages offer, as in
      "pass data_dir for LOCAL_COPY".
    LAYOUT_HELP: text appended to the error for a missing directory.
  """

  DATASET: str
  READER: str
  LOCAL_COPY: str
  LAYOUT_HELP = ''

  def __init__(self, tfds_data_dir: Union[str, pathlib.Path]):
    self.tfds_data_dir = pathlib.Path(tfds_data_dir)
    if not self.tfds_data_dir.is_dir():
      message = (
          f'TFDS data directory not found: {self.tfds_data_dir}. Pass the '
          f'data_dir in which tensorflow-datasets prepared "{self.DATASET}", '
          f'or pass data_dir for {self.LOCAL_COPY}.')
      if self.LAYOUT_HELP:
        message += ' ' + self.LAYOUT_HELP
      raise DataError(message)

    # pylint: disable=g-import-not-at-top
    import tensorflow as tf
    import tensorflow_datasets as tfds
    # pylint: enable=g-import-not-at-top

    # TensorFlow would otherwise reserve GPU memory that JAX needs.
    try:
      tf.config.set_visible_devices([], 'GPU')
    except RuntimeError:
      logging.warning('TensorFlow was initialized before the %s reader, so '
                      'it may hold GPU memory that JAX cannot use.',
                      self.READER)

    self._tfds = tfds
    self.builder = tfds.builder(self.DATASET,
                                data_dir=str(self.tfds_data_dir))
    if not self.builder.is_prepared():
      raise DataError(
          f'The tensorflow-datasets dataset "{self.DATASET}" is not prepared '
          f'in {self.tfds_data_dir} (no dataset at {self.builder.data_dir}). '
          'Prepare it on a machine with network access with '
          f'`tfds.builder("{self.DATASET}", data_dir=DIR)'
          '.download_and_prepare()` and pass DIR, or pass data_dir for '
          f'{self.LOCAL_COPY}. This reader never downloads.')

  def describe(self) -> str:
    return f'TFDS dataset {self.DATASET} in {self.tfds_data_dir}'

  def num_examples(self, split: str) -> int:
    """Return the example count of a split from the dataset info.

    Raises:
      DataError: the prepared dataset has no examples in the split.
    """
    split_info = self.builder.info.splits.get(split)
    if split_info is None or split_info.num_examples == 0:
      raise DataError(
          f'The {split} split of "{self.DATASET}" in {self.tfds_data_dir} is '
          'missing or empty. Prepare the dataset again, or pass data_dir for '
          f'{self.LOCAL_COPY}.')
    return split_info.num_examples

  def examples(self, split: str,
               shuffle_seed: Optional[int] = None) -> Iterator[dict]:
    """Return an iterator over the examples of a split, as numpy dicts.

    Examples come in the stored order or, with `shuffle_seed`, with the shard
    files in a random order drawn from it.

    Raises:
      DataError: the prepared dataset has no examples in the split.
    """
    self.num_examples(split)
    read_config = self._tfds.ReadConfig(shuffle_seed=shuffle_seed)
    dataset = self.builder.as_dataset(
        split=split, shuffle_files=shuffle_seed is not None,
        read_config=read_config)
    return self._tfds.as_numpy(dataset)
