"""Data-parallel training over two JAX devices against one device.

JAX fixes its device count at start-up, so the two-device half runs this file
as a script in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=2.
The script also checks, before and after applying them, the Trax patches
that replicate arrays, pmap over host arrays, and place a one-device step on
JAX's default device or the accelerator.
"""

import argparse
import functools
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import toy_lm  # pylint: disable=wrong-import-order

REPOSITORY = pathlib.Path(__file__).resolve().parents[2]
TRAINERS = {'standard': False, 'memory_efficient': True}


def train(use_memory_efficient_trainer):
  """Train the toy model for toy_lm.N_STEPS steps.

  Returns:
    (held-out loss, weight arrays).
  """
  from trax import fastmath  # pylint: disable=import-outside-toplevel
  from trax import shapes  # pylint: disable=import-outside-toplevel

  loop = toy_lm.make_loop(
      toy_lm.random_batches,
      use_memory_efficient_trainer=use_memory_efficient_trainer)
  loop.run(toy_lm.N_STEPS)

  weights = [np.asarray(leaf) for leaf in fastmath.tree_leaves(loop.model.weights)]
  tokens, targets, _ = next(toy_lm.random_batches(2))
  eval_model = toy_lm.model_fn(mode='eval')
  eval_model.init(shapes.signature(tokens))
  eval_model.weights = loop.model.weights
  eval_model.state = loop.model.state
  log_probs = np.asarray(eval_model(tokens))
  loss = -np.take_along_axis(log_probs, targets[..., None], -1).mean()
  return float(loss), weights


def _trainer_weight_devices():
  """Return the ids of the devices that hold a Trainer's weights after a step.

  The trainer runs on one device, with the second device as JAX's default
  device, as an accelerator would be on a host with one GPU. `tl.on_cpu`
  places arrays on the first device, as it would on such a host.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from trax import layers as tl  # pylint: disable=import-outside-toplevel
  from trax import optimizers  # pylint: disable=import-outside-toplevel
  from trax import shapes  # pylint: disable=import-outside-toplevel

  with jax.default_device(jax.devices()[1]):
    model = tl.Serial(tl.Embedding(toy_lm.VOCAB, 8), tl.Dense(toy_lm.VOCAB),
                      tl.LogSoftmax(), tl.WeightedCategoryCrossEntropy())
    batch = next(toy_lm.random_batches(0))
    model.init(shapes.signature(batch))
    optimizer = optimizers.Adam(0.01)
    optimizer.tree_init(model.weights)
    trainer = optimizers.Trainer(model, optimizer, n_devices=1)
    trainer.one_step(batch, jax.random.PRNGKey(0), step=0)
    weights = trainer.accelerated_model_with_loss.weights
    return sorted({device.id for leaf in jax.tree_util.tree_leaves(weights)
                   for device in leaf.devices()})


def _reversible_trainer_outcome():
  """Return 'ok', or the error, of a memory-efficient step on an accelerator.

  `tl.on_accelerator` is replaced by a move to the second device, which
  plays the accelerator of a host with one GPU. `tl.on_cpu` moves
  arrays to the first device, as it would to the host on such a machine.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from trax import layers as tl  # pylint: disable=import-outside-toplevel
  from trax import optimizers  # pylint: disable=import-outside-toplevel
  from trax import shapes  # pylint: disable=import-outside-toplevel
  from trax.optimizers import trainer as trainer_lib  # pylint: disable=import-outside-toplevel

  accelerator = jax.devices()[1]
  on_accelerator = tl.on_accelerator
  tl.on_accelerator = functools.partial(jax.device_put, device=accelerator)
  try:
    with jax.default_device(accelerator):
      model = tl.Serial(
          tl.Embedding(toy_lm.VOCAB, 8), tl.Dup(),
          tl.ReversibleSerial(tl.ReversibleHalfResidual(tl.Dense(8)),
                              tl.ReversibleSwap()),
          tl.Concatenate(), tl.Dense(toy_lm.VOCAB), tl.LogSoftmax())
      batch = next(toy_lm.random_batches(0))
      blocks, loss_layer = trainer_lib.extract_reversible_blocks(
          [model, tl.WeightedCategoryCrossEntropy()])
      trainer_lib.init_reversible_blocks(
          blocks, loss_layer, shapes.signature(batch), jax.random.PRNGKey(0))
      trainer = optimizers.ReversibleSerialTrainer(
          blocks, loss_layer, functools.partial(optimizers.Adam, 0.01),
          n_devices=1)
      # Trax's Loop gives this trainer rngs from tl.on_cpu.
      trainer.one_step(batch, tl.on_cpu(jax.random.PRNGKey(1)), step=0)
    return 'ok'
  except ValueError as error:
    return str(error)
  finally:
    tl.on_accelerator = on_accelerator


def check_patches():
  """Return the outcome of each patch check on the local devices."""
  import jax  # pylint: disable=import-outside-toplevel
  from trax import fastmath  # pylint: disable=import-outside-toplevel
  from trax import layers as tl  # pylint: disable=import-outside-toplevel
  from favor_trax.training import trax_compat  # pylint: disable=import-outside-toplevel

  results = {'device_count': jax.local_device_count()}
  results['unpatched_trainer_devices'] = _trainer_weight_devices()
  results['unpatched_reversible_trainer'] = _reversible_trainer_outcome()
  value = np.arange(6, dtype=np.float32).reshape(2, 3)
  try:
    tl.for_n_devices(value, 2)
    results['unpatched_for_n_devices_error'] = None
  except AttributeError as error:
    results['unpatched_for_n_devices_error'] = str(error)

  # tl.on_cpu commits arrays to one device, as Trax does with optimizer slots.
  committed = tl.on_cpu(np.stack([value, value + 1]))
  summed = lambda x: jax.lax.psum(x, 'batch')
  try:
    fastmath.pmap(summed, axis_name='batch')(committed)
    results['unpatched_pmap_error'] = None
  except ValueError as error:
    results['unpatched_pmap_error'] = str(error)

  trax_compat.apply_all()
  replicated = tl.for_n_devices(value, 2)
  results['replicated_shape'] = list(replicated.shape)
  results['replicated_devices'] = sorted(
      shard.device.id for shard in replicated.addressable_shards)
  results['replicated_equal'] = bool(
      np.array_equal(np.asarray(replicated), np.stack([value, value])))
  total = fastmath.pmap(summed, axis_name='batch')(committed)
  results['pmap_sum_equal'] = bool(
      np.array_equal(np.asarray(total), np.stack([2 * value + 1] * 2)))
  results['patched_trainer_devices'] = _trainer_weight_devices()
  results['patched_reversible_trainer'] = _reversible_trainer_outcome()
  return results


def _write_results(output_dir, results):
  output_dir = pathlib.Path(output_dir)
  with open(output_dir / 'checks.json', 'w', encoding='utf-8') as file:
    json.dump(results['checks'], file)
  for name, (loss, weights) in results['trainers'].items():
    np.savez(output_dir / f'{name}.npz', loss=loss, *weights)


def _read_trainer(output_dir, name):
  with np.load(pathlib.Path(output_dir) / f'{name}.npz') as arrays:
    weights = [arrays[f'arr_{index}'] for index in range(len(arrays) - 1)]
    return float(arrays['loss']), weights


def _start_worker(output_dir, device_count):
  environment = dict(os.environ)
  environment['XLA_FLAGS'] = (
      f'--xla_force_host_platform_device_count={device_count}')
  environment['JAX_PLATFORMS'] = 'cpu'
  environment['PYTHONPATH'] = os.pathsep.join(
      [str(REPOSITORY)] + environment.get('PYTHONPATH', '').split(os.pathsep))
  return subprocess.Popen(
      [sys.executable, __file__, '--output_dir', str(output_dir)],
      env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)


def _wait(worker):
  try:
    output, _ = worker.communicate(timeout=600)
  except subprocess.TimeoutExpired:
    worker.kill()
    output, _ = worker.communicate()
    pytest.fail(f'The worker timed out after 600 s. Its output:\n{output[-4000:]}')
  if worker.returncode != 0:
    pytest.fail(f'The worker failed with exit code {worker.returncode}. '
                f'Its output:\n{output[-4000:]}')


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Return {'checks': ..., 'two_devices': runs, 'one_device': runs}.

  Each runs value maps a trainer name to (held-out loss, weight arrays).
  """
  import jax  # pylint: disable=import-outside-toplevel

  two_dir = tmp_path_factory.mktemp('two_devices')
  two_device_worker = _start_worker(two_dir, 2)
  one_dir = tmp_path_factory.mktemp('one_device')
  try:
    if jax.local_device_count() == 1:
      # The one-device half runs here, while the worker runs.
      _write_results(one_dir, {
          'checks': {},
          'trainers': {name: train(flag) for name, flag in TRAINERS.items()}})
    else:
      _wait(_start_worker(one_dir, 1))
  except BaseException:
    two_device_worker.kill()
    two_device_worker.communicate()
    raise
  _wait(two_device_worker)

  with open(two_dir / 'checks.json', encoding='utf-8') as file:
    checks = json.load(file)
  return {
      'checks': checks,
      'two_devices': {name: _read_trainer(two_dir, name) for name in TRAINERS},
      'one_device': {name: _read_trainer(one_dir, name) for name in TRAINERS},
  }


def test_worker_sees_two_devices(runs):
  assert runs['checks']['device_count'] == 2


def test_unpatched_replication_fails(runs):
  # Documents the breakage behind patch_for_n_devices. If a Trax or JAX
  # upgrade makes replication work unpatched, the patch can go.
  assert 'device_put_replicated' in runs['checks']['unpatched_for_n_devices_error']


def test_patched_replication_places_one_copy_per_device(runs):
  checks = runs['checks']
  assert checks['replicated_shape'] == [2, 2, 3]
  assert checks['replicated_devices'] == [0, 1]
  assert checks['replicated_equal']


def test_unpatched_pmap_rejects_committed_arguments(runs):
  # Documents the breakage behind patch_pmap_committed_arguments.
  assert 'does not match the sharding' in runs['checks']['unpatched_pmap_error']


def test_patched_pmap_accepts_committed_arguments(runs):
  assert runs['checks']['pmap_sum_equal']


def test_unpatched_trainer_updates_on_host_device(runs):
  # Documents the breakage behind patch_trainer_placement: the step runs on
  # the device that tl.on_cpu commits the optimizer slots to.
  assert runs['checks']['unpatched_trainer_devices'] == [0]


def test_patched_trainer_updates_on_default_device(runs):
  assert runs['checks']['patched_trainer_devices'] == [1]


def test_unpatched_reversible_trainer_mixes_devices(runs):
  # Documents the breakage behind patch_reversible_trainer_rng.
  assert 'incompatible devices' in runs['checks']['unpatched_reversible_trainer']


def test_patched_reversible_trainer_runs_on_accelerator(runs):
  assert runs['checks']['patched_reversible_trainer'] == 'ok'


@pytest.mark.parametrize('trainer', sorted(TRAINERS))
def test_two_devices_match_one_device(runs, trainer):
  two_loss, two_weights = runs['two_devices'][trainer]
  one_loss, one_weights = runs['one_device'][trainer]

  np.testing.assert_allclose(two_loss, one_loss, rtol=1e-5)
  assert len(two_weights) == len(one_weights)
  for two_device_array, one_device_array in zip(two_weights, one_weights):
    np.testing.assert_allclose(two_device_array, one_device_array, rtol=1e-4,
                               atol=1e-6)


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--output_dir', required=True,
                      help='Directory for checks.json and one .npz per trainer.')
  arguments = parser.parse_args()
  checks = check_patches()
  trainers = {name: train(flag) for name, flag in TRAINERS.items()}
  _write_results(arguments.output_dir, {'checks': checks, 'trainers': trainers})


if __name__ == '__main__':
  main()
