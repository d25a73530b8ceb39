"""Weights by name: save them beside a checkpoint, load them into another model.

Trax checkpoints store weights as a flat list whose meaning depends on the
exact model. Here each weight array is named by its place in the layer tree:
the sublayer indices from the model root joined by '/', then 'w' and the
index of the array among its layer's own arrays, as in `5/2/0/w1`. Two models
that differ only in the attention kind share the names of every weight
outside attention, and of the q, k, v and output projections when both kinds
use the same projection layout.
"""

import os

import jax
import numpy as np

NAMED_WEIGHTS_SUFFIX = '.named_weights.npz'


def _leaf_names(weights, prefix):
  """Yield (name, array) for the arrays of one layer's own weights."""
  leaves = jax.tree_util.tree_leaves(weights)
  for index, leaf in enumerate(leaves):
    yield f'{prefix}w{index}', leaf


def named_weights(layer, prefix=''):
  """Return {name: array} for every weight array of `layer` and its sublayers.

  A name is the path of sublayer indices from `layer`, joined by '/', then
  'w' and the index of the array among the layer's own arrays.
  """
  result = {}
  if not layer.sublayers:
    for name, array in _leaf_names(layer.weights, prefix):
      result[name] = array
    return result
  for index, sublayer in enumerate(layer.sublayers):
    result.update(named_weights(sublayer, f'{prefix}{index}/'))
  return result


def layer_paths(layer, layer_class, prefix=''):
  """Return the name prefixes of the sublayers of `layer` that are layer_class."""
  paths = []
  if isinstance(layer, layer_class):
    paths.append(prefix)
  for index, sublayer in enumerate(layer.sublayers):
    paths.extend(layer_paths(sublayer, layer_class, f'{prefix}{index}/'))
  return paths


def read(path):
  """Return {name: array} from a file written by `save`."""
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'No named weights at {path}. Give the output_dir of a favor_trax '
        'training run, which writes model.named_weights.npz with each '
        'checkpoint.')
  with np.load(path) as stored:
    return {name: stored[name] for name in stored.files}


def save(layer, path):
  """Write the named weights of `layer` to `path` (an .npz file) atomically."""
  arrays = {name: np.asarray(array)
            for name, array in named_weights(layer).items()}
  temporary = path + '.tmp.npz'
  np.savez(temporary, **arrays)
  os.replace(temporary, path)


def load_into(layer, stored):
  """Copy stored arrays into `layer` where names and shapes agree.

  Args:
    layer: An initialized Trax layer.
    stored: {name: array}, as returned by `read`.

  Returns:
    (loaded, not_loaded): sorted lists of the names of `layer`'s weights that
    were copied, and of those left as initialized because the file has no
    array of that name, or one of another shape.
  """
  loaded, not_loaded = [], []
  replacements = {}
  for name, array in named_weights(layer).items():
    source = stored.get(name)
    if source is not None and source.shape == array.shape:
      replacements[name] = source.astype(array.dtype)
      loaded.append(name)
    else:
      not_loaded.append(name)
  _set_named_weights(layer, replacements)
  return sorted(loaded), sorted(not_loaded)


def differences(layer, stored):
  """Return how the weights of `layer` and `stored` differ in names or shapes.

  Args:
    layer: An initialized Trax layer.
    stored: {name: array}, as returned by `read`.

  Returns:
    A sorted list of lines such as '3/1/w0: shape (64, 32) in the model,
    (64, 16) in the checkpoint', empty when every name and shape agrees.
  """
  model_shapes = {name: tuple(array.shape)
                  for name, array in named_weights(layer).items()}
  stored_shapes = {name: tuple(array.shape) for name, array in stored.items()}
  lines = []
  for name in sorted(set(model_shapes) | set(stored_shapes)):
    if name not in stored_shapes:
      lines.append(f'{name}: shape {model_shapes[name]} in the model, '
                   'missing from the checkpoint')
    elif name not in model_shapes:
      lines.append(
          f'{name}: missing from the model, shape {stored_shapes[name]} '
          'in the checkpoint')
    elif model_shapes[name] != stored_shapes[name]:
      lines.append(f'{name}: shape {model_shapes[name]} in the model, '
                   f'{stored_shapes[name]} in the checkpoint')
  return lines


def _set_named_weights(layer, replacements, prefix=''):
  """Replace arrays of `layer` by name; arrays not named keep their value."""
  if not layer.sublayers:
    leaves, treedef = jax.tree_util.tree_flatten(layer.weights)
    if not leaves:
      return
    new_leaves = [replacements.get(f'{prefix}w{index}', leaf)
                  for index, leaf in enumerate(leaves)]
    layer.weights = jax.tree_util.tree_unflatten(treedef, new_leaves)
    return
  for index, sublayer in enumerate(layer.sublayers):
    _set_named_weights(sublayer, replacements, f'{prefix}{index}/')
