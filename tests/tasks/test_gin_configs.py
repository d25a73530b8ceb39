"""Every task config with every attention config builds and trains a step."""

import math
import pathlib

import gin
import pytest

from favor_trax.training import config
from tasks import experiment
from tasks import pg19

GIN_DIR = pathlib.Path(__file__).resolve().parents[2] / 'gin'
TASK_CONFIGS = sorted((GIN_DIR / 'pg19').glob('*.gin'))
ATTENTION_CONFIGS = sorted((GIN_DIR / 'attention').glob('*.gin'))

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
