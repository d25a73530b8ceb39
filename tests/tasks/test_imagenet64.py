"""Tests of ImageNet64 reading, token order, streams, results and bad input."""

import logging
import math
import pathlib

import numpy as np
import pytest

from tasks import imagenet64
from tasks import imagenet64_sources

IMAGENET64_MINI_DIR = (pathlib.Path(__file__).resolve().parents[2] / '..'
                       / 'shared' / 'data' / 'imagenet64_mini')


def _random_images(count, seed):
  return np.random.default_rng(seed).integers(
      0, 256, size=(count, 64, 64, 3), dtype=np.uint8)


def _planar_rows(images):
  """Lay images [N, 64, 64, 3] out as the npz release does: [N, 12288]."""
  return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _write_npz(path, data, **arrays):
  np.savez(path, data=data, **arrays)
  return path


def _write_release(root, train_batches, validation):
  """Write train_data_batch_<n>.npz per entry of train_batches, val_data.npz."""
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  for number, images in train_batches.items():
    labels = np.arange(len(images)) + 1
    _write_npz(root / f'train_data_batch_{number}.npz', _planar_rows(images),
               labels=labels, mean=np.zeros(12288))
  if validation is not None:
    _write_npz(root / 'val_data.npz', _planar_rows(validation),
               labels=np.arange(len(validation)) + 1)
  return root


@pytest.fixture(name='release')
def fixture_release(tmp_path):
  """A synthetic release: train batches 1, 2 and 10 (3 images each), 5 val."""
  train = {1: _random_images(3, 1), 2: _random_images(3, 2),
           10: _random_images(3, 10)}
  validation = _random_images(5, 0)
  root = _write_release(tmp_path / 'imagenet64', train, validation)
  return root, train, validation


@pytest.fixture(name='mini_dir')
def fixture_mini_dir():
  if not (IMAGENET64_MINI_DIR / 'val_data.npz').is_file():
    pytest.skip(f'Real ImageNet64 sample not found at {IMAGENET64_MINI_DIR}.')
  return IMAGENET64_MINI_DIR


# Token order and round trips.


def test_token_order_is_raster_with_interleaved_channels():
  image = _random_images(1, 3)[0]

  tokens = imagenet64.image_to_tokens(image)

  assert tokens.shape == (12288,)
  assert tokens.dtype == np.int32
  for row, column, channel in [(0, 0, 0), (0, 0, 2), (0, 1, 0), (1, 0, 1),
                               (37, 5, 2), (63, 63, 2)]:
    assert tokens[3 * (64 * row + column) + channel] == image[row, column,
                                                              channel]


def test_tokens_to_image_inverts_image_to_tokens():
  images = _random_images(4, 4)

  tokens = imagenet64.image_to_tokens(images)
  restored = imagenet64.tokens_to_image(tokens)

  assert tokens.shape == (4, 12288)
  assert restored.dtype == np.uint8
  np.testing.assert_array_equal(restored, images)


def test_mini_data_round_trips(mini_dir):
  raw = np.load(mini_dir / 'val_data.npz')['data']
  corpus = imagenet64.Imagenet64Corpus(data_dir=mini_dir)

  images = list(corpus.images('validation'))

  assert len(images) == len(raw) == 8
  for image, row in zip(images, raw):
    tokens = corpus.vocabulary.encode(image)
    # Subpixel (r, c, ch) sits at ch * 4096 + r * 64 + c in the planar row.
    for r, c, ch in [(0, 0, 0), (10, 20, 1), (63, 63, 2), (31, 0, 2)]:
      assert tokens[3 * (64 * r + c) + ch] == row[ch * 4096 + r * 64 + c]
    np.testing.assert_array_equal(
        corpus.vocabulary.decode(tokens),
        row.reshape(3, 64, 64).transpose(1, 2, 0))


def test_mini_data_counts(mini_dir):
  corpus = imagenet64.Imagenet64Corpus(data_dir=mini_dir)

  assert corpus.num_images('train') == 40
  assert corpus.num_images('validation') == 8
  assert str(mini_dir) in corpus.source.describe()
  assert not corpus.is_sample_corpus


def test_synthetic_release_round_trips(release):
  root, train, validation = release
  corpus = imagenet64.Imagenet64Corpus(data_dir=root)

  np.testing.assert_array_equal(np.stack(list(corpus.images('validation'))),
                                validation)
  # Train batches come by number: 1, 2, 10.
  np.testing.assert_array_equal(
      np.stack(list(corpus.images('train'))),
      np.concatenate([train[1], train[2], train[10]]))
  assert corpus.num_images('train') == 9


def test_vocabulary_attributes():
  vocabulary = imagenet64.SubpixelVocabulary()

  assert vocabulary.vocab_size == 256
  assert vocabulary.pad_id == 0
  assert vocabulary.eos_id is None


@pytest.mark.parametrize('value', [-1, 256])
def test_tokens_outside_byte_range_raise(value):
  tokens = np.zeros(12288, np.int32)
  tokens[5] = value

  with pytest.raises(ValueError, match='0..255'):
    imagenet64.tokens_to_image(tokens)


def test_tokens_of_wrong_length_raise():
  with pytest.raises(ValueError, match=r'\[\.\.\., 12288\]'):
    imagenet64.tokens_to_image(np.zeros(100, np.int32))


# Bad input.


def test_no_source_raises():
  with pytest.raises(imagenet64.DataError, match='No ImageNet64 source') as (
      error):
    imagenet64.Imagenet64Corpus()

  assert '--data_dir' in str(error.value)
  assert 'tfds_data_dir' in str(error.value)


def test_both_sources_raise(release, tmp_path):
  root, _, _ = release

  with pytest.raises(ValueError, match='only one source'):
    imagenet64.Imagenet64Corpus(data_dir=root, tfds_data_dir=tmp_path)


def test_missing_directory_raises(tmp_path):
  missing = tmp_path / 'absent'

  with pytest.raises(imagenet64.DataError, match='directory not found') as (
      error):
    imagenet64.Imagenet64Corpus(data_dir=missing)

  assert str(missing) in str(error.value)
  assert 'val_data.npz' in str(error.value)


def test_directory_without_npz_raises(tmp_path):
  (tmp_path / 'notes.txt').write_text('not images', encoding='utf-8')

  with pytest.raises(imagenet64.DataError, match='no ImageNet64 npz') as (
      error):
    imagenet64.Imagenet64Corpus(data_dir=tmp_path)

  assert 'notes.txt' in str(error.value)
  assert 'train_data_batch_1.npz' in str(error.value)


def test_missing_split_file_raises_on_use(tmp_path):
  root = _write_release(tmp_path / 'only_val', {}, _random_images(2, 0))
  corpus = imagenet64.Imagenet64Corpus(data_dir=root)

  with pytest.raises(imagenet64.DataError, match='train split has no file') as (
      error):
    corpus.train_stream(2, 12288, seed=0)

  assert 'train_data_batch_<n>.npz' in str(error.value)
  assert str(root) in str(error.value)


@pytest.mark.parametrize('shape', [(2, 100), (2, 64, 64, 3), (12288,)])
def test_wrong_shape_raises(tmp_path, shape):
  path = _write_npz(tmp_path / 'val_data.npz', np.zeros(shape, np.uint8))

  with pytest.raises(imagenet64.DataError, match='expected') as error:
    imagenet64.Imagenet64Corpus(data_dir=tmp_path)

  message = str(error.value)
  assert str(path) in message
  assert f'shape {shape}' in message
  assert '(N, 12288)' in message


def test_empty_data_raises(tmp_path):
  _write_npz(tmp_path / 'val_data.npz', np.zeros((0, 12288), np.uint8))

  with pytest.raises(imagenet64.DataError, match='contains no images'):
    imagenet64.Imagenet64Corpus(data_dir=tmp_path)


def test_float_dtype_raises(tmp_path):
  path = _write_npz(tmp_path / 'val_data.npz',
                    np.zeros((2, 12288), np.float32))

  with pytest.raises(imagenet64.DataError, match='dtype float32') as error:
    imagenet64.Imagenet64Corpus(data_dir=tmp_path)

  assert str(path) in str(error.value)
  assert 'uint8' in str(error.value)


@pytest.mark.parametrize('bad_value', [-3, 300])
def test_values_outside_byte_range_raise(tmp_path, bad_value):
  data = np.zeros((2, 12288), np.int64)
  data[1, 7] = bad_value
  path = _write_npz(tmp_path / 'val_data.npz', data)
  corpus = imagenet64.Imagenet64Corpus(data_dir=tmp_path)

  with pytest.raises(imagenet64.DataError, match='0..255') as error:
    list(corpus.images('validation'))

  message = str(error.value)
  assert str(path) in message
  assert str(bad_value) in message


def test_integer_dtype_in_range_is_read(tmp_path):
  images = _random_images(2, 5)
  _write_npz(tmp_path / 'val_data.npz', _planar_rows(images).astype(np.int64))
  corpus = imagenet64.Imagenet64Corpus(data_dir=tmp_path)

  np.testing.assert_array_equal(np.stack(list(corpus.images('validation'))),
                                images)


def test_missing_data_array_raises(tmp_path):
  path = tmp_path / 'val_data.npz'
  np.savez(path, images=np.zeros((2, 12288), np.uint8))

  with pytest.raises(imagenet64.DataError, match='no array `data`') as error:
    imagenet64.Imagenet64Corpus(data_dir=tmp_path)

  assert str(path) in str(error.value)
  assert 'images' in str(error.value)


def test_file_that_is_not_npz_raises(tmp_path):
  path = tmp_path / 'val_data.npz'
  path.write_bytes(b'not a zip archive')

  with pytest.raises(imagenet64.DataError, match='not a readable npz') as (
      error):
    imagenet64.Imagenet64Corpus(data_dir=tmp_path)

  assert str(path) in str(error.value)


def test_missing_file_raises_in_loader(tmp_path):
  path = tmp_path / 'train_data_batch_3.npz'

  with pytest.raises(imagenet64.DataError, match='file not found') as error:
    imagenet64_sources.load_npz_images(path)

  assert str(path) in str(error.value)


# Streams.


def test_train_stream_batches(release):
  root, train, _ = release
  corpus = imagenet64.Imagenet64Corpus(data_dir=root)
  all_tokens = imagenet64.image_to_tokens(
      np.concatenate([train[1], train[2], train[10]]))

  stream = corpus.train_stream(batch_size=3, length=12288, seed=0)
  epoch = [next(stream) for _ in range(3)]

  for inputs, targets, weights in epoch:
    assert inputs.shape == targets.shape == weights.shape == (3, 12288)
    assert inputs.dtype == targets.dtype == np.int32
    assert weights.dtype == np.float32
    np.testing.assert_array_equal(inputs, targets)
    np.testing.assert_array_equal(weights, 1.0)
  # One epoch contains every train image once, in some order.
  rows = np.concatenate([inputs for inputs, _, _ in epoch])
  assert sorted(map(bytes, rows.astype(np.uint8))) == sorted(
      map(bytes, all_tokens.astype(np.uint8)))


def test_train_stream_is_shuffled_and_seeded(release):
  root, train, _ = release
  corpus = imagenet64.Imagenet64Corpus(data_dir=root)
  stored = imagenet64.image_to_tokens(
      np.concatenate([train[1], train[2], train[10]]))

  def first_rows(seed):
    stream = corpus.train_stream(batch_size=9, length=12288, seed=seed)
    return [next(stream)[0] for _ in range(2)]

  first = first_rows(0)
  np.testing.assert_array_equal(first[0], first_rows(0)[0])
  np.testing.assert_array_equal(first[1], first_rows(0)[1])
  assert not np.array_equal(first[0], first_rows(1)[0])
  assert not np.array_equal(first[0], stored)
  assert not np.array_equal(first[0], first[1])  # epochs differ in order


def test_train_stream_carries_images_across_epochs(release):
  root, _, _ = release
  corpus = imagenet64.Imagenet64Corpus(data_dir=root)

  # 9 images in batches of 4: the third batch takes 1 image of epoch 1 and 3
  # of epoch 2.
  stream = corpus.train_stream(batch_size=4, length=12288, seed=0)
  batches = [next(stream) for _ in range(9)]

  assert all(batch[0].shape == (4, 12288) for batch in batches)
  rows = np.concatenate([batch[0] for batch in batches])
  epochs = rows.reshape(4, 9, 12288)
  for epoch in epochs[1:]:
    assert sorted(map(bytes, epoch.astype(np.uint8))) == sorted(
        map(bytes, epochs[0].astype(np.uint8)))


def test_eval_stream_covers_every_subpixel_once(release):
  root, _, validation = release
  corpus = imagenet64.Imagenet64Corpus(data_dir=root)

  batches = list(corpus.eval_stream('validation', batch_size=2, length=12288))

  assert len(batches) == corpus.eval_batch_count('validation', 2, 12288) == 3
  inputs = np.concatenate([batch[0] for batch in batches])
  weights = np.concatenate([batch[2] for batch in batches])
  assert weights.sum() == 5 * 12288
  np.testing.assert_array_equal(weights[5], 0.0)  # the padding row
  np.testing.assert_array_equal(inputs[weights == 1.0],
                                imagenet64.image_to_tokens(validation).ravel())


def test_shorter_length_takes_first_subpixels(release):
  root, _, validation = release
  corpus = imagenet64.Imagenet64Corpus(data_dir=root)

  inputs, _, weights = next(corpus.eval_stream('validation', 5, 384))

  assert inputs.shape == (5, 384)
  np.testing.assert_array_equal(
      inputs, imagenet64.image_to_tokens(validation)[:, :384])
  np.testing.assert_array_equal(weights, 1.0)


@pytest.mark.parametrize('length', [0, 12289])
def test_invalid_length_raises(release, length):
  root, _, _ = release
  corpus = imagenet64.Imagenet64Corpus(data_dir=root)

  with pytest.raises(ValueError, match='length'):
    corpus.train_stream(2, length, seed=0)
  with pytest.raises(ValueError, match='length'):
    corpus.eval_stream('validation', 2, length)


def test_unknown_split_raises(release):
  root, _, _ = release
  corpus = imagenet64.Imagenet64Corpus(data_dir=root)

  with pytest.raises(ValueError, match="'test'"):
    corpus.eval_stream('test', 2, 12288)


# Results.


def test_split_results_bits_per_dim(release):
  root, _, _ = release
  corpus = imagenet64.Imagenet64Corpus(data_dir=root)
  nll = 5 * 12288 * 3.0 * math.log(2)  # 3 bits per subpixel

  results = corpus.split_results('validation', nll, float(5 * 12288), 12288.0)

  assert results['num_images'] == 5
  assert results['num_subpixels'] == 5 * 12288
  assert results['subpixels_per_image'] == 12288
  assert results['bits_per_dim'] == pytest.approx(3.0)
  assert results['nll_per_subpixel'] == pytest.approx(3.0 * math.log(2))
  assert results['accuracy'] == pytest.approx(0.2)
  assert '49,999' in results['validation_release']
  assert '50,000' in results['validation_release']
  assert 'partial_images' not in results


def test_split_results_marks_partial_images(release):
  root, _, _ = release
  corpus = imagenet64.Imagenet64Corpus(data_dir=root)

  results = corpus.split_results('validation', 100.0, 5 * 384, 0)

  assert results['subpixels_per_image'] == 384
  assert results['bits_per_dim'] == pytest.approx(100 / math.log(2) / 1920)
  assert 'first 384' in results['partial_images']
  assert 'first 384' in corpus.format_results(results)


def test_split_results_rejects_inconsistent_count(release):
  root, _, _ = release
  corpus = imagenet64.Imagenet64Corpus(data_dir=root)

  with pytest.raises(RuntimeError, match='12289'):
    corpus.split_results('validation', 1.0, 12289, 0)


def test_format_results_is_one_line(release):
  root, _, _ = release
  corpus = imagenet64.Imagenet64Corpus(data_dir=root)
  results = corpus.split_results('validation', 1000.0, 5 * 12288, 10)
  results['step'] = 7

  line = corpus.format_results(results)

  assert '\n' not in line
  assert line.startswith('validation @ step 7: ')
  assert f"{results['bits_per_dim']:.4f} bits/dim" in line
  assert '5 images' in line


@pytest.mark.parametrize('count, release_name', [
    (49_999, 'PixelRNN release'), (50_000, 'npz release'),
    (8, 'neither')])
def test_validation_release_is_named(count, release_name):
  note = imagenet64.describe_validation_release(count)

  assert note.startswith(f'{count} validation images: ')
  assert release_name in note
  assert 'not comparable' in note


def test_construction_logs_validation_size(release, caplog):
  root, _, _ = release

  with caplog.at_level(logging.INFO):
    imagenet64.Imagenet64Corpus(data_dir=root)

  assert any('validation split' in record.getMessage()
             and ': 5 images' in record.getMessage()
             for record in caplog.records)
  warnings = [record.getMessage() for record in caplog.records
              if record.levelno == logging.WARNING]
  release_warnings = [message for message in warnings if '49,999' in message]
  assert release_warnings
  assert '50,000' in release_warnings[0]


def test_shuffle_buffer_yields_each_item_once():
  items = [np.array([index]) for index in range(10)]

  shuffled = list(imagenet64_sources._shuffle_buffered(  # pylint: disable=protected-access
      iter(items), 4, np.random.default_rng(0)))

  assert sorted(int(item[0]) for item in shuffled) == list(range(10))
  assert [int(item[0]) for item in shuffled] != list(range(10))
