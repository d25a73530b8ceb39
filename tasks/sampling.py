"""The sample mode of run.py: draw from the checkpoint of a run.

`sample_from_checkpoint` loads the trained weights and state of output_dir,
builds the predict-mode model (`favor_trax.decoding`) and hands a generate
function to the task. A text corpus continues a prompt and prints the result.
A corpus with a `write_samples` method (images) writes its own files.
"""

import dataclasses
import gzip
import inspect
import json
import os
import pickle
import time
from typing import Optional

from absl import logging
import gin
from jax import numpy as jnp
import numpy as np
from trax import shapes

from favor_trax import decoding
from favor_trax.training import config

SAMPLES_FILE = 'samples.json'


@dataclasses.dataclass
class SampleOptions:
  """Options of run.py --mode sample.

  Attributes:
    prompt: Text the samples continue (text tasks only).
    n_samples: Number of samples drawn together.
    n_new_tokens: Tokens drawn per sample; None means up to the model's
      max_len for text, and a whole image for images.
    temperature: Softmax temperature; 0 decodes greedily.
    top_k: Draw among the k most likely tokens only; 0 keeps all.
    seed: Seed of the draws.
  """
  prompt: str = ''
  n_samples: int = 1
  n_new_tokens: Optional[int] = None
  temperature: float = 1.0
  top_k: int = 0
  seed: int = 0


def model_max_len(model_fn):
  """Return the max_len the model was configured with, or None."""
  name = getattr(getattr(model_fn, 'func', model_fn), '__name__', None)
  try:
    return gin.query_parameter(f'{name}.max_len')
  except (ValueError, AttributeError, TypeError):
    pass
  try:
    parameter = inspect.signature(model_fn).parameters.get('max_len')
  except (TypeError, ValueError):
    return None
  if parameter is None or parameter.default is inspect.Parameter.empty:
    return None
  return parameter.default


def load_trained_model(model_fn, checkpoint, sequence_length):
  """Return an eval-mode model with the weights and state of checkpoint."""
  signature = shapes.ShapeDtype((1, sequence_length), jnp.int32)
  model = model_fn(mode='eval')
  # init_from_file reads the weight shapes from an initialized model.
  model.init(signature)
  model.init_from_file(checkpoint, weights_only=False,
                       input_signature=signature)
  return model


def _sample_text(corpus, sampler, options, max_len):
  """Continue options.prompt n_samples times; return the texts."""
  vocabulary = corpus.vocabulary
  prompt_ids = np.asarray(vocabulary.encode(options.prompt), np.int32)
  n_new_tokens = options.n_new_tokens
  if max_len and len(prompt_ids) >= max_len:
    raise config.ConfigError(
        f'--prompt is {len(prompt_ids)} tokens long, but the model covers '
        f'max_len = {max_len} positions, so no token fits after it. Shorten '
        'the prompt.')
  if n_new_tokens is None:
    n_new_tokens = max_len - len(prompt_ids) if max_len else 256
  try:
    sampler.check_length(len(prompt_ids), n_new_tokens)
  except ValueError as error:
    raise config.ConfigError(
        f'--prompt ({len(prompt_ids)} tokens) and --sample_length '
        f'({n_new_tokens} tokens) do not fit: {error}') from error

  prompt = np.tile(prompt_ids[None], (options.n_samples, 1))
  start = time.time()
  new_ids = sampler.sample(prompt, n_new_tokens,
                           temperature=options.temperature,
                           top_k=options.top_k, seed=options.seed)
  elapsed = time.time() - start
  logging.info('Drew %d x %d tokens in %.1f s (%.1f tokens/s after the '
               'first, which includes compilation).', options.n_samples,
               n_new_tokens, elapsed,
               options.n_samples * (n_new_tokens - 1) /
               max(sum(sampler.token_seconds[1:]), 1e-9))

  texts = []
  for row in new_ids:
    row = list(row)
    if vocabulary.eos_id in row:
      row = row[:row.index(vocabulary.eos_id)]
    texts.append(vocabulary.decode(np.asarray(row, np.int32)))
  return texts, n_new_tokens


def sample_from_checkpoint(output_dir, corpus, model_fn, sequence_length,
                           options):
  """Draw samples from the checkpoint in output_dir.

  Args:
    output_dir: Output directory of a training run.
    corpus: The run's corpus; its vocabulary encodes the prompt.
    model_fn: Factory of the run's model, taking `mode`.
    sequence_length: Window length of the run.
    options: A `SampleOptions`.

  Returns:
    A dict of what was drawn, also written to output_dir/samples.json.

  Raises:
    ConfigError: the options are invalid for this model.
    FileNotFoundError: output_dir has no checkpoint.
  """
  checkpoint = os.path.join(output_dir, 'model.pkl.gz')
  if not os.path.exists(checkpoint):
    raise FileNotFoundError(
        f'No checkpoint at {checkpoint}. Train first with --mode train and '
        'the same --output_dir.')
  if options.n_samples < 1:
    raise config.ConfigError(
        f'--n_samples must be at least 1, got {options.n_samples}.')
  if options.temperature < 0:
    raise config.ConfigError(
        f'--temperature must be >= 0, got {options.temperature}.')
  vocab_size = corpus.vocabulary.vocab_size
  if not 0 <= options.top_k <= vocab_size:
    raise config.ConfigError(
        f'--top_k must be in [0, {vocab_size}] (0 keeps every token), got '
        f'{options.top_k}.')

  trained = load_trained_model(model_fn, checkpoint, sequence_length)
  model = decoding.predict_model(model_fn, trained.weights, trained.state,
                                 batch_size=options.n_samples)
  max_len = model_max_len(model_fn)
  sampler = decoding.Sampler(model, vocab_size, max_len=max_len)
  step = int(trained_step(checkpoint))
  logging.info('Sampling from the checkpoint of step %d in %s.', step,
               output_dir)

  results = {'step': step, 'temperature': options.temperature,
             'top_k': options.top_k, 'seed': options.seed}
  if hasattr(corpus, 'write_samples'):
    generate = sampler.generate_fn(options.temperature, options.top_k,
                                   options.seed)
    paths = corpus.write_samples(generate, output_dir, options.n_samples,
                                 options.seed)
    results['files'] = [str(path) for path in paths]
    for path in paths:
      print(f'Wrote {path}')
  else:
    texts, n_new_tokens = _sample_text(corpus, sampler, options, max_len)
    results.update(prompt=options.prompt, n_new_tokens=n_new_tokens,
                   samples=texts)
    for index, text in enumerate(texts):
      print(f'--- sample {index} ---\n{options.prompt}{text}')

  path = os.path.join(output_dir, SAMPLES_FILE)
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    json.dump(results, f, indent=2)
  os.replace(path + '.tmp', path)
  return results


def trained_step(checkpoint):
  """Return the training step stored in a Trax checkpoint pickle."""
  with gzip.open(checkpoint, 'rb') as f:
    return pickle.load(f)['step']
