"""Tests of CheckpointingLoop's checkpoint files on the first and other hosts."""

import numpy as np
from trax import layers as tl
from trax import optimizers
from trax.supervised import training

from favor_trax.training import loop as loop_lib


def _batches():
  tokens = np.arange(8, dtype=np.int32).reshape(2, 4) % 16
  while True:
    yield tokens, tokens, np.ones((2, 4), np.float32)


def _loop(output_dir):
  model = tl.Serial(tl.Embedding(16, 8), tl.Dense(16), tl.LogSoftmax())
  task = training.TrainTask(
      labeled_data=_batches(),
      loss_layer=tl.WeightedCategoryCrossEntropy(),
      optimizer=optimizers.Adam(0.01),
      n_steps_per_checkpoint=100)
  return loop_lib.CheckpointingLoop(model, [task], output_dir=str(output_dir),
                                    random_seed=0)


def test_first_host_writes_checkpoint(tmp_path):
  loop = _loop(tmp_path)

  loop.save_checkpoint('model')

  names = sorted(path.name for path in tmp_path.iterdir())
  assert 'model.pkl.gz' in names
  assert 'model.weights.npy.gz' in names
  assert 'model.named_weights.npz' in names
  assert not [name for name in names if 'staging' in name]


def test_other_hosts_write_no_checkpoint(tmp_path):
  loop = _loop(tmp_path)
  loop._is_chief = False  # pylint: disable=protected-access

  loop.save_checkpoint('model')

  names = [path.name for path in tmp_path.iterdir()]
  assert not [name for name in names if name.startswith('model')]
