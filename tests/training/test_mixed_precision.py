"""bfloat16 activations with float32 master weights in PerformerLM."""

import functools
import pathlib

import gin
import jax
import numpy as np
import pytest
from trax import shapes

from favor_trax.models import performer_lm
from favor_trax.training import loop as loop_lib
from tasks import pg19

PG19_MINI_DIR = (pathlib.Path(__file__).resolve().parents[2] / '..' / 'shared'
                 / 'data' / 'pg19_mini')
BATCH = 4
LENGTH = 64
N_STEPS = 50


def _model_fn(vocab_size, activation_dtype, mode='train'):
  return performer_lm.PerformerLM(
      vocab_size=vocab_size, d_model=32, d_ff=64, n_layers=1, n_heads=2,
      max_len=LENGTH, dropout=0.0, activation_dtype=activation_dtype,
      mode=mode)


def _corpus(tmp_path):
  """Return the PG-19 sample when present, else the bundled sample corpus."""
  if PG19_MINI_DIR.is_dir():
    return pg19.Pg19Corpus(data_dir=PG19_MINI_DIR)
  return pg19.Pg19Corpus(demo_dir=tmp_path / 'sample_corpus')


def _loss(model, weights, state, batch):
  model.weights = weights
  model.state = state
  log_probs = np.asarray(model(batch[0]), np.float64)
  token_losses = -np.take_along_axis(log_probs, batch[1][..., None], -1)[..., 0]
  return float((token_losses * batch[2]).sum() / batch[2].sum())


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """Train a float32 and a bfloat16 model alike and return their results.

  Returns:
    {dtype: {'weights', 'state', 'loss' on a validation batch, 'eval_model'}}
    and 'eval_batch', that validation batch.
  """
  corpus = _corpus(tmp_path_factory.mktemp('data'))
  vocab_size = corpus.vocabulary.vocab_size
  eval_batch = next(corpus.eval_stream('validation', BATCH, LENGTH))
  results = {}
  for dtype in ('float32', 'bfloat16'):
    model_fn = functools.partial(_model_fn, vocab_size, dtype)
    loop = loop_lib.make_loop(
        model_fn, corpus.train_stream(BATCH, LENGTH, seed=0),
        corpus.eval_stream('validation', BATCH, LENGTH),
        next(corpus.train_stream(BATCH, LENGTH, seed=0)), None,
        total_steps=10 * N_STEPS, tokens_per_step=BATCH * LENGTH,
        learning_rate=3e-3, warmup_steps=10, steps_per_eval=10 * N_STEPS,
        steps_per_checkpoint=10 * N_STEPS)
    loop.run(N_STEPS)
    eval_model = model_fn(mode='eval')
    eval_model.init(shapes.signature(eval_batch[0]))
    results[dtype] = {
        'weights': loop.model.weights,
        'state': loop.model.state,
        'loss': _loss(eval_model, loop.model.weights, loop.model.state,
                      eval_batch),
        'eval_model': eval_model,
    }
  results['eval_batch'] = eval_batch
  return results


def test_bfloat16_loss_within_two_percent(trained):
  float32_loss = trained['float32']['loss']
  bfloat16_loss = trained['bfloat16']['loss']

  assert np.isfinite(bfloat16_loss)
  # Training lowers the loss from about log(vocab_size) = 5.55.
  assert float32_loss < 5.0
  assert abs(bfloat16_loss - float32_loss) <= 0.02 * float32_loss


def test_bfloat16_model_keeps_float32_weights(trained):
  dtypes = {leaf.dtype for leaf in
            jax.tree_util.tree_leaves(trained['bfloat16']['weights'])}

  assert dtypes == {np.dtype('float32')}


def test_bfloat16_changes_outputs_within_bfloat16_rounding(trained):
  # The same weights through both models: bfloat16 branches round their
  # activations to 8 significant bits, so outputs differ by more than
  # float32 rounding and far less than training changes them.
  weights = trained['float32']['weights']
  state = trained['float32']['state']
  tokens = trained['eval_batch'][0]
  outputs = {}
  for dtype in ('float32', 'bfloat16'):
    model = trained[dtype]['eval_model']
    model.weights = weights
    model.state = state
    outputs[dtype] = np.asarray(model(tokens))

  difference = np.abs(outputs['bfloat16'] - outputs['float32']).max()
  assert outputs['bfloat16'].dtype == np.float32
  assert 1e-4 < difference < 0.5


def test_weight_layout_matches_float32_model():
  signature = shapes.ShapeDtype((2, LENGTH), np.int32)
  layouts = {}
  for dtype in ('float32', 'bfloat16'):
    model = _model_fn(40, dtype)
    weights, _ = model.init(signature)
    layouts[dtype] = jax.tree_util.tree_map(lambda leaf: leaf.shape, weights)

  assert layouts['bfloat16'] == layouts['float32']


def test_gin_binding_selects_bfloat16():
  gin.clear_config()
  try:
    gin.parse_config(
        "favor_trax.PerformerLM.activation_dtype = 'bfloat16'")
    model = performer_lm.PerformerLM(vocab_size=40, n_layers=1)
  finally:
    gin.clear_config()

  branches = [layer for layer in _all_layers(model)
              if isinstance(layer, performer_lm.MixedPrecisionSerial)]
  assert len(branches) == 2


def _all_layers(layer):
  yield layer
  for sublayer in layer.sublayers:
    yield from _all_layers(sublayer)


def test_unknown_activation_dtype_fails():
  with pytest.raises(ValueError, match='activation_dtype'):
    performer_lm.PerformerLM(vocab_size=40, activation_dtype='float16')
