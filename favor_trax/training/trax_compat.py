"""Patches that Trax 1.4.1 needs to run on the pinned JAX (0.10.2).

Trax 1.4.1 (2021) predates the JAX this project pins. Each function below fixes
one breakage, is idempotent, and has a test in tests/training that fails
without it. `apply_all()` applies every patch; `favor_trax.training.loop`
calls it before building the Loop.

Breakages handled elsewhere, without a patch:
- `Loop(use_memory_efficient_trainer=True)` calls the task's optimizer as a
  factory; `favor_trax.training.loop` passes a factory.
- `import tensorflow_datasets` needs `importlib_resources`; setup.py pins it.
"""

import functools
import importlib

import jax
from jax import lax
import numpy as np
from trax import fastmath
from trax.layers import acceleration

# `trax.fastmath.numpy` as an attribute is the backend's numpy, so the module
# that defines tree_unflatten is imported by its full name.
trax_numpy = importlib.import_module('trax.fastmath.numpy')
trax_jax_backend = importlib.import_module('trax.fastmath.jax')

_APPLIED = set()


def _is_array(value):
  return isinstance(value, (np.ndarray, jax.Array))


class _SafeMembership(list):
  """A list whose `in` test never compares arrays elementwise.

  Trax's `tree_unflatten(..., copy_from_tree=[None, ()])` tests every tree node
  with `node in copy_from_tree`. Since jax 0.4.x, `jax.Array == ()` raises
  TypeError, so restoring optimizer slots from a checkpoint fails. Arrays are
  leaves and are never among the markers to copy, so they test False here.
  """

  def __contains__(self, node):
    if _is_array(node):
      return False
    return any(node is marker or (not _is_array(marker) and node == marker)
               for marker in self)


def patch_tree_unflatten():
  """Make `Loop` restore checkpoints that hold optimizer slots.

  Without this patch, re-creating `training.Loop` on an output_dir with a
  checkpoint raises `TypeError: unsupported operand type(s) for ==:
  'ArrayImpl' and 'tuple'` inside `trax.fastmath.numpy.tree_unflatten`.
  """
  if 'tree_unflatten' in _APPLIED:
    return
  original = trax_numpy.tree_unflatten

  @functools.wraps(original)
  def tree_unflatten(flat, tree, copy_from_tree=None):
    if copy_from_tree is not None and not isinstance(copy_from_tree,
                                                     _SafeMembership):
      copy_from_tree = _SafeMembership(copy_from_tree)
    return original(flat, tree, copy_from_tree=copy_from_tree)

  # The function recurses through its module-level name, and callers reach it
  # as `fastmath.tree_unflatten`, so both names are replaced.
  trax_numpy.tree_unflatten = tree_unflatten
  fastmath.tree_unflatten = tree_unflatten
  _APPLIED.add('tree_unflatten')


def _materialize_rngs(layer):
  """Create every unset layer rng now, outside any jax.jit trace."""
  layer.rng  # pylint: disable=pointless-statement
  for sublayer in layer.sublayers:
    _materialize_rngs(sublayer)


def patch_accelerate_rng():
  """Keep `tl.Accelerate` from leaving a jit tracer as a layer's rng.

  A Trax layer creates its rng lazily, on first read. When that first read
  happens inside `Accelerate`'s jitted call, as in
  `decoding.autoregressive_sample`, the layer keeps a tracer as its rng, and
  the next call of the model outside jit fails with an escaped-tracer error.
  The patch creates all rngs of the wrapped model before the jitted call.
  """
  if 'accelerate_rng' in _APPLIED:
    return
  original = acceleration.Accelerate.pure_fn

  @functools.wraps(original)
  def pure_fn(self, x, weights, state, rng, use_cache=False):
    _materialize_rngs(self.sublayer)
    return original(self, x, weights, state, rng, use_cache=use_cache)

  acceleration.Accelerate.pure_fn = pure_fn
  _APPLIED.add('accelerate_rng')


def _cond(*args, **kwargs):
  """Run `lax.cond`, also in the keyword form JAX no longer accepts.

  Trax 1.4.1's attention layers call cond(pred=, true_operand=, true_fun=,
  false_operand=, false_fun=) in predict mode; jax 0.10.2's `lax.cond` takes
  only cond(pred, true_fun, false_fun, *operands).
  """
  if 'true_operand' not in kwargs:
    return lax.cond(*args, **kwargs)
  pred = kwargs.pop('pred') if 'pred' in kwargs else args[0]
  true_fun = kwargs.pop('true_fun')
  false_fun = kwargs.pop('false_fun')
  operands = (kwargs.pop('true_operand'), kwargs.pop('false_operand'))
  if kwargs:
    raise TypeError(f'Unexpected arguments of cond: {sorted(kwargs)}')
  return lax.cond(pred, lambda ops: true_fun(ops[0]),
                  lambda ops: false_fun(ops[1]), operands)


def patch_cond_operands():
  """Make `fastmath.cond` accept the true_operand/false_operand keywords.

  Without this patch, predict mode of Trax's `tl.SelfAttention` and LSH
  attention raises `TypeError: cond() got an unexpected keyword argument
  'true_operand'`.
  """
  if 'cond_operands' in _APPLIED:
    return
  trax_jax_backend.JAX_BACKEND['cond'] = _cond
  _APPLIED.add('cond_operands')


def apply_all():
  """Apply every patch in this module; calling it again does nothing."""
  patch_tree_unflatten()
  patch_accelerate_rng()
  patch_cond_operands()
