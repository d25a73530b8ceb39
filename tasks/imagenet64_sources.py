"""Readers of downsampled ImageNet 64x64: the npz release and TFDS.

Both readers yield images as uint8 arrays of shape [64, 64, 3] (rows, columns,
RGB channels) and count the images of each split without decoding them.

npz release (Chrabaszcz, Loshchilov and Hutter, 2017, "A Downsampled Variant
of ImageNet as an Alternative to the CIFAR datasets"), one directory with
  train_data_batch_1.npz .. train_data_batch_10.npz   the train split, in
                                                      whichever files exist
  val_data.npz                                        the validation split
Each file contains `data`, uint8 of shape [N, 12288]: per image the 64x64 red
plane, then green, then blue, each plane row-major. Its `labels` and `mean`
arrays are not read, because the models here are unconditional.

TFDS: the dataset "downsampled_imagenet/64x64", which tensorflow-datasets
builds from the PixelRNN release (van den Oord et al., 2016, image-net.org/
small). It must be prepared beforehand; this reader never downloads.

Bad input raises `DataError` (shared with the PG-19 readers), with a message
that names the file, what it contains and what was expected.
"""

import pathlib
import re
import zipfile
from typing import Dict, Iterator, List, Optional, Tuple, Union

from absl import logging
import numpy as np

from tasks import data_error
from tasks import prepared_tfds

DataError = data_error.DataError

SPLITS = ('train', 'validation')
IMAGE_SHAPE = (64, 64, 3)
SUBPIXELS_PER_IMAGE = 64 * 64 * 3
VALIDATION_FILE = 'val_data.npz'
TRAIN_FILE_PATTERN = re.compile(r'^train_data_batch_(\d+)\.npz$')

PathLike = Union[str, pathlib.Path]

NPZ_LAYOUT_HELP = (
    'Expected the downsampled ImageNet 64x64 npz release: train_data_batch_1.'
    'npz .. train_data_batch_10.npz and val_data.npz, each with an array '
    '`data` of dtype uint8 and shape (N, 12288), per image the 64x64 red '
    'plane, then green, then blue, each row-major. Download Imagenet64x64 '
    'from image-net.org (downsampled ImageNet) and pass its directory as '
    'data_dir, or pass tfds_data_dir for a prepared TFDS '
    '"downsampled_imagenet/64x64".')


def check_split(split: str) -> None:
  """Raise ValueError unless `split` is one of `SPLITS`."""
  if split not in SPLITS:
    raise ValueError(
        f'Unknown ImageNet64 split {split!r}: expected one of '
        f'{", ".join(SPLITS)}.')


def planar_rows_to_images(data: np.ndarray) -> np.ndarray:
  """Reorder rows of the npz layout to images.

  Args:
    data: [N, 12288], per row the red, green and blue 64x64 planes.

  Returns:
    [N, 64, 64, 3], indexed by image, row, column and channel.
  """
  planes = data.reshape(-1, 3, 64, 64)
  return np.ascontiguousarray(planes.transpose(0, 2, 3, 1))


def _read_data_header(path: pathlib.Path) -> Tuple[Tuple[int, ...], np.dtype]:
  """Read the shape and dtype of `data` in an npz file without loading it."""
  names = []
  header = None
  try:
    with zipfile.ZipFile(path) as archive:
      names = archive.namelist()
      if 'data.npy' in names:
        with archive.open('data.npy') as file:
          version = np.lib.format.read_magic(file)
          if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(file)
          else:
            header = np.lib.format.read_array_header_2_0(file)
  except (zipfile.BadZipFile, ValueError, OSError) as error:
    raise DataError(
        f'{path} is not a readable npz file ({error}). {NPZ_LAYOUT_HELP}'
    ) from error

  if header is None:
    found = ', '.join(name.removesuffix('.npy') for name in names)
    raise DataError(
        f'{path} has no array `data` (it contains: {found or "nothing"}). '
        f'{NPZ_LAYOUT_HELP}')
  shape, _, dtype = header
  return shape, dtype


def check_data_layout(path: PathLike, shape: Tuple[int, ...],
                      dtype: np.dtype) -> None:
  """Raise DataError unless `data` has shape (N, 12288), N > 0, and int dtype.

  Integer dtypes other than uint8 pass here. `load_npz_images` then checks
  that their values lie in 0..255.
  """
  if len(shape) != 2 or shape[1] != SUBPIXELS_PER_IMAGE:
    raise DataError(
        f'{path}: `data` has shape {shape}, expected (N, '
        f'{SUBPIXELS_PER_IMAGE}): one row of 64*64*3 subpixels per image. '
        f'{NPZ_LAYOUT_HELP}')
  if shape[0] == 0:
    raise DataError(f'{path}: `data` contains no images (shape {shape}). '
                    f'{NPZ_LAYOUT_HELP}')
  if dtype.kind not in 'ui':
    raise DataError(
        f'{path}: `data` has dtype {dtype}, expected uint8 subpixel values '
        f'0..255. {NPZ_LAYOUT_HELP}')


def check_subpixel_range(values: np.ndarray, location: str) -> None:
  """Raise DataError unless every value lies in 0..255."""
  if values.dtype == np.uint8 or values.size == 0:
    return
  low = int(values.min())
  high = int(values.max())
  if low < 0 or high > 255:
    raise DataError(
        f'{location} contains values from {low} to {high}, expected '
        f'subpixel values 0..255. Check that the file holds raw 8-bit pixels, '
        f'not normalized or mean-subtracted ones.')


def load_npz_images(path: PathLike) -> np.ndarray:
  """Load and check the images of one npz file: uint8 [N, 64, 64, 3].

  Raises:
    DataError: the file is missing or unreadable, has no `data`, or `data`
      has the wrong shape, dtype or values.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f'ImageNet64 file not found: {path}. {NPZ_LAYOUT_HELP}')
  shape, dtype = _read_data_header(path)
  check_data_layout(path, shape, dtype)
  try:
    with np.load(path, allow_pickle=False) as npz:
      data = npz['data']
  except (zipfile.BadZipFile, ValueError, OSError) as error:
    raise DataError(f'Could not read `data` from {path}: {error}. '
                    f'{NPZ_LAYOUT_HELP}') from error
  check_subpixel_range(data, f'{path}: `data`')
  return planar_rows_to_images(data.astype(np.uint8, copy=False))


class LocalImagenet64Source:
  """Images of the npz release in one local directory.

  The constructor checks that the directory contains at least one file of the
  release, and reads the header of every such file, so a wrong shape or dtype
  fails before training starts. Values are checked when a file is loaded.
  """

  def __init__(self, data_dir: PathLike):
    self.data_dir = pathlib.Path(data_dir)
    if not self.data_dir.is_dir():
      raise DataError(
          f'ImageNet64 data directory not found: {self.data_dir}. '
          f'{NPZ_LAYOUT_HELP}')

    numbered = []
    for path in self.data_dir.glob('train_data_batch_*.npz'):
      match = TRAIN_FILE_PATTERN.match(path.name)
      if match and path.is_file():
        numbered.append((int(match.group(1)), path))
    self._files: Dict[str, List[pathlib.Path]] = {
        'train': [path for _, path in sorted(numbered)],
        'validation': [],
    }
    validation_path = self.data_dir / VALIDATION_FILE
    if validation_path.is_file():
      self._files['validation'].append(validation_path)

    if not self._files['train'] and not self._files['validation']:
      entries = sorted(entry.name for entry in self.data_dir.iterdir())
      listed = ', '.join(entries[:8]) + (', ...' if len(entries) > 8 else '')
      raise DataError(
          f'{self.data_dir} contains no ImageNet64 npz file (it contains: '
          f'{listed or "nothing"}). {NPZ_LAYOUT_HELP}')

    self._image_counts: Dict[pathlib.Path, int] = {}
    for paths in self._files.values():
      for path in paths:
        shape, dtype = _read_data_header(path)
        check_data_layout(path, shape, dtype)
        self._image_counts[path] = shape[0]
    logging.info('ImageNet64 npz files in %s: %d train batches, %s.',
                 self.data_dir, len(self._files['train']),
                 VALIDATION_FILE if self._files['validation']
                 else f'no {VALIDATION_FILE}')

  def describe(self) -> str:
    return f'ImageNet64 npz directory {self.data_dir}'

  def files(self, split: str) -> List[pathlib.Path]:
    """List the npz files of a split, train batches by number.

    Raises:
      DataError: the split has no file in the directory.
    """
    check_split(split)
    paths = self._files[split]
    if not paths:
      expected = ('train_data_batch_<n>.npz' if split == 'train'
                  else VALIDATION_FILE)
      raise DataError(
          f'The {split} split has no file in {self.data_dir}: expected '
          f'{expected}. {NPZ_LAYOUT_HELP}')
    return paths

  def num_images(self, split: str) -> int:
    """Count the images of a split from the file headers."""
    return sum(self._image_counts[path] for path in self.files(split))

  def iter_images(self, split: str,
                  shuffle_seed: Optional[int] = None) -> Iterator[np.ndarray]:
    """Yield each image of a split as uint8 [64, 64, 3].

    Images come in file order (train batches by number) and row order, or,
    with `shuffle_seed`, with the files in a random order and the images of
    each file in a random order. One file is in memory at a time.
    """
    paths = self.files(split)
    rng = None
    if shuffle_seed is not None:
      rng = np.random.default_rng(shuffle_seed)
      paths = [paths[index] for index in rng.permutation(len(paths))]
    for path in paths:
      images = load_npz_images(path)
      order = (rng.permutation(len(images)) if rng is not None
               else range(len(images)))
      for index in order:
        yield images[index]


class TfdsImagenet64Source(prepared_tfds.PreparedTfdsDataset):
  """Images of the TFDS dataset "downsampled_imagenet/64x64", prepared before.

  The dataset contains the PixelRNN release, whose validation split has 49,999
  images.
  """

  DATASET = 'downsampled_imagenet/64x64'
  READER = 'ImageNet64'
  LOCAL_COPY = 'a local copy of the npz release'

  def __init__(self, tfds_data_dir: PathLike,
               shuffle_buffer_images: int = 4096):
    self.shuffle_buffer_images = shuffle_buffer_images
    super().__init__(tfds_data_dir)

  def num_images(self, split: str) -> int:
    """Return the image count of a split from the dataset info.

    Raises:
      DataError: the prepared dataset has no examples in the split.
    """
    check_split(split)
    return self.num_examples(split)

  def iter_images(self, split: str,
                  shuffle_seed: Optional[int] = None) -> Iterator[np.ndarray]:
    """Yield each image of a split as uint8 [64, 64, 3].

    Images come in the stored order or, with `shuffle_seed`, with the shard
    files in a random order and the images passed through a shuffle buffer of
    `shuffle_buffer_images` images.

    Raises:
      DataError: an image is not 64x64 RGB.
    """
    check_split(split)
    images = self._checked_images(self.examples(split, shuffle_seed), split)
    if shuffle_seed is None:
      return images
    return _shuffle_buffered(images, self.shuffle_buffer_images,
                             np.random.default_rng(shuffle_seed))

  def _checked_images(self, examples, split: str) -> Iterator[np.ndarray]:
    for index, example in enumerate(examples):
      image = example['image']
      if image.shape != IMAGE_SHAPE or image.dtype != np.uint8:
        raise DataError(
            f'Image {index} of the {split} split of {self.describe()} has '
            f'shape {image.shape} and dtype {image.dtype}, expected '
            f'{IMAGE_SHAPE} and uint8. Prepare the 64x64 configuration of '
            'the dataset.')
      yield image


def _shuffle_buffered(items: Iterator[np.ndarray], buffer_size: int,
                      rng: np.random.Generator) -> Iterator[np.ndarray]:
  """Yield items in a random order drawn through a buffer of buffer_size."""
  buffer = []
  for item in items:
    if len(buffer) < buffer_size:
      buffer.append(item)
      continue
    index = int(rng.integers(buffer_size))
    yield buffer[index]
    buffer[index] = item
  for index in rng.permutation(len(buffer)):
    yield buffer[index]
