"""Tests of the Trax 1.4.1 patches: each fails when its patch is removed."""

import itertools

import jax
from jax import numpy as jnp
import numpy as np
import pytest
from trax import fastmath
from trax import layers as tl
from trax import optimizers
from trax import shapes
from trax.supervised import decoding
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


def test_sampling_leaves_model_usable():
  trax_compat.patch_accelerate_rng()
  model = tl.Serial(tl.ShiftRight(mode='predict'), tl.Embedding(16, 8),
                    tl.Dense(16), tl.LogSoftmax())
  model.init(shapes.ShapeDtype((1, 1), np.int32))

  accelerated = decoding.autoregressive_sample(
      model, batch_size=1, max_length=4, eos_id=-1, accelerate=True)
  plain = decoding.autoregressive_sample(
      model, batch_size=1, max_length=4, eos_id=-1, accelerate=False)

  assert accelerated.shape == (1, 4)
  assert plain.shape == (1, 4)
  assert isinstance(model.rng, jax.Array)
  assert not isinstance(model.rng, jax.core.Tracer)


def test_cond_accepts_operand_keywords():
  trax_compat.patch_cond_operands()
  result = fastmath.cond(
      pred=jnp.array(False), true_operand=jnp.ones(2),
      true_fun=lambda x: x * 2, false_operand=jnp.full(2, 5.0),
      false_fun=lambda x: x + 1)
  np.testing.assert_array_equal(result, [6.0, 6.0])


def test_cond_keeps_positional_form():
  trax_compat.patch_cond_operands()
  result = fastmath.cond(jnp.array(True), lambda x: x * 2, lambda x: x,
                         jnp.ones(2))
  np.testing.assert_array_equal(result, [2.0, 2.0])


def test_trax_self_attention_predict_mode_runs():
  trax_compat.patch_cond_operands()
  layer = tl.SelfAttention(n_heads=2, d_qk=4, d_v=4, causal=True,
                           mode='predict', predict_mem_len=8,
                           predict_drop_len=4)
  token = np.ones((1, 1, 8), np.float32)
  layer.init(shapes.signature(token))

  outputs = [np.asarray(layer(token * step)) for step in range(1, 4)]

  for output in outputs:
    assert output.shape == (1, 1, 8)
    assert np.all(np.isfinite(output))
