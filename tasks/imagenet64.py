"""ImageNet64 for autoregressive image modeling: each image is 12,288 tokens.

An image of 64x64 RGB pixels becomes one sequence in raster order with the
channels interleaved per pixel: red, green and blue of pixel (0, 0), then of
pixel (0, 1), and so on row by row. Token t is the 8-bit value of subpixel t,
so the vocabulary has 256 ids, and `image_to_tokens` and `tokens_to_image`
convert between the two forms.

`Imagenet64Corpus` reads images from one of two sources (see
`imagenet64_sources`):
- `data_dir`: a local directory with the npz release
  (train_data_batch_<n>.npz and val_data.npz),
- `tfds_data_dir`: a TFDS data directory in which
  "downsampled_imagenet/64x64" is prepared.
Nothing is bundled, so one of them is required.

Batches are (inputs, targets, weights) with inputs equal to targets, as Trax
language models that shift right internally expect (see `windows`). The
score is bits per dimension: the total NLL in nats over the scored subpixels,
divided by ln 2 and by their count.

Validation releases differ: the PixelRNN release (van den Oord et al., 2016),
which TFDS prepares, has 49,999 validation images, and the npz release
(Chrabaszcz et al., 2017) has 50,000. Bits/dim on one are not comparable
with bits/dim on the other.

Example:
  corpus = Imagenet64Corpus(data_dir='/data/imagenet64')
  train = corpus.train_stream(batch_size=8, length=12288, seed=0)
  inputs, targets, weights = next(train)   # each of shape [8, 12288]
"""

import os
import pathlib
from typing import Callable, Dict, Iterator, Optional, Tuple, Union

from absl import logging
import gin
import numpy as np

from tasks import image_samples
from tasks import imagenet64_sources
from tasks import metrics
from tasks import windows

DataError = imagenet64_sources.DataError
SPLITS = imagenet64_sources.SPLITS
IMAGE_SHAPE = imagenet64_sources.IMAGE_SHAPE
SEQUENCE_LENGTH = imagenet64_sources.SUBPIXELS_PER_IMAGE
VOCAB_SIZE = 256

PIXELRNN_VALIDATION_IMAGES = 49_999
NPZ_VALIDATION_IMAGES = 50_000

PathLike = Union[str, pathlib.Path]


def image_to_tokens(image: np.ndarray) -> np.ndarray:
  """Flatten images [..., 64, 64, 3] to int32 tokens [..., 12288].

  The order is raster order with channels interleaved: token
  3 * (64 * row + column) + channel is image[row, column, channel].

  Raises:
    ValueError: the trailing shape is not (64, 64, 3), or a value lies outside
      0..255.
  """
  image = np.asarray(image)
  if image.shape[-3:] != IMAGE_SHAPE:
    raise ValueError(
        f'Expected images of shape [..., 64, 64, 3], got {image.shape}.')
  _check_subpixel_values(image, 'image')
  return image.reshape(image.shape[:-3] + (SEQUENCE_LENGTH,)).astype(np.int32)


def tokens_to_image(tokens: np.ndarray) -> np.ndarray:
  """Reshape tokens [..., 12288] to uint8 images [..., 64, 64, 3].

  The inverse of `image_to_tokens`.

  Raises:
    ValueError: the last axis is not 12288 long, or a token lies outside
      0..255.
  """
  tokens = np.asarray(tokens)
  if tokens.ndim == 0 or tokens.shape[-1] != SEQUENCE_LENGTH:
    raise ValueError(
        f'Expected tokens of shape [..., {SEQUENCE_LENGTH}], got '
        f'{tokens.shape}.')
  _check_subpixel_values(tokens, 'tokens')
  return tokens.reshape(tokens.shape[:-1] + IMAGE_SHAPE).astype(np.uint8)


def _check_subpixel_values(values: np.ndarray, name: str) -> None:
  if values.dtype.kind not in 'ui':
    raise ValueError(f'{name} must have an integer dtype, got {values.dtype}.')
  if values.size and (values.min() < 0 or values.max() > 255):
    raise ValueError(
        f'{name} contain values from {values.min()} to {values.max()}, '
        'expected subpixel values 0..255.')


class SubpixelVocabulary:
  """The 256 subpixel values as token ids: id v is the value v.

  It has the attributes of `tasks.vocabulary.Vocabulary`, with images in
  place of text: `encode` maps an image [64, 64, 3] to tokens [12288] and
  `decode` maps them back. Padding uses id 0, a real value, because padded
  positions have weight 0 and never count in the loss or the scores. There
  is no end-of-sequence id (`eos_id` is None), because every image has
  exactly 12,288 tokens.
  """

  vocab_size = VOCAB_SIZE
  pad_id = 0
  eos_id = None

  def encode(self, image: np.ndarray) -> np.ndarray:
    """Encode an image [64, 64, 3] to int32 tokens [12288]."""
    return image_to_tokens(image)

  def decode(self, ids: np.ndarray) -> np.ndarray:
    """Decode tokens [12288] to a uint8 image [64, 64, 3]."""
    return tokens_to_image(ids)


def describe_validation_release(num_images: int) -> str:
  """Name the ImageNet64 release that a validation image count matches."""
  if num_images == PIXELRNN_VALIDATION_IMAGES:
    release = ('the 49,999 images of the PixelRNN release (image-net.org/'
               'small, TFDS "downsampled_imagenet")')
  elif num_images == NPZ_VALIDATION_IMAGES:
    release = ('the 50,000 images of the npz release (Chrabaszcz et al., '
               '2017)')
  else:
    release = ('neither the 49,999-image PixelRNN release nor the '
               '50,000-image npz release, so the scores are not comparable '
               'with published ImageNet64 results')
  return (f'{num_images} validation images: {release}. Bits/dim on the '
          '49,999-image and the 50,000-image releases are not comparable; '
          'compare only results on the same release.')


def _check_length(length: int) -> None:
  windows.check_positive_int('length', length)
  if length > SEQUENCE_LENGTH:
    raise ValueError(
        f'length = {length} is longer than an ImageNet64 image, which is one '
        f'sequence of {SEQUENCE_LENGTH} = 64 * 64 * 3 subpixels. Use length '
        f'{SEQUENCE_LENGTH}, or a shorter one to model only the first '
        'subpixels of each image.')


def _image_row(image: np.ndarray, length: int) -> windows.Window:
  """Return the first `length` tokens of an image and weights of 1."""
  ids = image_to_tokens(image)[:length]
  return ids, np.ones(length, dtype=np.float32)


@gin.configurable(module='imagenet64')
class Imagenet64Corpus:
  """ImageNet64 images as training and evaluation streams of token sequences.

  The streams take a `length` of at most 12,288. Length 12,288 models whole
  images and is the ImageNet64 benchmark. A shorter length keeps the first
  `length` subpixels of each image (its top rows) in training and evaluation,
  and the results then state which part of each image they cover.
  """

  def __init__(self,
               data_dir: Optional[PathLike] = None,
               tfds_data_dir: Optional[PathLike] = None,
               shuffle_buffer_images: int = 4096):
    """Open the source of images, check it and log the validation size.

    Args:
      data_dir: directory with the npz release.
      tfds_data_dir: TFDS data directory with "downsampled_imagenet/64x64"
        prepared. Give exactly one of data_dir and tfds_data_dir. None and ''
        both mean not given.
      shuffle_buffer_images: images that the training stream of the TFDS
        source shuffles together, 12,288 bytes each. The npz source shuffles
        each file as a whole instead.

    Raises:
      DataError: no source is given, or the source is missing or invalid.
      ValueError: both data_dir and tfds_data_dir are given.
    """
    windows.check_positive_int('shuffle_buffer_images', shuffle_buffer_images)
    data_dir = data_dir or None
    tfds_data_dir = tfds_data_dir or None
    if data_dir is not None and tfds_data_dir is not None:
      raise ValueError(
          f'Got both data_dir={data_dir} and tfds_data_dir={tfds_data_dir}. '
          'Pass only one source of ImageNet64.')
    if data_dir is None and tfds_data_dir is None:
      raise DataError(
          'No ImageNet64 source given, and no images are bundled. Pass '
          '--data_dir with a directory of the npz release (train_data_batch_'
          '<n>.npz, val_data.npz), or bind Imagenet64Corpus.tfds_data_dir to '
          'a TFDS data directory with "downsampled_imagenet/64x64" prepared.')

    self.vocabulary = SubpixelVocabulary()
    self.is_sample_corpus = False
    if tfds_data_dir is not None:
      self.source = imagenet64_sources.TfdsImagenet64Source(
          tfds_data_dir, shuffle_buffer_images)
    else:
      self.source = imagenet64_sources.LocalImagenet64Source(data_dir)
    logging.info('Reading images from %s.', self.source.describe())
    self._log_validation_size()

  def _log_validation_size(self) -> None:
    try:
      num_images = self.source.num_images('validation')
    except DataError as error:
      logging.warning('No validation split: %s', error)
      return
    logging.info('ImageNet64 validation split of %s: %d images.',
                 self.source.describe(), num_images)
    logging.warning('%s', describe_validation_release(num_images))

  def num_images(self, split: str) -> int:
    """Count the images of a split."""
    return self.source.num_images(split)

  def images(self, split: str) -> Iterator[np.ndarray]:
    """Yield every image of a split in stored order, uint8 [64, 64, 3]."""
    return self.source.iter_images(split)

  def eval_batch_count(self, split: str, batch_size: int, length: int) -> int:
    """Return the number of batches that `eval_stream` yields."""
    windows.check_positive_int('batch_size', batch_size)
    _check_length(length)
    return -(-self.num_images(split) // batch_size)

  def eval_stream(self, split: str, batch_size: int,
                  length: int) -> Iterator[windows.Batch]:
    """Yield batches with one row per image, each image of a split once.

    Images come in stored order. With length 12,288 the batches cover every
    subpixel of the split exactly once. A shorter length covers the first
    `length` subpixels of each image. The last batch is filled up with rows
    of id 0 and weight 0.

    Yields:
      (inputs, targets, weights): int32, int32 and float32 arrays of shape
      [batch_size, length], inputs equal to targets.
    """
    imagenet64_sources.check_split(split)
    windows.check_positive_int('batch_size', batch_size)
    _check_length(length)
    if length < SEQUENCE_LENGTH:
      logging.warning(
          'Evaluating the first %d of the %d subpixels of each %s image; '
          'these bits/dim are not the ImageNet64 benchmark score.', length,
          SEQUENCE_LENGTH, split)
    rows = (_image_row(image, length) for image in self.images(split))
    return windows.batch_in_order(rows, batch_size, length,
                                  self.vocabulary.pad_id)

  def train_stream(self, batch_size: int, length: int, seed: int,
                   split: str = 'train') -> Iterator[windows.Batch]:
    """Yield shuffled training batches forever, one image per row.

    Each epoch reads the images of the split in a random order drawn from a
    numpy Generator seeded with `seed`, so a seed always gives the same
    stream. Rows are the first `length` tokens of an image, all of weight 1.
    Images left over after the last full batch of an epoch start the first
    batch of the next.

    Yields:
      (inputs, targets, weights): int32, int32 and float32 arrays of shape
      [batch_size, length], inputs equal to targets.
    """
    imagenet64_sources.check_split(split)
    windows.check_positive_int('batch_size', batch_size)
    _check_length(length)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
      raise ValueError(f'seed must be an integer, got {seed!r}.')
    self.source.num_images(split)
    return self._generate_train_batches(batch_size, length, int(seed), split)

  def _generate_train_batches(self, batch_size: int, length: int, seed: int,
                              split: str) -> Iterator[windows.Batch]:
    rng = np.random.default_rng(seed)
    pending = []
    epoch = 0
    while True:
      epoch += 1
      logging.info('Training stream: epoch %d over the %s split of %s '
                   '(seed %d).', epoch, split, self.source.describe(), seed)
      epoch_seed = int(rng.integers(2**31))
      for image in self.source.iter_images(split, shuffle_seed=epoch_seed):
        pending.append(_image_row(image, length))
        if len(pending) == batch_size:
          yield windows.stack_windows(pending)
          pending = []

  def split_results(self, split: str, total_nll: float, num_tokens,
                    num_correct) -> Dict[str, object]:
    """Label the sums of an evaluation of `split` with image scores.

    Args:
      split: the split that `eval_stream` covered.
      total_nll: summed NLL in nats over the weighted tokens.
      num_tokens: count of weighted tokens, one row of the stream per image.
      num_correct: count of weighted tokens whose argmax prediction is right.

    Returns:
      A dict with split, num_images, subpixels_per_image, num_subpixels,
      total_nll_nats, nll_per_subpixel (nats), bits_per_dim, accuracy,
      validation_release (for the validation split) and, when the stream
      covered only part of each image, partial_images.

    Raises:
      RuntimeError: num_tokens is not the same whole number of subpixels per
        image of the split.
    """
    imagenet64_sources.check_split(split)
    num_images = self.num_images(split)
    num_subpixels = int(round(float(num_tokens)))
    per_image, remainder = divmod(num_subpixels, num_images)
    if remainder or not 1 <= per_image <= SEQUENCE_LENGTH:
      raise RuntimeError(
          f'Evaluation of {split} scored {num_subpixels} tokens, which is not '
          f'a whole number from 1 to {SEQUENCE_LENGTH} per image of its '
          f'{num_images} images; the evaluation stream is inconsistent.')

    scores = metrics.image_model_scores(float(total_nll), num_subpixels)
    results = {
        'split': split,
        'num_images': num_images,
        'subpixels_per_image': per_image,
        'num_subpixels': num_subpixels,
        'total_nll_nats': float(total_nll),
        'nll_per_subpixel': scores['nll_per_subpixel'],
        'bits_per_dim': scores['bits_per_dimension'],
        'accuracy': float(num_correct) / num_subpixels,
        'data_source': self.source.describe(),
    }
    if split == 'validation':
      results['validation_release'] = describe_validation_release(num_images)
    if per_image < SEQUENCE_LENGTH:
      results['partial_images'] = (
          f'Scores cover the first {per_image} of the {SEQUENCE_LENGTH} '
          'subpixels of each image, so they are not the ImageNet64 '
          'benchmark score.')
    return results

  def format_results(self, results: Dict[str, object]) -> str:
    """Return one human-readable line of a split's image scores."""
    step = results.get('step')
    where = f"{results['split']} @ step {step}" if step is not None else (
        str(results['split']))
    line = (f"{where}: {results['bits_per_dim']:.4f} bits/dim, "
            f"accuracy {results['accuracy']:.4f} "
            f"({results['num_images']} images, "
            f"{results['num_subpixels']} subpixels)")
    if results['subpixels_per_image'] < SEQUENCE_LENGTH:
      line += f", first {results['subpixels_per_image']} subpixels per image"
    return line

  def write_samples(self, generate: Callable[[np.ndarray, int], np.ndarray],
                    output_dir: PathLike, n_samples: int,
                    seed: int) -> Tuple[str, str]:
    """Sample images and complete validation images; write two PNG grids.

    Args:
      generate: function (prompt_ids, n_new_tokens) -> ids. prompt_ids is
        int32 [batch, prompt_length], prompt_length possibly 0, and the
        result is int [batch, n_new_tokens] of sampled ids in 0..255.
      output_dir: directory for the PNG files, created if missing.
      n_samples: images sampled from scratch, and validation images
        completed.
      seed: part of the file names, so that runs with other seeds keep their
        files. The randomness of sampling is `generate`'s own.

    Returns:
      (samples_path, completions_path). samples_<seed>.png tiles the sampled
      images, up to 8 per row. completions_<seed>.png has one row per
      validation image: the original, then the completion of its top 32
      rows.

    Raises:
      ValueError: n_samples is not positive, or `generate` returns ids of the
        wrong shape or outside 0..255.
      DataError: the validation split has fewer than n_samples images.
    """
    windows.check_positive_int('n_samples', n_samples)
    output_dir = os.fspath(output_dir)

    sampled = _generate_checked(
        generate, np.zeros((n_samples, 0), np.int32), SEQUENCE_LENGTH)
    samples_path = image_samples.write_image_grid(
        tokens_to_image(sampled), os.path.join(output_dir,
                                               f'samples_{seed}.png'),
        n_columns=min(n_samples, 8))

    originals = self._first_images('validation', n_samples)
    prompt_length = SEQUENCE_LENGTH // 2
    prompts = image_to_tokens(originals)[:, :prompt_length]
    completed = _generate_checked(generate, prompts,
                                  SEQUENCE_LENGTH - prompt_length)
    completions = tokens_to_image(np.concatenate([prompts, completed], axis=1))
    pairs = np.stack([originals, completions], axis=1).reshape(
        (2 * n_samples,) + IMAGE_SHAPE)
    completions_path = image_samples.write_image_grid(
        pairs, os.path.join(output_dir, f'completions_{seed}.png'),
        n_columns=2)
    logging.info('Wrote %d sampled images to %s and %d completions of the '
                 'top half of validation images to %s.', n_samples,
                 samples_path, n_samples, completions_path)
    return samples_path, completions_path

  def _first_images(self, split: str, count: int) -> np.ndarray:
    images = []
    for image in self.images(split):
      images.append(image)
      if len(images) == count:
        return np.stack(images)
    raise DataError(
        f'The {split} split of {self.source.describe()} has {len(images)} '
        f'images, fewer than the {count} requested.')


def _generate_checked(generate, prompt_ids: np.ndarray,
                      n_new_tokens: int) -> np.ndarray:
  """Call generate and check that it returns [batch, n_new_tokens] of 0..255."""
  ids = np.asarray(generate(prompt_ids.astype(np.int32), n_new_tokens))
  expected = (prompt_ids.shape[0], n_new_tokens)
  if ids.shape != expected:
    raise ValueError(
        f'generate returned ids of shape {ids.shape}, expected {expected} '
        '(batch, n_new_tokens).')
  _check_subpixel_values(ids, 'generated ids')
  return ids.astype(np.int32)
