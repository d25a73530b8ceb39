"""Tests of the training job: training, resuming, results and bad input."""

import gzip
import json
import math
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
import time

import gin
import numpy as np
import pytest

from favor_trax.training import config
from tasks import experiment
from tasks import pg19

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
PG19_MINI_DIR = REPO_ROOT / '..' / 'shared' / 'data' / 'pg19_mini'

# A model small enough to train a step in well under a second on a CPU.
TINY_BINDINGS = [
    'run_experiment.batch_size = 4',
    'run_experiment.sequence_length = 64',
    "run_experiment.eval_splits = ('test',)",
    'PerformerLM.d_model = 32',
    'PerformerLM.d_ff = 64',
    'PerformerLM.n_layers = 1',
    'PerformerLM.n_heads = 2',
    'PerformerLM.max_len = 64',
    'PerformerLM.dropout = 0.0',
    'favor_trax.FavorAttention.n_random_features = 32',
    'make_loop.learning_rate = 0.003',
    'make_loop.warmup_steps = 1',
    'make_loop.steps_per_checkpoint = 5',
    'make_loop.steps_per_eval = 100',
    'make_loop.n_eval_batches = 1',
]


@pytest.fixture(name='corpus_dir', scope='module')
def fixture_corpus_dir(tmp_path_factory):
  return pg19.write_demo_corpus(tmp_path_factory.mktemp('corpus') / 'pg19')


@pytest.fixture(autouse=True)
def clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _run(output_dir, corpus_dir, n_steps, mode='train', extra=()):
  gin.clear_config()
  config.parse_gin(
      [], TINY_BINDINGS + [f'run_experiment.n_steps = {n_steps}'] + list(extra))
  return experiment.run_experiment(
      output_dir=str(output_dir), mode=mode, data_dir=str(corpus_dir))


def test_training_lowers_loss(tmp_path, corpus_dir):
  before = _run(tmp_path / 'untrained', corpus_dir, n_steps=0)
  after = _run(tmp_path / 'trained', corpus_dir, n_steps=20)

  loss_before = before['splits'][0]['nll_per_token']
  loss_after = after['splits'][0]['nll_per_token']
  assert after['step'] == 20
  assert loss_before > math.log(200)  # near uniform over 258 byte ids
  assert loss_after < loss_before - 1.0


def test_resume_matches_uninterrupted_run(tmp_path, corpus_dir):
  uninterrupted = _run(tmp_path / 'straight', corpus_dir, n_steps=10)
  _run(tmp_path / 'resumed', corpus_dir, n_steps=5)
  resumed = _run(tmp_path / 'resumed', corpus_dir, n_steps=10)

  assert resumed['step'] == 10
  straight_split = uninterrupted['splits'][0]
  resumed_split = resumed['splits'][0]
  np.testing.assert_allclose(resumed_split['total_nll_nats'],
                             straight_split['total_nll_nats'], rtol=1e-5)


def test_resume_restores_saved_weights(tmp_path, corpus_dir):
  trained = _run(tmp_path, corpus_dir, n_steps=5)
  evaluated = _run(tmp_path, corpus_dir, n_steps=5, mode='eval')

  assert evaluated['step'] == 5
  assert (evaluated['splits'][0]['total_nll_nats'] ==
          trained['splits'][0]['total_nll_nats'])


def test_results_file_has_labelled_metrics(tmp_path, corpus_dir):
  _run(tmp_path, corpus_dir, n_steps=2)

  with open(tmp_path / experiment.RESULTS_FILE, encoding='utf-8') as f:
    results = json.load(f)
  split = results['splits'][0]
  assert split['split'] == 'test'
  assert split['step'] == 2
  statistics = pg19.Pg19Corpus(data_dir=corpus_dir).split_statistics('test')
  assert split['num_tokens'] == statistics.num_tokens
  assert split['num_words'] == statistics.num_words
  nll = split['total_nll_nats']
  assert split['token_perplexity'] == pytest.approx(
      math.exp(nll / statistics.num_tokens))
  assert split['word_perplexity'] == pytest.approx(
      math.exp(nll / statistics.num_words))
  assert split['bits_per_byte'] == pytest.approx(
      nll / math.log(2) / statistics.num_bytes)
  assert 0.0 <= split['accuracy'] <= 1.0


def test_eval_without_checkpoint_fails(tmp_path, corpus_dir):
  with pytest.raises(FileNotFoundError, match='No checkpoint'):
    _run(tmp_path, corpus_dir, n_steps=1, mode='eval')


def test_eval_reads_no_training_books(tmp_path, corpus_dir):
  trained = _run(tmp_path / 'run', corpus_dir, n_steps=1)
  without_train = tmp_path / 'no_train'
  shutil.copytree(corpus_dir, without_train)
  for book in (without_train / 'train').iterdir():
    book.unlink()

  evaluated = _run(tmp_path / 'run', without_train, n_steps=1, mode='eval')

  assert (evaluated['splits'][0]['nll_per_token'] ==
          trained['splits'][0]['nll_per_token'])


def test_eval_with_another_model_fails(tmp_path, corpus_dir):
  _run(tmp_path, corpus_dir, n_steps=1)
  for extra, name in (
      (['PerformerLM.n_layers = 2'], 'missing from the checkpoint'),
      (['PerformerLM.d_ff = 48'], '(32, 64) in the checkpoint')):
    with pytest.raises(config.ConfigError,
                       match='trained with another model') as raised:
      _run(tmp_path, corpus_dir, n_steps=1, mode='eval', extra=extra)
    assert name in str(raised.value)
    assert 'config.gin' in str(raised.value)
  # The same bindings still evaluate the checkpoint.
  results = _run(tmp_path, corpus_dir, n_steps=1, mode='eval')
  assert results['step'] == 1


def test_bad_eval_stride_is_one_line_error(tmp_path, corpus_dir):
  command = [
      sys.executable, str(REPO_ROOT / 'run.py'),
      '--config_file', str(REPO_ROOT / 'gin' / 'pg19' / 'demo.gin'),
      '--data_dir', str(corpus_dir), '--output_dir', str(tmp_path),
      '--config', "EvalConfig.mode = 'sliding'",
      '--config', 'EvalConfig.stride = 0',
  ]
  result = subprocess.run(command, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert 'In call to configurable' not in result.stderr
  assert result.stderr.count('EvalConfig.stride must be a positive') == 1
  assert ('Error: EvalConfig.stride must be a positive integer, got 0.'
          in result.stderr)


def test_bad_model_binding_is_config_error(tmp_path, corpus_dir):
  with pytest.raises(config.ConfigError,
                     match='chunk_size must be a positive int, got 0'):
    _run(tmp_path, corpus_dir, n_steps=1,
         extra=['favor_trax.FavorAttention.chunk_size = 0'])


def test_sample_corpus_results_name_no_temporary_path(tmp_path):
  gin.clear_config()
  config.parse_gin([], TINY_BINDINGS + ['run_experiment.n_steps = 1'])
  results = experiment.run_experiment(output_dir=str(tmp_path), mode='train')
  assert results['is_sample_corpus']
  assert results['data_source'] == experiment.SAMPLE_CORPUS_SOURCE


def test_missing_data_dir_fails(tmp_path):
  missing = tmp_path / 'no_such_pg19'
  with pytest.raises(pg19.DataError, match=str(missing)):
    _run(tmp_path / 'out', missing, n_steps=1)


def test_gin_file_that_does_not_parse_fails(tmp_path):
  path = tmp_path / 'broken.gin'
  path.write_text('PerformerLM.d_model = (512\n')
  with pytest.raises(config.ConfigError, match='broken.gin'):
    config.parse_gin([str(path)], [])


def test_gin_file_with_unknown_parameter_fails(tmp_path):
  path = tmp_path / 'unknown.gin'
  path.write_text('PerformerLM.d_modle = 512\n')
  with pytest.raises(config.ConfigError, match='d_modle') as raised:
    config.parse_gin([str(path)], [])
  assert 'unknown.gin' in str(raised.value)


def test_unknown_binding_fails():
  with pytest.raises(config.ConfigError, match='NoSuchLayer.depth'):
    config.parse_gin([], ['NoSuchLayer.depth = 3'])


def test_missing_gin_file_fails(tmp_path):
  with pytest.raises(config.ConfigError, match='not found'):
    config.parse_gin([str(tmp_path / 'absent.gin')], [])


def test_unwritable_output_dir_fails(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  with pytest.raises(OSError, match='not writable'):
    config.ensure_writable_dir(str(blocker / 'run'))


def test_unwritable_output_dir_fails_before_training(tmp_path, corpus_dir):
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  command = [
      sys.executable, str(REPO_ROOT / 'run.py'),
      '--config_file', str(REPO_ROOT / 'gin' / 'pg19' / 'demo.gin'),
      '--data_dir', str(corpus_dir),
      '--output_dir', str(blocker / 'run'),
  ]
  result = subprocess.run(command, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode != 0
  assert 'not writable' in result.stderr
  assert 'Training from step' not in result.stderr
  assert 'Traceback' not in result.stderr


def test_run_py_trains_and_writes_results(tmp_path, corpus_dir):
  command = [
      sys.executable, str(REPO_ROOT / 'run.py'),
      '--config_file', str(REPO_ROOT / 'gin' / 'pg19' / 'demo.gin'),
      '--data_dir', str(corpus_dir),
      '--output_dir', str(tmp_path),
      '--config', 'run_experiment.n_steps = 3',
  ]
  for binding in TINY_BINDINGS:
    command += ['--config', binding]
  result = subprocess.run(command, capture_output=True, text=True,
                          timeout=600, check=False)

  assert result.returncode == 0, result.stderr[-3000:]
  assert 'word perplexity' in result.stdout
  assert os.path.exists(tmp_path / experiment.RESULTS_FILE)
  assert os.path.exists(tmp_path / 'model.pkl.gz')


@pytest.mark.skipif(not PG19_MINI_DIR.is_dir(),
                    reason=f'PG-19 sample not found at {PG19_MINI_DIR}')
def test_trains_on_pg19_mini(tmp_path):
  results = _run(tmp_path, PG19_MINI_DIR, n_steps=2, extra=[
      "run_experiment.eval_splits = ('validation', 'test')",
      'run_experiment.eval_batch_size = 32',
      'run_experiment.sequence_length = 256',
      'PerformerLM.max_len = 256'])

  assert [split['split'] for split in results['splits']] == [
      'validation', 'test']
  for split in results['splits']:
    assert split['num_books'] == 1
    assert math.isfinite(split['word_perplexity'])


def _checkpoint_step(output_dir):
  with gzip.open(output_dir / 'model.pkl.gz', 'rb') as f:
    return pickle.load(f)['step']


def test_killed_run_resumes_from_last_checkpoint(tmp_path, corpus_dir):
  command = [
      sys.executable, str(REPO_ROOT / 'run.py'),
      '--config_file', str(REPO_ROOT / 'gin' / 'pg19' / 'demo.gin'),
      '--data_dir', str(corpus_dir),
      '--output_dir', str(tmp_path),
  ]
  for binding in TINY_BINDINGS + ['run_experiment.n_steps = 100000',
                                  'make_loop.steps_per_checkpoint = 3']:
    command += ['--config', binding]
  process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 300
    while time.time() < deadline:
      if (tmp_path / 'model.pkl.gz').exists() and _checkpoint_step(
          tmp_path) >= 6:
        break
      time.sleep(0.2)
    else:
      pytest.fail('run.py wrote no checkpoint of step 6 within 300 s')
  finally:
    process.kill()
    process.wait()
  saved_step = _checkpoint_step(tmp_path)

  resumed = _run(tmp_path, corpus_dir, n_steps=saved_step + 3)

  assert resumed['step'] == saved_step + 3
  assert math.isfinite(resumed['splits'][0]['nll_per_token'])


def test_negative_step_count_fails(tmp_path, corpus_dir):
  with pytest.raises(config.ConfigError, match='n_steps'):
    _run(tmp_path, corpus_dir, n_steps=-5)


def test_window_longer_than_max_len_fails(tmp_path, corpus_dir):
  with pytest.raises(config.ConfigError, match='max_len'):
    _run(tmp_path, corpus_dir, n_steps=1,
         extra=['run_experiment.sequence_length = 128'])


def test_operative_config_is_written(tmp_path, corpus_dir):
  _run(tmp_path, corpus_dir, n_steps=1)

  operative = (tmp_path / 'config.gin').read_text(encoding='utf-8')
  assert 'PerformerLM.d_model = 32' in operative
  assert 'run_experiment.n_steps = 1' in operative


def _run_with_files(output_dir, corpus_dir, config_files, bindings,
                    mode='train'):
  gin.clear_config()
  config.parse_gin([str(REPO_ROOT / path) for path in config_files],
                   TINY_BINDINGS + list(bindings))
  return experiment.run_experiment(
      output_dir=str(output_dir), mode=mode, data_dir=str(corpus_dir))


def test_sentencepiece_run_saves_and_reuses_model(tmp_path, corpus_dir):
  sentencepiece_gin = ['gin/vocabulary/sentencepiece.gin']
  trained = _run_with_files(
      tmp_path, corpus_dir, sentencepiece_gin,
      ['SentencePieceVocabulary.vocab_size = 1000',
       'run_experiment.n_steps = 2'])
  saved = tmp_path / 'sentencepiece.model'
  assert saved.is_file()
  saved_bytes = saved.read_bytes()

  # With neither vocab_size nor model_file, only the saved model can serve.
  evaluated = _run_with_files(
      tmp_path, corpus_dir, sentencepiece_gin,
      ['SentencePieceVocabulary.vocab_size = None',
       'run_experiment.n_steps = 2'], mode='eval')

  split = trained['splits'][0]
  assert split['num_tokens'] < split['num_bytes'] / 2
  assert evaluated['splits'][0]['total_nll_nats'] == split['total_nll_nats']
  assert saved.read_bytes() == saved_bytes


def test_streaming_run_records_evaluation(tmp_path, corpus_dir):
  results = _run_with_files(tmp_path, corpus_dir, [], [
      'run_experiment.n_steps = 1',
      'PerformerLM.positional_encoding = @favor_trax.NoPositionalEncoding',
      "EvalConfig.mode = 'streaming'",
      'EvalConfig.window = 256'])

  split = results['splits'][0]
  statistics = pg19.Pg19Corpus(data_dir=corpus_dir).split_statistics('test')
  assert (split['mode'], split['window'], split['stride']) == (
      'streaming', 256, 256)
  assert split['num_books'] == statistics.num_books
  assert split['num_tokens'] == statistics.num_tokens
  assert split['num_words'] == statistics.num_words
  assert 'corpus-level' in split['aggregation']
  assert math.isfinite(split['word_perplexity'])


def test_streaming_exact_attention_fails_before_training(tmp_path,
                                                         corpus_dir):
  with pytest.raises(config.ConfigError, match='DotProductAttention'):
    _run_with_files(tmp_path, corpus_dir, ['gin/attention/dot_product.gin'], [
        'run_experiment.n_steps = 1', "EvalConfig.mode = 'streaming'"])
  assert not (tmp_path / 'model.pkl.gz').exists()


def test_eval_window_longer_than_max_len_fails(tmp_path, corpus_dir):
  with pytest.raises(config.ConfigError,
                     match='EvalConfig.window = 128 is longer than'):
    _run_with_files(tmp_path, corpus_dir, [], [
        'run_experiment.n_steps = 1', "EvalConfig.mode = 'sliding'",
        'EvalConfig.window = 128', 'EvalConfig.stride = 64'])


def test_streaming_past_max_len_fails_before_training(tmp_path, corpus_dir):
  with pytest.raises(config.ConfigError, match='max_len = 64'):
    _run_with_files(tmp_path, corpus_dir, [], [
        'run_experiment.n_steps = 1', "EvalConfig.mode = 'streaming'"])
  assert not (tmp_path / 'model.pkl.gz').exists()
