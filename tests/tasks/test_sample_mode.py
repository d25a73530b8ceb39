"""Tests of run.py's sample mode on a tiny trained run."""

import functools
import json
import pathlib
import subprocess
import sys

import gin
import pytest

from favor_trax import decoding
from favor_trax.training import config
from tasks import experiment
from tasks import pg19
from tasks import sampling
from tasks import vocabulary as vocabulary_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

TINY_BINDINGS = [
    'run_experiment.batch_size = 4',
    'run_experiment.sequence_length = 64',
    "run_experiment.eval_splits = ('test',)",
    'run_experiment.n_steps = 10',
    'PerformerLM.d_model = 32',
    'PerformerLM.d_ff = 64',
    'PerformerLM.n_layers = 1',
    'PerformerLM.n_heads = 2',
    'PerformerLM.max_len = 64',
    'PerformerLM.dropout = 0.0',
    'favor_trax.FavorAttention.n_random_features = 32',
    'favor_trax.FavorAttention.redraw_every = 3',
    'make_loop.learning_rate = 0.003',
    'make_loop.warmup_steps = 1',
    'make_loop.steps_per_checkpoint = 5',
    'make_loop.steps_per_eval = 100',
    'make_loop.n_eval_batches = 1',
]


@pytest.fixture(name='trained_run', scope='module')
def fixture_trained_run(tmp_path_factory):
  """Train the tiny model for 10 steps; return (output_dir, corpus_dir)."""
  root = tmp_path_factory.mktemp('sample_mode')
  corpus_dir = pg19.write_demo_corpus(root / 'pg19')
  output_dir = root / 'run'
  gin.clear_config()
  config.parse_gin([], TINY_BINDINGS)
  experiment.run_experiment(output_dir=str(output_dir), mode='train',
                            data_dir=str(corpus_dir))
  gin.clear_config()
  return output_dir, corpus_dir


def _sample(trained_run, **options):
  output_dir, corpus_dir = trained_run
  gin.clear_config()
  config.parse_gin([], TINY_BINDINGS)
  try:
    return experiment.run_experiment(
        output_dir=str(output_dir), mode='sample', data_dir=str(corpus_dir),
        sample_options=sampling.SampleOptions(**options))
  finally:
    gin.clear_config()


def test_greedy_sample_matches_full_pass_of_checkpoint(trained_run):
  prompt = 'The list '
  results = _sample(trained_run, prompt=prompt, n_new_tokens=20,
                    temperature=0.0)

  output_dir, _ = trained_run
  gin.clear_config()
  config.parse_gin([], TINY_BINDINGS)
  vocabulary = vocabulary_lib.ByteVocabulary()
  model_fn = gin.get_configurable('PerformerLM')
  model_fn = functools.partial(model_fn, vocab_size=vocabulary.vocab_size)
  trained = sampling.load_trained_model(
      model_fn, str(output_dir / 'model.pkl.gz'), 64)
  gin.clear_config()
  prompt_ids = vocabulary.encode(prompt)[None]
  reference, _ = decoding.full_pass_greedy(
      trained, trained.weights, trained.state, prompt_ids, 20)
  expected = vocabulary.decode(reference[0])

  assert results['step'] == 10
  assert results['samples'] == [expected]
  saved = json.loads((output_dir / sampling.SAMPLES_FILE).read_text())
  assert saved['samples'] == [expected]


def test_samples_repeat_for_a_seed(trained_run):
  first = _sample(trained_run, prompt='a', n_samples=3, n_new_tokens=15,
                  temperature=1.0, top_k=5, seed=4)
  second = _sample(trained_run, prompt='a', n_samples=3, n_new_tokens=15,
                   temperature=1.0, top_k=5, seed=4)
  assert first['samples'] == second['samples']
  assert len(first['samples']) == 3


def test_prompt_longer_than_max_len_rejected(trained_run):
  with pytest.raises(config.ConfigError, match='max_len = 64 positions'):
    _sample(trained_run, prompt='x' * 64)
  with pytest.raises(config.ConfigError, match='--sample_length'):
    _sample(trained_run, prompt='x' * 60, n_new_tokens=10)


def test_default_length_fills_max_len(trained_run):
  results = _sample(trained_run, prompt='abc', temperature=0.0)
  assert results['n_new_tokens'] == 64 - 3


def test_sample_without_checkpoint_fails(tmp_path, trained_run):
  _, corpus_dir = trained_run
  gin.clear_config()
  config.parse_gin([], TINY_BINDINGS)
  with pytest.raises(FileNotFoundError, match='No checkpoint'):
    experiment.run_experiment(output_dir=str(tmp_path), mode='sample',
                              data_dir=str(corpus_dir))
  gin.clear_config()


@pytest.mark.parametrize('flag, message', [
    ('--temperature=-1', '--temperature must be >= 0'),
    ('--top_k=-2', '--top_k must be >= 0'),
    ('--n_samples=0', '--n_samples must be at least 1'),
    ('--sample_length=0', '--sample_length must be at least 1'),
])
def test_run_rejects_bad_sample_flags(tmp_path, flag, message):
  completed = subprocess.run(
      [sys.executable, 'run.py', '--config_file', 'gin/pg19/demo.gin',
       '--output_dir', str(tmp_path), '--mode', 'sample', flag],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert completed.returncode == 1
  assert message in completed.stderr
  assert 'Traceback' not in completed.stderr
