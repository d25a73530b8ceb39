"""A tiny PerformerLM and random token batches for the training tests.

The multi-device and multi-host tests run this model in worker processes,
which set their device count before JAX loads, so nothing here imports JAX
at module level.
"""

import numpy as np

VOCAB = 40
BATCH = 4
LENGTH = 16
N_STEPS = 5


def random_batches(seed):
  """Yield (inputs, targets, weights) batches of BATCH x LENGTH tokens."""
  rng = np.random.default_rng(seed)
  while True:
    tokens = rng.integers(2, VOCAB, size=(BATCH, LENGTH)).astype(np.int32)
    yield tokens, tokens, np.ones((BATCH, LENGTH), np.float32)


def model_fn(mode='train'):
  """Return the tiny PerformerLM in `mode`, without dropout."""
  from favor_trax.models import performer_lm  # pylint: disable=import-outside-toplevel
  # Dropout is off because each device draws its own dropout rng.
  return performer_lm.PerformerLM(
      vocab_size=VOCAB, d_model=16, d_ff=32, n_layers=1, n_heads=2,
      max_len=LENGTH, dropout=0.0, mode=mode)


def make_loop(batches_fn, **options):
  """Return a training loop of the toy model without output directory.

  It trains on batches_fn(0) and evaluates on batches_fn(1); `options` go to
  `make_loop`, such as use_memory_efficient_trainer.
  """
  from favor_trax.training import loop as loop_lib  # pylint: disable=import-outside-toplevel
  return loop_lib.make_loop(
      model_fn, batches_fn(0), batches_fn(1), next(batches_fn(0)), None,
      total_steps=1000, tokens_per_step=BATCH * LENGTH, warmup_steps=2,
      steps_per_eval=1000, steps_per_checkpoint=1000, **options)
