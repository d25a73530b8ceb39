"""Every task config with every attention config builds and trains a step."""

import math
import pathlib

import gin
import numpy as np
import pytest

from favor_trax.training import config
from tasks import experiment
from tasks import pg19

GIN_DIR = pathlib.Path(__file__).resolve().parents[2] / 'gin'
TASK_CONFIGS = sorted((GIN_DIR / 'pg19').glob('*.gin'))
ATTENTION_CONFIGS = sorted((GIN_DIR / 'attention').glob('*.gin'))
IMAGE_CONFIGS = sorted((GIN_DIR / 'imagenet64').glob('*.gin'))

# Shrinks any task config to a model and batch that train in seconds. The
# length is a multiple of the LSH chunk length.
SHRINK = [
    'run_experiment.batch_size = 2',
    'run_experiment.sequence_length = 128',
    'run_experiment.n_steps = 1',
    "run_experiment.eval_splits = ('test',)",
    'run_experiment.eval_batch_size = 16',
    'PerformerLM.d_model = 32',
    'PerformerLM.d_ff = 64',
    'PerformerLM.n_layers = 1',
    'PerformerLM.n_heads = 2',
    'PerformerLM.max_len = 128',
    'make_loop.n_eval_batches = 1',
]


@pytest.fixture(name='corpus_dir', scope='module')
def fixture_corpus_dir(tmp_path_factory):
  return pg19.write_demo_corpus(tmp_path_factory.mktemp('corpus') / 'pg19')


def test_configs_are_found():
  assert len(TASK_CONFIGS) >= 2
  assert len(ATTENTION_CONFIGS) >= 5


@pytest.mark.parametrize('attention_config', ATTENTION_CONFIGS,
                         ids=lambda path: path.stem)
@pytest.mark.parametrize('task_config', TASK_CONFIGS,
                         ids=lambda path: path.stem)
def test_config_trains_one_step(task_config, attention_config, corpus_dir,
                                tmp_path):
  gin.clear_config()
  try:
    config.parse_gin([str(task_config), str(attention_config)], SHRINK)
    results = experiment.run_experiment(
        output_dir=str(tmp_path), mode='train', data_dir=str(corpus_dir))
  finally:
    gin.clear_config()

  assert results['step'] == 1
  assert math.isfinite(results['splits'][0]['nll_per_token'])


# Shrinks an ImageNet64 config. Whole images of 12,288 subpixels with exact
# attention take minutes per step on a CPU, so these runs model the first 384
# subpixels (2 rows) of each image, a multiple of the LSH chunk length and of
# the local block. max_len and the axial shape stay those of the config.
# test_imagenet64_training.py trains on whole images.
IMAGE_SHRINK = [
    'run_experiment.batch_size = 2',
    'run_experiment.sequence_length = 384',
    'run_experiment.n_steps = 1',
    'run_experiment.eval_batch_size = 4',
    'PerformerLM.d_model = 32',
    'PerformerLM.d_ff = 64',
    'PerformerLM.n_layers = 1',
    'PerformerLM.n_heads = 2',
    'favor_trax.AxialPositionalEncoding.d_embs = (12, 12, 8)',
    'make_loop.n_eval_batches = 1',
]


@pytest.fixture(name='image_dir', scope='module')
def fixture_image_dir(tmp_path_factory):
  """A directory in the ImageNet64 npz layout: 4 train, 3 validation images."""
  root = tmp_path_factory.mktemp('imagenet64')
  rng = np.random.default_rng(0)
  for name, count in (('train_data_batch_1.npz', 4), ('val_data.npz', 3)):
    data = rng.integers(0, 256, size=(count, 12288), dtype=np.uint8)
    np.savez(root / name, data=data, labels=np.ones(count, np.int64))
  return root


def test_image_configs_are_found():
  assert [path.stem for path in IMAGE_CONFIGS] == ['paper', 'small']


def _train_image_config_one_step(config_files, image_dir, output_dir):
  gin.clear_config()
  try:
    config.parse_gin([str(path) for path in config_files], IMAGE_SHRINK)
    results = experiment.run_experiment(
        output_dir=str(output_dir), mode='train', data_dir=str(image_dir))
  finally:
    gin.clear_config()

  split_results = results['splits'][0]
  assert results['step'] == 1
  assert split_results['num_images'] == 3
  assert split_results['subpixels_per_image'] == 384
  assert math.isfinite(split_results['bits_per_dim'])


# small.gin includes paper.gin, so pairing small.gin with every attention
# config also applies paper.gin's bindings with it. paper.gin alone adds its
# feed-forward chunking and feature count, which small.gin overrides.
@pytest.mark.parametrize('attention_config', ATTENTION_CONFIGS,
                         ids=lambda path: path.stem)
def test_small_image_config_trains_one_step(attention_config, image_dir,
                                            tmp_path):
  _train_image_config_one_step(
      [GIN_DIR / 'imagenet64' / 'small.gin', attention_config], image_dir,
      tmp_path)


def test_paper_image_config_trains_one_step(image_dir, tmp_path):
  _train_image_config_one_step([GIN_DIR / 'imagenet64' / 'paper.gin'],
                               image_dir, tmp_path)
