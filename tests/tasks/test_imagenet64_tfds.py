"""Tests of reading ImageNet64 from a prepared tensorflow-datasets directory.

The prepared dataset is built offline: the real TFDS "downsampled_imagenet"
builder runs on small tar files of PNG images in place of its downloads.
"""

import io
import pathlib
import tarfile

import numpy as np
import pytest

from tasks import imagenet64

tfds = pytest.importorskip('tensorflow_datasets')
pil_image = pytest.importorskip('PIL.Image')


def _write_tar(path, images):
  """Write images as PNG files into a tar archive, like image-net.org/small."""
  with tarfile.open(path, 'w') as archive:
    for index, image in enumerate(images):
      buffer = io.BytesIO()
      pil_image.fromarray(image).save(buffer, format='PNG')
      data = buffer.getvalue()
      member = tarfile.TarInfo(f'{path.stem}/{index:05d}.png')
      member.size = len(data)
      archive.addfile(member, io.BytesIO(data))
  return path


@pytest.fixture(scope='module', name='prepared')
def fixture_prepared(tmp_path_factory):
  """A TFDS data directory with "downsampled_imagenet/64x64" prepared."""
  rng = np.random.default_rng(0)
  train = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
  validation = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
  source_dir = tmp_path_factory.mktemp('release')
  archives = {
      'train': _write_tar(source_dir / 'train_64x64.tar', train),
      'valid': _write_tar(source_dir / 'valid_64x64.tar', validation),
  }

  def local_download(self, urls):
    del self
    return [archives['train' if 'train_' in url else 'valid'] for url in urls]

  tfds_dir = tmp_path_factory.mktemp('tfds')
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(tfds.download.DownloadManager, 'download', local_download)
    builder = tfds.builder('downsampled_imagenet/64x64',
                           data_dir=str(tfds_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return tfds_dir, train, validation


def _sorted_rows(images):
  return sorted(bytes(image) for image in images)


def test_tfds_reads_every_image(prepared):
  tfds_dir, train, validation = prepared
  corpus = imagenet64.Imagenet64Corpus(tfds_data_dir=tfds_dir)

  # TFDS stores examples in an order of its own.
  assert _sorted_rows(corpus.images('validation')) == _sorted_rows(validation)
  assert _sorted_rows(corpus.images('train')) == _sorted_rows(train)
  assert corpus.num_images('validation') == 3
  assert corpus.num_images('train') == 6
  assert 'downsampled_imagenet/64x64' in corpus.source.describe()


def test_tfds_eval_stream_covers_images(prepared):
  tfds_dir, _, validation = prepared
  corpus = imagenet64.Imagenet64Corpus(tfds_data_dir=tfds_dir)

  batches = list(corpus.eval_stream('validation', 2, 12288))

  inputs = np.concatenate([batch[0] for batch in batches])
  weights = np.concatenate([batch[2] for batch in batches])
  rows = inputs[weights[:, 0] == 1.0]
  assert _sorted_rows(rows.astype(np.uint8)) == _sorted_rows(
      imagenet64.image_to_tokens(validation).astype(np.uint8))


def test_tfds_train_stream_is_seeded(prepared):
  tfds_dir, _, _ = prepared
  corpus = imagenet64.Imagenet64Corpus(tfds_data_dir=tfds_dir,
                                       shuffle_buffer_images=4)

  first = [next(corpus.train_stream(3, 12288, seed=0))[0] for _ in range(2)]

  np.testing.assert_array_equal(first[0], first[1])


def test_tfds_not_prepared_raises(tmp_path):
  with pytest.raises(imagenet64.DataError, match='not prepared') as error:
    imagenet64.Imagenet64Corpus(tfds_data_dir=tmp_path)

  message = str(error.value)
  assert str(tmp_path) in message
  assert 'download_and_prepare' in message
  assert 'never downloads' in message


def test_tfds_missing_dir_raises(tmp_path):
  missing = pathlib.Path(tmp_path) / 'absent'

  with pytest.raises(imagenet64.DataError,
                     match='TFDS data directory not found') as error:
    imagenet64.Imagenet64Corpus(tfds_data_dir=missing)

  assert str(missing) in str(error.value)
