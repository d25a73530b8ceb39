"""Tests of the one-device trainer patches: one compilation per function."""

import functools
import inspect

import jax
import numpy as np
from trax import layers as tl
from trax import optimizers
from trax import shapes
from trax.optimizers import trainer as trainer_lib

from favor_trax.training import trax_compat


def _trainer():
  model = tl.Serial(tl.Embedding(16, 8), tl.Dense(16), tl.LogSoftmax(),
                    tl.WeightedCategoryCrossEntropy())
  model.init(shapes.signature(_batch()))
  optimizer = optimizers.Adam(0.01)
  optimizer.tree_init(model.weights)
  return optimizers.Trainer(model, optimizer, n_devices=1)


def _batch():
  tokens = np.arange(8, dtype=np.int32).reshape(2, 4)
  return tokens, tokens, np.ones((2, 4), np.float32)


def _clear_jit_caches():
  # A jitted function counts its compilations in JAX's process-wide fast-path
  # cache, which has room for 8,192 functions. Once earlier code has filled it
  # with live functions, new ones get no entries and `_cache_size()` stays 0.
  jax.clear_caches()


def _compilations_after_three_steps(one_step):
  _clear_jit_caches()
  trainer = _trainer()
  for step in range(3):
    one_step(trainer, _batch(), jax.random.PRNGKey(step), step=step)
  return trainer._accelerated_update_fn._cache_size()  # pylint: disable=protected-access


def test_unpatched_trainer_compiles_step_twice():
  # Documents the breakage: the first step's uncommitted weights come back
  # committed, so the second step compiles again. If a Trax or JAX upgrade
  # makes this 1, the patch can go.
  current = optimizers.Trainer.one_step
  unpatched = getattr(current, '__wrapped__', current)

  assert _compilations_after_three_steps(unpatched) == 2


def test_patched_trainer_compiles_step_once():
  trax_compat.patch_trainer_placement()

  assert _compilations_after_three_steps(optimizers.Trainer.one_step) == 1


def _reversible_trainer():
  model = tl.Serial(
      tl.Embedding(16, 8), tl.Dup(),
      tl.ReversibleSerial(tl.ReversibleHalfResidual(tl.Dense(8)),
                          tl.ReversibleSwap()),
      tl.Concatenate(), tl.Dense(16), tl.LogSoftmax())
  blocks, loss_layer = trainer_lib.extract_reversible_blocks(
      [model, tl.WeightedCategoryCrossEntropy()])
  trainer_lib.init_reversible_blocks(blocks, loss_layer,
                                     shapes.signature(_batch()),
                                     jax.random.PRNGKey(0))
  return optimizers.ReversibleSerialTrainer(
      blocks, loss_layer, functools.partial(optimizers.Adam, 0.01),
      n_devices=1)


def _reversible_compilations_after_three_steps(one_step):
  """Return (compilations, functions) of the trainer's per-layer functions."""
  _clear_jit_caches()
  trainer = _reversible_trainer()
  for step in range(3):
    one_step(trainer, _batch(), jax.random.PRNGKey(step), step=step)
  functions = trainer._jit_memory.values()  # pylint: disable=protected-access
  return sum(function._cache_size() for function in functions), len(functions)  # pylint: disable=protected-access


def test_unpatched_reversible_trainer_compiles_twice():
  # Documents the breakage behind patch_reversible_trainer_weights.
  unpatched = inspect.unwrap(optimizers.ReversibleSerialTrainer.one_step)

  compilations, functions = _reversible_compilations_after_three_steps(
      unpatched)

  assert compilations == 2 * functions


def test_patched_reversible_trainer_compiles_once():
  trax_compat.patch_reversible_trainer_weights()

  compilations, functions = _reversible_compilations_after_three_steps(
      optimizers.ReversibleSerialTrainer.one_step)

  assert functions > 0
  assert compilations == functions
