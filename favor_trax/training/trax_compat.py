"""Patches that Trax 1.4.1 needs to run on the pinned JAX (0.10.2).

Trax 1.4.1 (2021) predates the JAX this project pins. Each function below fixes
one breakage, is idempotent, and has a test in tests/training that fails
without it. `apply_all()` applies every patch; `favor_trax.training.loop`
calls it before building the Loop.

Breakages handled elsewhere, without a patch:
- `Loop(use_memory_efficient_trainer=True)` calls the task's optimizer as a
  factory; `favor_trax.training.loop` passes a factory.
- `import tensorflow_datasets` needs `importlib_resources`; setup.py pins it.
- `Loop(use_memory_efficient_trainer=True)` evaluates the train-mode model,
  with dropout on; `favor_trax.training.loop.CheckpointingLoop` evaluates its
  eval_model instead.
"""

import functools
import importlib

import jax
from jax import lax
from jax import numpy as jnp
from jax import sharding
import numpy as np
from trax import fastmath
from trax import layers as tl
from trax import optimizers
from trax.layers import acceleration
from trax.supervised import training

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


# The axis name that Trax's trainers give `pmap`. Arrays sharded on a mesh with
# this axis name have the sharding of those pmaps' outputs, so a pmapped step
# compiles once for replicated inputs and for its own outputs.
_PMAP_AXIS_NAME = 'batch'


def _replicate_on_local_devices(value):
  """Return `value` stacked once per local device, slice i on device i."""
  devices = jax.local_devices()
  if not isinstance(value, jax.Array):
    value = np.asarray(value)
  mesh = sharding.Mesh(np.array(devices), (_PMAP_AXIS_NAME,))
  stacked_sharding = sharding.NamedSharding(
      mesh, sharding.PartitionSpec(_PMAP_AXIS_NAME))
  slices = [jax.device_put(value[None], device) for device in devices]
  return jax.make_array_from_single_device_arrays(
      (len(devices),) + value.shape, stacked_sharding, slices)


def patch_for_n_devices():
  """Make `tl.for_n_devices` replicate arrays without `device_put_replicated`.

  Trax replicates weights, state and optimizer slots for `pmap` with
  `jax.device_put_replicated`, which jax 0.10.2 no longer exports. Without
  this patch, every Trax trainer on more than one device raises
  `AttributeError: jax.device_put_replicated is deprecated`.
  """
  if 'for_n_devices' in _APPLIED:
    return
  original = acceleration.for_n_devices

  @functools.wraps(original)
  def for_n_devices(x, n_devices):
    if n_devices > 1 and fastmath.is_backend(fastmath.Backend.JAX):
      return fastmath.nested_map(_replicate_on_local_devices, x)
    return original(x, n_devices)

  # `Accelerate` calls the module-level name, and trainers call
  # `tl.for_n_devices`.
  acceleration.for_n_devices = for_n_devices
  tl.for_n_devices = for_n_devices
  _APPLIED.add('for_n_devices')


def _spread_single_device_array(value, axis_name):
  """Return a one-device array split on axis 0 as pmap splits its inputs.

  The sharding equals that of pmap's outputs, so the first call and later
  calls, which get the previous call's outputs, compile the same program.
  Other values are returned unchanged.
  """
  if (not isinstance(value, jax.Array) or isinstance(value, jax.core.Tracer)
      or len(value.sharding.device_set) != 1):
    return value
  if (axis_name is None or jax.process_count() > 1 or value.ndim == 0
      or value.shape[0] > jax.device_count()):
    # pmap converts host arrays itself, in every case it accepts.
    return np.asarray(value)
  mesh = sharding.Mesh(np.array(jax.devices()[:value.shape[0]]), (axis_name,))
  return jax.device_put(
      value, sharding.NamedSharding(mesh, sharding.PartitionSpec(axis_name)))


def _pmap(fun, *args, **kwargs):
  """Run `jax.pmap`, spreading one-device array arguments over the devices."""
  mapped = jax.pmap(fun, *args, **kwargs)
  spread = functools.partial(_spread_single_device_array,
                             axis_name=kwargs.get('axis_name'))

  @functools.wraps(fun)
  def call(*call_args, **call_kwargs):
    call_args, call_kwargs = jax.tree_util.tree_map(
        spread, (call_args, call_kwargs))
    return mapped(*call_args, **call_kwargs)

  return call


def patch_pmap_committed_arguments():
  """Make `fastmath.pmap` accept arguments placed on one device.

  Trax keeps optimizer slots and parameters on the host with `tl.on_cpu`,
  which commits them to one device, and passes them to pmapped update
  functions. Since jax 0.8, `jax.pmap` is `jax.jit` over `shard_map` and
  raises `ValueError: Sharding passed to jit does not match the sharding on
  the respective arg` for such arguments. The patch moves them to the
  sharding that `pmap` gives its outputs, split on the leading axis across
  the devices, as the old `pmap` did.

  NOTE: functions that Trax pmaps at import time (`training.py`'s
  `_make_weights_and_state_same_across_hosts`, used only across several hosts
  without a random seed, and the weight-sharding helpers in `layers/base.py`)
  keep the unpatched `pmap`.
  """
  if 'pmap_committed_arguments' in _APPLIED:
    return
  trax_jax_backend.JAX_BACKEND['pmap'] = _pmap
  _APPLIED.add('pmap_committed_arguments')


def _default_device():
  """Return the device JAX places new arrays on (jax_default_device or first)."""
  return next(iter(jnp.zeros(()).devices()))


def patch_trainer_placement():
  """Run the single-device `Trainer` step on JAX's default device.

  Trax's `Trainer` keeps optimizer slots and parameters on the host with
  `tl.on_cpu`, which commits them to the CPU device, while the first step's
  weights are uncommitted. A jitted call runs on the device of its committed
  arguments. So on a host with one GPU or TPU the update runs on the CPU, and
  on any host the second step compiles the update again, because the weights
  come back committed. The patch commits weights, state, slots and optimizer
  parameters to the default device before each step. With more than one
  device the trainer pmaps, and `patch_pmap_committed_arguments` applies.

  NOTE: the tests check this with two CPU devices, the second one the default
  device in place of an accelerator. It has not run on a GPU or TPU.
  """
  if 'trainer_placement' in _APPLIED:
    return
  original = optimizers.Trainer.one_step

  @functools.wraps(original)
  def one_step(self, batch, rng, step=0, learning_rate=None):
    if self._n_devices == 1:  # pylint: disable=protected-access
      device = _default_device()
      model = self.accelerated_model_with_loss
      model.weights = jax.device_put(model.weights, device)
      model.state = jax.device_put(model.state, device)
      # pylint: disable=protected-access
      self._slots = jax.device_put(self._slots, device)
      self._opt_params = jax.device_put(self._opt_params, device)
      # pylint: enable=protected-access
    return original(self, batch, rng, step=step, learning_rate=learning_rate)

  optimizers.Trainer.one_step = one_step
  _APPLIED.add('trainer_placement')


def patch_reversible_trainer_rng():
  """Give `ReversibleSerialTrainer` its step rng on the accelerator.

  With the memory-efficient trainer, Trax's Loop keeps its rng on the host
  (`tl.on_cpu`). On one device the trainer splits per-layer keys from it and
  passes them, with weights it moved by `tl.on_accelerator`, to jitted layer
  functions. On a host with one GPU or TPU, jax 0.10.2 then raises
  `ValueError: Received incompatible devices for jitted computation`. The
  patch moves the step rng with `tl.on_accelerator`, which leaves it in place
  on a host without an accelerator.

  NOTE: the tests check this with two CPU devices, `tl.on_accelerator`
  replaced by a move to the second one. It has not run on a GPU or TPU.
  """
  if 'reversible_trainer_rng' in _APPLIED:
    return
  original = optimizers.ReversibleSerialTrainer.one_step

  @functools.wraps(original)
  def one_step(self, batch, rng, step=0, learning_rate=None):
    if self._n_devices == 1:  # pylint: disable=protected-access
      rng = tl.on_accelerator(rng)
    return original(self, batch, rng, step=step, learning_rate=learning_rate)

  optimizers.ReversibleSerialTrainer.one_step = one_step
  _APPLIED.add('reversible_trainer_rng')


def patch_reversible_trainer_weights():
  """Give `ReversibleSerialTrainer` host weights as numpy arrays at every step.

  Trax's trainer converts each layer's weights to numpy after a step, but the
  first step gets them from `init_reversible_blocks` as arrays committed to
  the CPU device. Without an accelerator `tl.on_accelerator` passes both on
  unchanged, and the second step compiles every layer function again. The
  patch converts the weights to numpy before each step, as Trax does after it.
  """
  if 'reversible_trainer_weights' in _APPLIED:
    return
  original = optimizers.ReversibleSerialTrainer.one_step

  @functools.wraps(original)
  def one_step(self, batch, rng, step=0, learning_rate=None):
    for layer in self.all_layers:
      self._collect_weights(layer)  # pylint: disable=protected-access
    return original(self, batch, rng, step=step, learning_rate=learning_rate)

  optimizers.ReversibleSerialTrainer.one_step = one_step
  _APPLIED.add('reversible_trainer_weights')


def first_local_replica(value):
  """Return the copy of a pmap-replicated array on this process's first device.

  `value[0]` selects the copy on global device 0, which only process 0 can
  read when several processes share the pmap.
  """
  if isinstance(value, jax.Array) and not value.is_fully_addressable:
    local = value.addressable_data(0)
    return local[0] if local.ndim == value.ndim else local
  return value[0]


def patch_unreplicate_on_hosts():
  """Unreplicate pmapped weights from a device of the calling process.

  With `jax.distributed` and more than one process, Trax's trainers and Loop
  unreplicate weights, state and optimizer slots as `x[0]`. On every process
  but the first, that is an array on another host's device, and reading it
  raises `RuntimeError: Fetching value for jax.Array that spans
  non-addressable ... devices`. The patched methods take the first local
  replica instead; with one process both are the same array.
  """
  if 'unreplicate_on_hosts' in _APPLIED:
    return

  def unreplicate(self, x):
    if getattr(self, '_n_devices', getattr(self, 'n_devices', 1)) < 2:
      return x
    return fastmath.nested_map(first_local_replica, x)

  def unreplicate_to_host(self, x):
    return tl.on_cpu(unreplicate(self, x))

  def lazy_unreplicate(self, x):
    def start_copy(value):
      local = value if self._n_devices == 1 else first_local_replica(value)  # pylint: disable=protected-access
      local.copy_to_host_async()
      return local
    return fastmath.nested_map(start_copy, x)

  optimizers.Trainer._unreplicate = unreplicate  # pylint: disable=protected-access
  acceleration.Accelerate._unreplicate = unreplicate  # pylint: disable=protected-access
  training.Loop._unreplicate = unreplicate  # pylint: disable=protected-access
  optimizers.ReversibleSerialTrainer._unreplicate = unreplicate_to_host  # pylint: disable=protected-access
  optimizers.ReversibleSerialTrainer._lazy_unreplicate = lazy_unreplicate  # pylint: disable=protected-access
  _APPLIED.add('unreplicate_on_hosts')


def local_replicas(value):
  """Return the replicas of a pmapped array on this process's devices.

  Other values are returned unchanged.
  """
  if not isinstance(value, jax.Array) or value.is_fully_addressable:
    return value
  shards = [np.asarray(shard.data) for shard in value.addressable_shards]
  if shards[0].ndim == value.ndim:
    return np.concatenate(shards, axis=0)
  return np.stack(shards)


def patch_mean_over_local_devices():
  """Average per-device losses and metrics over this process's devices.

  Trax's Loop and `jit_forward` average the per-device values of a pmapped
  step with `mean_or_pmean`, which is `jnp.mean`. Across several processes
  those values form one global array, so each `jnp.mean` is one more
  collective computation that every process must run in the same order as
  the pmapped steps, and two processes that dispatch them in another order
  hang. Trax documents the averaged loss as this host's, so the patch
  averages the local replicas on the host, without a collective.

  NOTE: unlike the other patches, no test fails without this one. The
  two-process test passed once before it was added and hung on a loaded
  machine with and without it.
  """
  if 'mean_over_local_devices' in _APPLIED:
    return
  original = acceleration.mean_or_pmean

  @functools.wraps(original)
  def mean_or_pmean(n_devices, x, axis=None):
    return original(n_devices, local_replicas(x), axis=axis)

  acceleration.mean_or_pmean = mean_or_pmean
  tl.mean_or_pmean = mean_or_pmean
  _APPLIED.add('mean_over_local_devices')


def _on_local_cpu(x):
  """Put x on this process's first CPU device."""
  return jax.device_put(x, jax.local_devices(backend='cpu')[0])


def patch_on_cpu_local():
  """Make `tl.on_cpu` place arrays on a CPU device of the calling process.

  Trax's `on_cpu` uses `jax.devices('cpu')[0]`, the first CPU device of the
  whole job. When several processes run on CPUs under `jax.distributed`,
  that device belongs to process 0, and every other process gets arrays it
  cannot read (the Loop's rng first). With one process both calls return
  the same device.
  """
  if 'on_cpu_local' in _APPLIED:
    return
  tl.on_cpu = _on_local_cpu
  acceleration.on_cpu = _on_local_cpu
  _APPLIED.add('on_cpu_local')


def apply_all():
  """Apply every patch in this module; calling it again does nothing."""
  patch_tree_unflatten()
  patch_accelerate_rng()
  patch_cond_operands()
  patch_for_n_devices()
  patch_pmap_committed_arguments()
  patch_trainer_placement()
  patch_reversible_trainer_rng()
  patch_reversible_trainer_weights()
  patch_unreplicate_on_hosts()
  patch_on_cpu_local()
  patch_mean_over_local_devices()
