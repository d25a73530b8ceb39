"""The language-model job behind run.py: data, model, training, evaluation.

`run_experiment` reads every choice from gin: the corpus, the model, the
batch shape, the step count and the splits to score. It trains with
`favor_trax.training.loop` (resuming from output_dir), then scores every token
of each evaluation split once and writes output_dir/eval_results.json.
"""

import functools
import inspect
import itertools
import json
import os
import time

from absl import logging
import gin
import jax
import numpy as np
from trax import layers as tl
from trax import shapes

from favor_trax import decoding
from favor_trax.models import performer_lm
from favor_trax.training import config
from favor_trax.training import distributed
from favor_trax.training import loop as loop_lib
from favor_trax.training import named_weights
from tasks import evaluation
from tasks import metrics
from tasks import pg19
from tasks import sampling
from tasks import windows

RESULTS_FILE = 'eval_results.json'


def _resumable_batches(make_stream, start):
  """Yield make_stream()'s batches from batch start['step'] on.

  The stream is deterministic for its seed, so skipping the batches of the
  steps taken before a restart continues the data order of the interrupted
  run. `start` is read at the first batch, after the checkpoint is restored.
  """
  start_step = start['step']
  if start_step:
    logging.info('Skipping the %d training batches used before step %d.',
                 start_step, start_step)
  yield from itertools.islice(make_stream(), start_step, None)


def _check_length_fits_model(model_fn, sequence_length,
                             name='run_experiment.sequence_length'):
  """Raise ConfigError when the windows are longer than the model's max_len.

  `name` is the binding that set sequence_length, for the message.
  """
  try:
    max_len = gin.query_parameter(f'{model_fn.__name__}.max_len')
  except (ValueError, AttributeError):
    parameter = inspect.signature(model_fn).parameters.get('max_len')
    if parameter is None or parameter.default is inspect.Parameter.empty:
      return
    max_len = parameter.default
  if sequence_length > max_len:
    raise config.ConfigError(
        f'{name} = {sequence_length} is longer than '
        f'the model\'s max_len = {max_len}, which its positional encoding '
        f'covers. Bind {model_fn.__name__}.max_len to at least '
        f'{sequence_length}, or shorten the windows.')


def _check_streaming(model_fn, corpus, eval_splits, window):
  """Raise ConfigError, before training, when streaming evaluation would fail.

  The model's attention must stream, and its positional encoding must cover
  the longest book of every evaluation split.
  """
  if not hasattr(corpus, 'book_token_counts'):
    raise config.ConfigError(
        f"EvalConfig.mode = 'streaming' streams books, but "
        f'{type(corpus).__name__} has none. Use the default mode for this '
        'corpus.')
  evaluation.check_streamable(model_fn(mode='eval'))
  predict_model = model_fn(mode='predict')
  for split in eval_splits:
    evaluation.check_books_fit(predict_model, corpus.book_token_counts(split),
                               window)


def _shape_batches(corpus, mode, batch_size, sequence_length, seed):
  """Return batches of the training shape for building the training loop.

  In eval mode the loop only restores the checkpoint, so its one batch is
  padding and no training data is read.
  """
  if mode == 'eval':
    padding = windows.make_window(np.zeros(0, np.int32), 0, sequence_length,
                                  corpus.vocabulary.pad_id)
    return iter([windows.stack_windows([padding] * batch_size)])
  return corpus.train_stream(batch_size, sequence_length, seed)


def _host_batches_fn(batch_size, eval_batch_size):
  """Return a function that cuts this host's rows from a stream of batches.

  With one process it returns the stream unchanged.

  Raises:
    ConfigError: the batch sizes do not split over the hosts' devices, or a
      host of several has one device.
  """
  process_count = jax.process_count()
  if process_count == 1:
    return lambda batches: batches
  if jax.local_device_count() == 1:
    # Trax's trainers pmap, and so sum gradients across hosts, only with more
    # than one local device.
    raise config.ConfigError(
        f'Training on {process_count} hosts needs at least 2 devices per '
        'host: with one local device, Trax trains each host on its own '
        'rows without exchanging gradients.')
  for name, size in (('batch_size', batch_size),
                     ('eval_batch_size', eval_batch_size)):
    try:
      distributed.check_batch_size(size, process_count,
                                   jax.local_device_count())
    except ValueError as error:
      raise config.ConfigError(f'run_experiment.{name}: {error}') from error
  process_index = jax.process_index()
  logging.info('Host %d of %d trains on rows %d to %d of each batch.',
               process_index, process_count,
               process_index * batch_size // process_count,
               (process_index + 1) * batch_size // process_count - 1)
  return functools.partial(distributed.host_batches,
                           process_index=process_index,
                           process_count=process_count)


def _write_operative_config(output_dir):
  """Write the gin bindings this run used to output_dir/config.gin."""
  path = os.path.join(output_dir, 'config.gin')
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    f.write(gin.operative_config_str())
  os.replace(path + '.tmp', path)


# The sample corpus lives in a new temporary directory per run, so results
# name it by this fixed description rather than by its path.
SAMPLE_CORPUS_SOURCE = 'bundled sample corpus (Python reference text)'


def _warn_on_other_data_source(output_dir, data_source):
  """Warn when earlier results in output_dir came from another corpus."""
  path = os.path.join(output_dir, RESULTS_FILE)
  if not os.path.exists(path):
    return
  try:
    with open(path, encoding='utf-8') as f:
      previous = json.load(f).get('data_source')
  except (OSError, ValueError) as error:
    logging.warning('Could not read earlier results %s: %s', path, error)
    return
  if previous and previous != data_source:
    logging.warning(
        'The earlier results in %s came from %s; this run reads %s and '
        'replaces them. Pass the same --data_dir to score the same data.',
        path, previous, data_source)


def _transfer_weights(loop, init_checkpoint):
  """Load named weights from init_checkpoint into the loop's model.

  Args:
    loop: A Loop at step 0.
    init_checkpoint: An output_dir of an earlier run, or its
      model.named_weights.npz file.

  Returns:
    {'path', 'n_loaded', 'not_loaded'} describing the transfer.

  Raises:
    ConfigError: the token embeddings differ in vocabulary size or d_model.
  """
  path = init_checkpoint
  if os.path.isdir(path):
    path = os.path.join(path, 'model' + named_weights.NAMED_WEIGHTS_SUFFIX)
  stored = named_weights.read(path)
  model_weights = named_weights.named_weights(loop.model)
  for prefix in named_weights.layer_paths(loop.model, tl.Embedding):
    name = prefix + 'w0'
    expected = tuple(model_weights[name].shape)
    found = tuple(stored[name].shape) if name in stored else None
    if found != expected:
      raise config.ConfigError(
          f'--init_checkpoint {path} has token embeddings of shape {found} '
          f'(vocab_size, d_model), but this model has {expected}. Weight '
          'transfer needs the same vocabulary and d_model.')

  loaded, not_loaded = named_weights.load_into(loop.model, stored)
  loop.update_weights_and_state(weights=loop.model.weights)
  logging.info('Loaded %d of %d weight arrays from %s.', len(loaded),
               len(model_weights), path)
  for name in not_loaded:
    logging.warning('Weight %s was not loaded from %s (missing there or of '
                    'another shape); it keeps its initial value.', name, path)
  return {'path': path, 'n_loaded': len(loaded), 'not_loaded': not_loaded}


def check_checkpoint_fits(model, output_dir, sequence_length):
  """Raise ConfigError unless the checkpoint in output_dir fits model.

  Trax restores a checkpoint as a flat list of arrays, so a model built from
  other config files would silently receive arrays meant for other layers.
  The named weights saved beside the checkpoint tell whether every layer
  path and shape agrees. Checkpoints without that file are not checked.

  Args:
    model: An uninitialized model of the run, in any mode.
    output_dir: The run's output directory.
    sequence_length: Tokens per window, for the model's input signature.
  """
  path = os.path.join(output_dir, 'model' + named_weights.NAMED_WEIGHTS_SUFFIX)
  if not os.path.exists(path):
    return
  model.init(shapes.ShapeDtype((1, sequence_length), 'int32'))
  lines = named_weights.differences(model, named_weights.read(path))
  if not lines:
    return
  first_lines = '; '.join(lines[:3])
  more = f' (and {len(lines) - 3} more)' if len(lines) > 3 else ''
  raise config.ConfigError(
      f'The checkpoint in {output_dir} was trained with another model: '
      f'{len(lines)} weight arrays differ in name or shape, {first_lines}{more}. '
      'Pass the config files and bindings of the training run (its '
      f'operative config is {os.path.join(output_dir, "config.gin")}), or '
      'another --output_dir.')


def format_results(results):
  """Return one human-readable line of a split's scores."""
  if 'summary' in results:
    return results['summary']
  return (f"{results['split']} @ step {results['step']}: "
          f"loss {results['nll_per_token']:.4f} nats/token, "
          f"token perplexity {results['token_perplexity']:.3f}, "
          f"bits/byte {results['bits_per_byte']:.4f}, "
          f"word perplexity {results['word_perplexity']:.6g} "
          f"({results['num_words']} words, {results['num_tokens']} tokens)")


def _score_split(corpus, model, weights, state, split, batch_size, window,
                 stride, eval_config, model_fn):
  """Return (nll, n_tokens, n_correct) of a split in eval_config's mode."""
  if eval_config.mode == 'streaming':
    book_lengths = corpus.book_token_counts(split)
    # A split of fewer books than batch_size needs no rows of padding.
    batch_size = min(batch_size, len(book_lengths))
    predict_model = decoding.predict_model(model_fn, weights, state,
                                           batch_size)
    evaluation.check_books_fit(predict_model, book_lengths, window)
    n_groups = -(-len(book_lengths) // batch_size)
    logging.info('Streaming %d groups of up to %d books.', n_groups,
                 batch_size)
    books = [tokens for _, tokens in corpus.tokenized_books(split)]
    return evaluation.score_books_streaming(predict_model, books, batch_size,
                                            window)

  n_batches = corpus.eval_batch_count(split, batch_size, window, stride)
  logging.info('Scoring %d batches of %d windows.', n_batches, batch_size)
  return evaluation.score_tokens(
      model, weights, state,
      corpus.eval_stream(split, batch_size, window, stride))


def _evaluate_image_split(corpus, model, weights, state, split, batch_size,
                          length, step):
  """Score one row of `length` tokens per image and let the corpus label them.

  Used for corpora with `split_results`, such as
  `tasks.imagenet64.Imagenet64Corpus`, in place of the text statistics.
  """
  n_batches = corpus.eval_batch_count(split, batch_size, length)
  logging.info('Evaluating %s: %d images in %d batches of %d rows of %d '
               'tokens.', split, corpus.num_images(split), n_batches,
               batch_size, length)
  start = time.time()
  nll, n_tokens, n_correct = evaluation.score_tokens(
      model, weights, state, corpus.eval_stream(split, batch_size, length))
  results = {'split': split, 'step': int(step)}
  results.update(corpus.split_results(split, nll, n_tokens, n_correct))
  results['eval_window'] = length
  results['seconds'] = time.time() - start
  results['summary'] = corpus.format_results(results)
  logging.info('%s', results['summary'])
  return results


def evaluate_split(corpus, model, weights, state, split, batch_size, length,
                   step, eval_config=None, model_fn=None):
  """Score every token of `split` once and return the labelled results.

  Args:
    corpus: the corpus (see `tasks.pg19.Pg19Corpus`).
    model: the eval-mode model.
    weights: trained weights.
    state: trained state.
    split: the split to score.
    batch_size: windows per batch, or books per group in streaming mode.
    length: training sequence length, the default evaluation window.
    step: training step of the weights.
    eval_config: `evaluation.EvalConfig`; None scores non-overlapping windows
      of `length` tokens.
    model_fn: model factory taking `mode`; streaming mode builds its
      predict-mode model with it.
  """
  if hasattr(corpus, 'split_results'):
    # NOTE: EvalConfig's windows apply to books, so image corpora ignore it.
    return _evaluate_image_split(corpus, model, weights, state, split,
                                 batch_size, length, step)
  eval_config = eval_config or evaluation.EvalConfig()
  window, stride = eval_config.window_and_stride(length)
  statistics = corpus.split_statistics(split)
  context = eval_config.describe(window, stride)
  logging.info('Evaluating %s: %d books, %d words, %d tokens; %s.', split,
               statistics.num_books, statistics.num_words,
               statistics.num_tokens, context)
  start = time.time()
  nll, n_tokens, n_correct = _score_split(
      corpus, model, weights, state, split, batch_size, window, stride,
      eval_config, model_fn)
  if int(n_tokens) != statistics.num_tokens:
    raise RuntimeError(
        f'Evaluation of {split} scored {int(n_tokens)} tokens but the split '
        f'has {statistics.num_tokens}; the evaluation stream is inconsistent.')

  results = {
      'split': split,
      'step': int(step),
      'num_books': statistics.num_books,
      'num_tokens': statistics.num_tokens,
      'num_bytes': statistics.num_bytes,
      'num_words': statistics.num_words,
      'total_nll_nats': nll,
      'accuracy': n_correct / n_tokens,
      'mode': eval_config.mode,
      'window': window,
      'stride': stride,
      'context': context,
      'aggregation': ('corpus-level: each score divides the total NLL of the '
                      'split, end-of-book tokens included, by its total '
                      'count of tokens, bytes or whitespace-separated words'),
      'seconds': time.time() - start,
  }
  results.update(metrics.language_model_scores(
      nll, statistics.num_tokens, statistics.num_bytes, statistics.num_words))
  logging.info('%s (%s evaluation in %.1f s)', format_results(results),
               eval_config.mode, results['seconds'])
  return results


@gin.configurable(module='favor_trax', denylist=[
    'output_dir', 'mode', 'data_dir', 'init_checkpoint', 'sample_options'])
def run_experiment(output_dir,
                   mode='train',
                   data_dir=None,
                   init_checkpoint=None,
                   sample_options=None,
                   corpus_fn=pg19.Pg19Corpus,
                   model_fn=performer_lm.PerformerLM,
                   batch_size=8,
                   sequence_length=512,
                   n_steps=1000,
                   eval_splits=('validation',),
                   eval_batch_size=None,
                   seed=0):
  """Train (mode 'train') and evaluate a language model; return the results.

  Args:
    output_dir: Directory for checkpoints and eval_results.json.
    mode: 'train' trains up to n_steps (resuming from a checkpoint in
      output_dir), then evaluates; 'eval' evaluates the checkpoint; 'sample'
      draws from the checkpoint (see `tasks.sampling`).
    data_dir: Local dataset directory; when given, passed to corpus_fn.
    init_checkpoint: Output directory of another run. Its weights start this
      run wherever names and shapes agree. It is ignored when output_dir
      already has a checkpoint to resume from.
    sample_options: `tasks.sampling.SampleOptions` of mode 'sample'.
    corpus_fn: Factory of the corpus (see `tasks.pg19.Pg19Corpus`).
    model_fn: Factory of the model, called with vocab_size and mode.
    batch_size: Windows per training batch.
    sequence_length: Tokens per training window, and per evaluation window
      unless `evaluation.EvalConfig.window` is bound.
    n_steps: Training steps in total, counting those of earlier runs.
    eval_splits: Splits scored token by token at the end.
    eval_batch_size: Windows per evaluation batch; defaults to batch_size.
    seed: Seed of the data order, the weights and dropout.

  Returns:
    The dict written to output_dir/eval_results.json, or in mode 'sample'
    the one written to output_dir/samples.json.
  """
  if mode not in ('train', 'eval', 'sample'):
    raise ValueError(
        f"mode must be 'train', 'eval' or 'sample', got {mode!r}.")
  if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
    raise config.ConfigError(
        f'run_experiment.n_steps must be an integer >= 0, got {n_steps!r}.')
  _check_length_fits_model(model_fn, sequence_length)
  eval_config = evaluation.EvalConfig()
  eval_window, _ = eval_config.window_and_stride(sequence_length)
  if eval_config.mode != 'streaming':
    _check_length_fits_model(model_fn, eval_window, 'EvalConfig.window')
  corpus = corpus_fn(data_dir=data_dir) if data_dir else corpus_fn()
  if hasattr(corpus, 'prepare_vocabulary'):
    corpus.prepare_vocabulary(output_dir)
  model_fn = functools.partial(model_fn,
                               vocab_size=corpus.vocabulary.vocab_size)
  try:
    model_fn(mode='eval')
  except ValueError as error:
    raise config.ConfigError(
        f'The model cannot be built from the gin bindings: {error}') from error
  if eval_config.mode == 'streaming' and hasattr(corpus, 'book_token_counts'):
    _check_streaming(model_fn, corpus, eval_splits, eval_window)
  eval_batch_size = eval_batch_size or batch_size

  checkpoint = os.path.join(output_dir, 'model.pkl.gz')
  if mode == 'eval' and not os.path.exists(checkpoint):
    raise FileNotFoundError(
        f'No checkpoint at {checkpoint}. Train first with --mode train and '
        'the same --output_dir.')
  if os.path.exists(checkpoint):
    check_checkpoint_fits(model_fn(mode='eval'), output_dir, sequence_length)
  if mode == 'sample':
    return sampling.sample_from_checkpoint(
        output_dir, corpus, model_fn, sequence_length,
        sample_options or sampling.SampleOptions(seed=seed))

  start = {'step': 0}
  host_batches = _host_batches_fn(batch_size, eval_batch_size)
  train_batches = host_batches(_resumable_batches(
      lambda: corpus.train_stream(batch_size, sequence_length, seed), start))
  periodic_eval_batches = itertools.cycle(host_batches(
      itertools.islice(corpus.eval_stream(eval_splits[0], eval_batch_size,
                                          sequence_length), 16)))
  sample_batch = next(host_batches(_shape_batches(
      corpus, mode, batch_size, sequence_length, seed)))
  loop = loop_lib.make_loop(
      model_fn, train_batches, periodic_eval_batches, sample_batch, output_dir,
      total_steps=n_steps, tokens_per_step=batch_size * sequence_length,
      random_seed=seed)
  start['step'] = loop.step
  transfer = None
  if loop.step:
    logging.info('Restored the checkpoint of step %d from %s.', loop.step,
                 output_dir)
    if init_checkpoint:
      logging.info('Ignoring --init_checkpoint %s: resuming from %s.',
                   init_checkpoint, output_dir)
  elif init_checkpoint:
    transfer = _transfer_weights(loop, init_checkpoint)

  if mode == 'train' and loop.step < n_steps:
    logging.info('Training from step %d to step %d.', loop.step, n_steps)
    loop.run(n_steps - loop.step)
    loop.save_checkpoint('model')

  # Every host evaluates; only the first writes files to output_dir.
  is_chief = jax.process_index() == 0
  if is_chief:
    _write_operative_config(output_dir)
  eval_model = model_fn(mode='eval')
  eval_model.init(shapes.ShapeDtype((eval_batch_size, eval_window), 'int32'))
  is_sample_corpus = getattr(corpus, 'is_sample_corpus', False)
  results = {
      'step': int(loop.step),
      'data_source': (SAMPLE_CORPUS_SOURCE if is_sample_corpus
                      else corpus.source.describe()),
      'is_sample_corpus': is_sample_corpus,
      'init_checkpoint': transfer,
      'splits': [
          evaluate_split(corpus, eval_model, loop.model.weights,
                         loop.model.state, split, eval_batch_size,
                         sequence_length, loop.step, eval_config=eval_config,
                         model_fn=model_fn)
          for split in eval_splits
      ],
  }
  if is_sample_corpus:
    logging.warning(
        'These scores are on the bundled sample corpus (Python reference '
        'text), not PG-19, and are not comparable with PG-19 results. Pass '
        '--data_dir with a PG-19 directory to train and evaluate on PG-19.')
  if not is_chief:
    return results
  _warn_on_other_data_source(output_dir, results['data_source'])
  path = os.path.join(output_dir, RESULTS_FILE)
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    json.dump(results, f, indent=2)
  os.replace(path + '.tmp', path)
  return results
