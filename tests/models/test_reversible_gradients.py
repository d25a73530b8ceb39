"""Gradients of reversible PerformerLM blocks against a plain residual network.

Trax's memory-efficient trainer computes gradients with `reverse_and_grad`:
each layer reconstructs its input from its output and replays its forward
pass. The reference here runs the same branch layers, weights, state and rngs
as ordinary residual streams x1, x2 and differentiates with `jax.vjp`, which
stores every activation. The two agree only if the replay draws the same
dropout masks and uses the same FAVOR projection as the forward pass.
"""

import functools

import jax
from jax import numpy as jnp
import numpy as np
import pytest
from trax import layers as tl
from trax import shapes

from favor_trax.layers import favor
from favor_trax.models import performer_lm

BATCH = 2
LENGTH = 12
D_MODEL = 16
DROPOUT = 0.3
# A FavorAttention in train mode redraws its projection at every call whose
# step count is a positive multiple of redraw_every. With redraw_every 1 and
# the step count set to START_STEP, the forward pass draws projection number
# START_STEP and stores step START_STEP + 1, so a backward pass that read the
# stored state would draw a different projection.
START_STEP = 3


def _set_attention_steps(layer, step):
  if isinstance(layer, favor.FavorAttention):
    projection, redraw_key = layer.state[:2]
    layer.state = (projection, redraw_key, jnp.asarray(step, jnp.int32))
  for sublayer in layer.sublayers:
    _set_attention_steps(sublayer, step)


def _plain_residual(blocks, x1, x2, weights, state, rng):
  """Run `blocks` as ordinary residual streams, with the rngs Trax gives them.

  ReversibleSerial splits its rng into one key per layer, and a
  ReversibleHalfResidual splits its key again, once per sublayer (its one
  branch), before calling the branch.
  """
  layer_rngs = jax.random.split(rng, len(blocks.sublayers))
  for layer, layer_weights, layer_state, layer_rng in zip(
      blocks.sublayers, weights, state, layer_rngs):
    if isinstance(layer, tl.ReversibleHalfResidual):
      branch = layer.sublayers[0]
      branch_rng = jax.random.split(layer_rng, 1)[0]
      residual, _ = branch.pure_fn(x2, layer_weights[0], layer_state[0],
                                   branch_rng)
      x1 = x1 + residual
    else:
      assert layer.name == 'ReversibleSwap', layer.name
      x1, x2 = x2, x1
  return x1, x2


class Gradients:
  """One decoder block of PerformerLM, differentiated both ways in one jit."""

  def __init__(self):
    attention = functools.partial(favor.FavorAttention, n_random_features=8,
                                  redraw_every=1)
    self.blocks = tl.ReversibleSerial(performer_lm.DecoderBlock(
        D_MODEL, 32, n_heads=2, dropout=DROPOUT, ff_activation=tl.FastGelu,
        ff_chunk_size=5, attention_layer=attention, mode='train'))
    signature = shapes.ShapeDtype((BATCH, LENGTH, D_MODEL), np.float32)
    self.blocks.init((signature, signature), rng=jax.random.PRNGKey(0))
    _set_attention_steps(self.blocks, START_STEP)

    keys = jax.random.split(jax.random.PRNGKey(7), 4)
    self.x1, self.x2, self.ct1, self.ct2 = [
        jax.random.normal(key, (BATCH, LENGTH, D_MODEL)) for key in keys]
    self._run = jax.jit(self._both_ways)

  def _both_ways(self, weights, state, backward_state, reversible_rng,
                 plain_rng):
    blocks = self.blocks
    outputs, new_state = blocks.pure_fn((self.x1, self.x2), weights, state,
                                        reversible_rng)
    reconstructed, (input_grads, weight_grads) = blocks.reverse_and_grad(
        outputs, (self.ct1, self.ct2), weights, backward_state, new_state,
        rng=reversible_rng)

    forward = functools.partial(_plain_residual, blocks, state=state,
                                rng=plain_rng)
    plain_outputs, vjp = jax.vjp(forward, self.x1, self.x2, weights)
    plain_dx1, plain_dx2, plain_weight_grads = vjp((self.ct1, self.ct2))
    return {
        'outputs': outputs,
        'new_state': new_state,
        'reconstructed': reconstructed,
        'input_grads': input_grads,
        'weight_grads': weight_grads,
        'plain_outputs': plain_outputs,
        'plain_input_grads': (plain_dx1, plain_dx2),
        'plain_weight_grads': plain_weight_grads,
    }

  def run(self, backward_state=None, reversible_seed=42, plain_seed=42):
    """Return both ways' results; the backward pass starts from backward_state."""
    state = self.blocks.state
    if backward_state is None:
      backward_state = state
    return self._run(self.blocks.weights, state, backward_state,
                     jax.random.PRNGKey(reversible_seed),
                     jax.random.PRNGKey(plain_seed))


@pytest.fixture(scope='module')
def gradients():
  return Gradients()


def _relative_error(actual, expected):
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  return np.linalg.norm(actual - expected) / max(np.linalg.norm(expected),
                                                 1e-30)


def _weight_grad_errors(results):
  actual = jax.tree_util.tree_leaves(results['weight_grads'])
  expected = jax.tree_util.tree_leaves(results['plain_weight_grads'])
  assert len(actual) == len(expected)
  return [_relative_error(a, e) for a, e in zip(actual, expected)]


def test_reversible_gradients_match_plain_residual(gradients):
  results = gradients.run()

  for actual, expected in zip(results['outputs'], results['plain_outputs']):
    assert _relative_error(actual, expected) < 1e-6
  for actual, expected in zip(results['reconstructed'],
                              (gradients.x1, gradients.x2)):
    assert _relative_error(actual, expected) < 1e-5
  for actual, expected in zip(results['input_grads'],
                              results['plain_input_grads']):
    assert _relative_error(actual, expected) < 1e-5
  errors = _weight_grad_errors(results)
  assert len(errors) > 10
  for index, error in enumerate(errors):
    assert error < 1e-5, f'weight leaf {index}: relative error {error}'


def test_other_dropout_masks_change_gradients(gradients):
  # Control for the test above: another rng draws other dropout masks, and
  # the gradients differ far beyond its tolerance.
  results = gradients.run(plain_seed=43)

  assert max(_weight_grad_errors(results)) > 1e-2


def test_replay_from_stored_state_changes_gradients(gradients):
  # Control: replaying from the state that the forward pass stored would draw
  # the next projection, and the gradients would differ.
  stored_state = gradients.run()['new_state']

  results = gradients.run(backward_state=stored_state)

  assert max(_weight_grad_errors(results)) > 1e-2


def test_forward_advances_attention_step_once(gradients):
  new_state = gradients.run()['new_state']

  steps = [int(leaf) for leaf in jax.tree_util.tree_leaves(new_state)
           if jnp.ndim(leaf) == 0 and jnp.issubdtype(leaf.dtype, jnp.integer)]
  assert steps == [START_STEP + 1]
