"""Tests of PNG image grids and of Imagenet64Corpus.write_samples."""

import pathlib

from matplotlib import image as matplotlib_image
import numpy as np
import pytest

from tasks import image_samples
from tasks import imagenet64

TILE = 64
PADDING = 2


def _random_images(count, seed, size=TILE):
  return np.random.default_rng(seed).integers(
      0, 256, size=(count, size, size, 3), dtype=np.uint8)


def _read_png(path):
  """Read a PNG written by write_image_grid as uint8 RGB."""
  pixels = matplotlib_image.imread(path)
  assert pixels.shape[-1] == 4
  np.testing.assert_array_equal(pixels[..., 3], 1.0)  # opaque
  return np.round(pixels[..., :3] * 255).astype(np.uint8)


def _tile(grid, row, column):
  y, x = image_samples.tile_origin(row, column, TILE, TILE, PADDING)
  return grid[y:y + TILE, x:x + TILE]


def test_grid_places_images_row_by_row():
  images = _random_images(5, 0)

  grid = image_samples.image_grid(images, n_columns=3, padding=PADDING)

  assert grid.shape == (2 * TILE + 3 * PADDING, 3 * TILE + 4 * PADDING, 3)
  for index, image in enumerate(images):
    np.testing.assert_array_equal(_tile(grid, index // 3, index % 3), image)
  # The empty sixth cell and the borders are padding.
  np.testing.assert_array_equal(_tile(grid, 1, 2), 255)
  np.testing.assert_array_equal(grid[:PADDING], 255)
  np.testing.assert_array_equal(grid[:, :PADDING], 255)


def test_grid_without_padding_is_plain_tiling():
  images = _random_images(4, 1, size=3)

  grid = image_samples.image_grid(images, n_columns=2, padding=0)

  np.testing.assert_array_equal(
      grid, np.concatenate([np.concatenate(list(images[:2]), axis=1),
                            np.concatenate(list(images[2:]), axis=1)]))


def test_written_png_has_grid_size_and_pixels(tmp_path):
  images = _random_images(3, 2)
  path = tmp_path / 'nested' / 'grid.png'

  written = image_samples.write_image_grid(images, path, n_columns=2,
                                           padding=PADDING)

  assert written == str(path)
  pixels = _read_png(path)
  assert pixels.shape[:2] == image_samples.grid_size(2, 2, TILE, TILE,
                                                     PADDING)
  np.testing.assert_array_equal(
      pixels, image_samples.image_grid(images, 2, PADDING))


@pytest.mark.parametrize('images, message', [
    (np.zeros((2, 8, 8), np.uint8), 'shape'),
    (np.zeros((0, 8, 8, 3), np.uint8), 'n > 0'),
    (np.zeros((2, 8, 8, 3), np.float32), 'uint8'),
])
def test_grid_rejects_bad_images(images, message):
  with pytest.raises(ValueError, match=message):
    image_samples.image_grid(images, n_columns=2)


def test_grid_rejects_bad_columns():
  with pytest.raises(ValueError, match='n_columns'):
    image_samples.image_grid(_random_images(2, 0, size=4), n_columns=0)


# Imagenet64Corpus.write_samples.


@pytest.fixture(name='corpus')
def fixture_corpus(tmp_path):
  """A corpus whose validation split has 4 random images."""
  root = pathlib.Path(tmp_path) / 'imagenet64'
  root.mkdir()
  validation = _random_images(4, 7)
  rows = validation.transpose(0, 3, 1, 2).reshape(4, -1)
  np.savez(root / 'val_data.npz', data=rows, labels=np.ones(4))
  return imagenet64.Imagenet64Corpus(data_dir=root), validation


class RecordingGenerate:
  """A deterministic stand-in for a model's sampler.

  From scratch, sample b is the ramp (t + 37 * b) mod 256 over positions t.
  With a prompt, the new tokens are 255 minus the prompt's first tokens, so
  a completed image's bottom half is its top half inverted.
  """

  def __init__(self):
    self.calls = []

  def __call__(self, prompt_ids, n_new_tokens):
    self.calls.append((prompt_ids.shape, prompt_ids.dtype, n_new_tokens))
    batch, prompt_length = prompt_ids.shape
    if prompt_length == 0:
      positions = np.arange(n_new_tokens)[None, :]
      return (positions + 37 * np.arange(batch)[:, None]) % 256
    return 255 - prompt_ids[:, :n_new_tokens]


def test_write_samples_writes_both_grids(corpus, tmp_path):
  corpus, validation = corpus
  generate = RecordingGenerate()

  samples_path, completions_path = corpus.write_samples(
      generate, tmp_path / 'samples', n_samples=3, seed=5)

  assert generate.calls == [((3, 0), np.int32, 12288),
                            ((3, 6144), np.int32, 6144)]
  assert pathlib.Path(samples_path).name == 'samples_5.png'
  assert pathlib.Path(completions_path).name == 'completions_5.png'

  samples = _read_png(samples_path)
  assert samples.shape[:2] == image_samples.grid_size(1, 3, TILE, TILE,
                                                      PADDING)
  for index in range(3):
    expected = imagenet64.tokens_to_image(
        (np.arange(12288) + 37 * index) % 256)
    np.testing.assert_array_equal(_tile(samples, 0, index), expected)

  completions = _read_png(completions_path)
  assert completions.shape[:2] == image_samples.grid_size(3, 2, TILE, TILE,
                                                          PADDING)
  for index in range(3):
    original = _tile(completions, index, 0)
    completed = _tile(completions, index, 1)
    np.testing.assert_array_equal(original, validation[index])
    np.testing.assert_array_equal(completed[:32], validation[index][:32])
    np.testing.assert_array_equal(completed[32:],
                                  255 - validation[index][:32])


def test_write_samples_rejects_wrong_shape(corpus, tmp_path):
  corpus, _ = corpus

  def generate(prompt_ids, n_new_tokens):
    return np.zeros((len(prompt_ids), n_new_tokens - 1), np.int32)

  with pytest.raises(ValueError, match=r'shape \(2, 12287\)'):
    corpus.write_samples(generate, tmp_path, n_samples=2, seed=0)


def test_write_samples_rejects_ids_outside_bytes(corpus, tmp_path):
  corpus, _ = corpus

  def generate(prompt_ids, n_new_tokens):
    return np.full((len(prompt_ids), n_new_tokens), 256, np.int32)

  with pytest.raises(ValueError, match='0..255'):
    corpus.write_samples(generate, tmp_path, n_samples=2, seed=0)


def test_write_samples_needs_enough_validation_images(corpus, tmp_path):
  corpus, _ = corpus

  with pytest.raises(imagenet64.DataError, match='has 4 images'):
    corpus.write_samples(RecordingGenerate(), tmp_path, n_samples=5, seed=0)
