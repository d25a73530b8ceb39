"""Trax's memory-efficient trainer on PerformerLM against the standard trainer."""

import functools

import jax
from jax import numpy as jnp
import numpy as np
from trax import layers as tl
from trax import optimizers
from trax import shapes
from trax.optimizers import trainer as trainer_lib

from favor_trax.layers import favor
from favor_trax.models import performer_lm
from favor_trax.training import loop as loop_lib

VOCAB = 20
BATCH = 2
LENGTH = 12
# FavorAttention redraws its projection at train calls whose step count is a
# positive multiple of redraw_every. With redraw_every 1 and the step count
# set to START_STEP, the training step itself redraws.
START_STEP = 3


def _model_fn(dropout, mode='train'):
  attention = functools.partial(favor.FavorAttention, n_random_features=8,
                                redraw_every=1)
  return performer_lm.PerformerLM(
      vocab_size=VOCAB, d_model=16, d_ff=32, n_layers=1, n_heads=2,
      max_len=LENGTH, dropout=dropout, ff_chunk_size=5,
      attention_layer=attention, mode=mode)


def _batch(seed=0):
  tokens = np.random.default_rng(seed).integers(
      2, VOCAB, size=(BATCH, LENGTH)).astype(np.int32)
  return tokens, tokens, np.ones((BATCH, LENGTH), np.float32)


def _set_attention_steps(layer, step):
  if isinstance(layer, favor.FavorAttention):
    projection, redraw_key = layer.state[:2]
    layer.state = (projection, redraw_key, jnp.asarray(step, jnp.int32))
  for sublayer in layer.sublayers:
    _set_attention_steps(sublayer, step)


def _initialized_layers(dropout):
  """Return [standard layers, reversible layers..., loss layer], initialized.

  The memory-efficient trainer runs these layers in this order and splits the
  step's rng once per entry. A Serial of them splits its rng the same way, so
  the standard trainer running that Serial draws the same dropout masks.
  """
  blocks, loss_layer = trainer_lib.extract_reversible_blocks(
      [_model_fn(dropout), tl.WeightedCategoryCrossEntropy()])
  trainer_lib.init_reversible_blocks(
      blocks, loss_layer, shapes.signature(_batch()), jax.random.PRNGKey(0))
  (standard_layers, reversible_layers), = blocks
  for layer in reversible_layers:
    _set_attention_steps(layer, START_STEP)
  return blocks, loss_layer


def _leaves(tree):
  return [np.asarray(leaf, np.float64) for leaf in jax.tree_util.tree_leaves(tree)]


def test_memory_efficient_update_matches_standard():
  dropout = 0.3
  rng = jax.random.PRNGKey(5)
  # SGD with learning rate 1 makes the update equal to minus the gradient.
  efficient_blocks, efficient_loss = _initialized_layers(dropout)
  efficient = optimizers.ReversibleSerialTrainer(
      efficient_blocks, efficient_loss,
      functools.partial(optimizers.SGD, 1.0), n_devices=1)
  standard_blocks, standard_loss = _initialized_layers(dropout)
  (standard_layers, reversible_layers), = standard_blocks
  standard_model = tl.Serial(tl.Serial(standard_layers), *reversible_layers,
                             standard_loss)
  optimizer = optimizers.SGD(1.0)
  optimizer.tree_init(standard_model.weights)
  standard = optimizers.Trainer(standard_model, optimizer, n_devices=1)
  initial = _leaves(standard_model.weights)

  efficient_loss_value, _ = efficient.one_step(_batch(), rng, step=0)
  standard_loss_value, _ = standard.one_step(_batch(), rng, step=0)

  np.testing.assert_allclose(efficient_loss_value, standard_loss_value,
                             rtol=1e-6)
  efficient_weights = _leaves([layer.weights
                               for layer in efficient.all_layers])
  standard_weights = _leaves(standard.accelerated_model_with_loss.weights)
  assert len(efficient_weights) == len(initial) == len(standard_weights)
  for index, (start, actual, expected) in enumerate(
      zip(initial, efficient_weights, standard_weights)):
    expected_update = expected - start
    error = np.linalg.norm((actual - start) - expected_update)
    assert np.linalg.norm(expected_update) > 0, f'weight leaf {index}'
    assert error <= 1e-5 * np.linalg.norm(expected_update), (
        f'weight leaf {index}: update differs by {error}')
  efficient_state = _leaves([layer.state for layer in efficient.all_layers])
  standard_state = _leaves(standard.accelerated_model_with_loss.state)
  assert len(efficient_state) == len(standard_state)
  for actual, expected in zip(efficient_state, standard_state):
    np.testing.assert_allclose(actual, expected, rtol=1e-6)


def test_memory_efficient_loop_evaluates_eval_mode_model(tmp_path):
  dropout = 0.5
  batch = _batch(1)

  def repeat(value):
    while True:
      yield value

  loop = loop_lib.make_loop(
      functools.partial(_model_fn, dropout), repeat(_batch()), repeat(batch),
      _batch(), str(tmp_path), total_steps=1, tokens_per_step=BATCH * LENGTH,
      n_eval_batches=1, use_memory_efficient_trainer=True)
  loop.run_evals()
  loop.run_evals()

  eval_model = _model_fn(dropout, mode='eval')
  eval_model.init(shapes.signature(batch[0]))
  eval_model.weights = loop.model.weights
  eval_model.state = loop.model.state
  log_probs = np.asarray(eval_model(batch[0]))
  targets = batch[1]
  expected = -np.take_along_axis(log_probs, targets[..., None], -1).mean()
  values = [value for _, value in
            loop.history.get('eval', 'metrics/cross_entropy')]
  assert len(values) == 2
  for value in values:
    np.testing.assert_allclose(value, expected, rtol=1e-5)
