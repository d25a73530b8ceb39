"""Patches that Trax 1.4.1 needs to run on the pinned JAX (0.10.2).

Trax 1.4.1 (2021) predates the JAX this project pins. Each function below fixes
one breakage, is idempotent, and has a test in tests/training that fails
without it. `apply_all()` applies every patch; `run.py` and the training loop
call it before building a model.

Breakages handled elsewhere, without a patch:
- `Loop(use_memory_efficient_trainer=True)` calls the task's optimizer as a
  factory; `favor_trax.training.loop` passes a factory.
- `import tensorflow_datasets` needs `importlib_resources`; setup.py pins it.
"""

import functools
import importlib

import jax
import numpy as np
from trax import fastmath

# `trax.fastmath.numpy` as an attribute is the backend's numpy, so the module
# that defines tree_unflatten is imported by its full name.
trax_numpy = importlib.import_module('trax.fastmath.numpy')

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


def apply_all():
  """Apply every patch in this module; calling it again does nothing."""
  patch_tree_unflatten()
