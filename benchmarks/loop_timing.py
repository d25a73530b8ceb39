"""Step times of a training loop on random tokens, after its compiling step."""

import time
from typing import Iterator, List

import jax
import numpy as np


def random_token_batches(length: int, vocab_size: int,
                         seed: int = 0) -> Iterator:
  """Yield (inputs, targets, weights) batches of one row of random tokens.

  Token ids are drawn from [2, vocab_size), leaving out padding and the end
  of text, and every position has weight 1.
  """
  rng = np.random.default_rng(seed)
  while True:
    tokens = rng.integers(2, vocab_size, size=(1, length)).astype(np.int32)
    yield tokens, tokens, np.ones_like(tokens, dtype=np.float32)


def time_loop_steps(loop, steps: int) -> List[float]:
  """Run one compiling step, then return the seconds of each of `steps` more.

  JAX dispatches asynchronously, so each step counts as ended when the
  loop's weights are ready.
  """
  loop.run(1)
  jax.block_until_ready(loop.model.weights)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    loop.run(1)
    jax.block_until_ready(loop.model.weights)
    times.append(time.perf_counter() - start)
  return times
