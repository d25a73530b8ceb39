"""Tests of --init_checkpoint: weights carried from one attention kind to another."""

import gin
import numpy as np
import pytest

from favor_trax.training import config
from tasks import experiment
from tasks import pg19

BINDINGS = [
    'run_experiment.batch_size = 4',
    'run_experiment.sequence_length = 64',
    "run_experiment.eval_splits = ('test',)",
    'run_experiment.eval_batch_size = 16',
    'PerformerLM.d_model = 32',
    'PerformerLM.d_ff = 64',
    'PerformerLM.n_layers = 1',
    'PerformerLM.n_heads = 2',
    'PerformerLM.max_len = 64',
    'PerformerLM.dropout = 0.0',
    'make_loop.learning_rate = 0.003',
    'make_loop.warmup_steps = 1',
    'make_loop.steps_per_eval = 1000',
    'make_loop.n_eval_batches = 1',
]


@pytest.fixture(name='corpus_dir', scope='module')
def fixture_corpus_dir(tmp_path_factory):
  return pg19.write_demo_corpus(tmp_path_factory.mktemp('corpus') / 'pg19')


def _run(output_dir, corpus_dir, attention, n_steps, init_checkpoint=None,
         extra=()):
  gin.clear_config()
  try:
    config.parse_gin([], BINDINGS + [
        f'PerformerLM.attention_layer = @favor_trax.{attention}',
        f'run_experiment.n_steps = {n_steps}'] + list(extra))
    return experiment.run_experiment(
        output_dir=str(output_dir), mode='train', data_dir=str(corpus_dir),
        init_checkpoint=init_checkpoint and str(init_checkpoint))
  finally:
    gin.clear_config()


@pytest.fixture(name='exact_run', scope='module')
def fixture_exact_run(tmp_path_factory, corpus_dir):
  output_dir = tmp_path_factory.mktemp('exact')
  results = _run(output_dir, corpus_dir, 'DotProductAttention', n_steps=30)
  return output_dir, results


def test_transfer_to_favor_keeps_accuracy(tmp_path, corpus_dir, exact_run):
  exact_dir, exact_results = exact_run
  untrained = _run(tmp_path / 'fresh', corpus_dir, 'FavorAttention',
                   n_steps=0)
  transferred = _run(tmp_path / 'transferred', corpus_dir, 'FavorAttention',
                     n_steps=0, init_checkpoint=exact_dir,
                     extra=['favor_trax.FavorAttention.n_random_features = '
                            '512'])

  untrained_loss = untrained['splits'][0]['nll_per_token']
  exact_loss = exact_results['splits'][0]['nll_per_token']
  transferred_loss = transferred['splits'][0]['nll_per_token']
  assert transferred['init_checkpoint']['not_loaded'] == []
  assert exact_loss < untrained_loss - 1.0
  # At least 80% of the exact model's improvement over an untrained model.
  assert (untrained_loss - transferred_loss) > 0.8 * (
      untrained_loss - exact_loss)


def test_transfer_lists_weights_it_cannot_load(tmp_path, corpus_dir,
                                               exact_run):
  exact_dir, _ = exact_run
  results = _run(tmp_path, corpus_dir, 'LSHAttention', n_steps=0,
                 init_checkpoint=exact_dir)

  transfer = results['init_checkpoint']
  assert transfer['not_loaded']
  assert transfer['n_loaded'] > 0
  # Embedding, norms, feed-forward and output layer still load.
  assert transfer['n_loaded'] >= 8


def test_transfer_rejects_other_d_model(tmp_path, corpus_dir, exact_run):
  exact_dir, _ = exact_run
  with pytest.raises(ValueError, match='d_model'):
    _run(tmp_path, corpus_dir, 'FavorAttention', n_steps=0,
         init_checkpoint=exact_dir, extra=['PerformerLM.d_model = 48'])


def test_transfer_from_missing_dir_fails(tmp_path, corpus_dir):
  with pytest.raises(FileNotFoundError, match='No named weights'):
    _run(tmp_path / 'out', corpus_dir, 'FavorAttention', n_steps=0,
         init_checkpoint=tmp_path / 'absent')


def test_transferred_weights_equal_source(tmp_path, corpus_dir, exact_run):
  exact_dir, exact_results = exact_run
  results = _run(tmp_path, corpus_dir, 'DotProductAttention', n_steps=0,
                 init_checkpoint=exact_dir)

  np.testing.assert_allclose(results['splits'][0]['total_nll_nats'],
                             exact_results['splits'][0]['total_nll_nats'],
                             rtol=1e-6)
