"""Tests of the Trax 1.4.1 patches: each fails when its patch is removed."""

import itertools

from jax import numpy as jnp
import numpy as np
import pytest
from trax import fastmath
from trax import layers as tl
from trax import optimizers
from trax.supervised import training

from favor_trax.training import trax_compat


def _batches():
  rng = np.random.default_rng(0)
  while True:
    tokens = rng.integers(2, 16, size=(2, 8)).astype(np.int32)
    yield tokens, tokens, np.ones_like(tokens, dtype=np.float32)


def _make_loop(output_dir):
  model = tl.Serial(tl.ShiftRight(), tl.Embedding(16, 8), tl.Dense(16),
                    tl.LogSoftmax())
  task = training.TrainTask(
      labeled_data=_batches(),
      loss_layer=tl.WeightedCategoryCrossEntropy(),
      optimizer=optimizers.Adam(0.01),
      n_steps_per_checkpoint=2)
  return training.Loop(model, [task], output_dir=str(output_dir),
                       random_seed=0)


def test_unpatched_tree_unflatten_fails_on_arrays():
  # Documents the breakage the patch exists for; if a Trax or JAX upgrade
  # makes this pass, the patch can go.
  current = trax_compat.trax_numpy.tree_unflatten
  unpatched = getattr(current, '__wrapped__', current)
  with pytest.raises(TypeError):
    unpatched([jnp.zeros(2)], jnp.ones(2), copy_from_tree=[None, ()])


def test_patched_tree_unflatten_keeps_markers():
  trax_compat.patch_tree_unflatten()
  flat = [jnp.full(2, 7.0)]
  tree = ((), jnp.zeros(2), None)
  rebuilt, rest = fastmath.tree_unflatten(flat, tree,
                                          copy_from_tree=[None, ()])
  assert rebuilt[0] == ()
  np.testing.assert_array_equal(rebuilt[1], flat[0])
  assert rebuilt[2] is None
  assert not rest


def test_loop_restores_optimizer_slots(tmp_path):
  trax_compat.apply_all()
  loop = _make_loop(tmp_path)
  loop.run(2)
  saved_weights = [np.asarray(w) for w in
                   fastmath.tree_leaves(loop.model.weights)]
  saved_slots = [np.asarray(s) for s in
                 fastmath.tree_leaves(loop._trainer_per_task[0].slots)]  # pylint: disable=protected-access

  restored = _make_loop(tmp_path)

  assert restored.step == 2
  restored_weights = fastmath.tree_leaves(restored.model.weights)
  restored_slots = fastmath.tree_leaves(
      restored._trainer_per_task[0].slots)  # pylint: disable=protected-access
  assert len(restored_weights) == len(saved_weights)
  assert len(restored_slots) == len(saved_slots)
  for saved, loaded in itertools.chain(zip(saved_weights, restored_weights),
                                       zip(saved_slots, restored_slots)):
    np.testing.assert_array_equal(saved, np.asarray(loaded))
