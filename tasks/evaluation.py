"""Scoring a trained language model on every token of a split.

`score_tokens` runs an eval-mode Trax model over (inputs, targets, weights)
batches and returns the summed negative log-likelihood in nats of the
weighted target tokens, their count, and how many of them the model's
argmax predicts. The metrics in `tasks.metrics` turn these sums into
perplexities and bits.
"""

import time

from absl import logging
import jax
from jax import numpy as jnp
import numpy as np


def _make_batch_loss(model):
  """Return a jitted fn(weights, state, rng, batch) -> (nll, tokens, correct)."""

  def batch_loss(weights, state, rng, inputs, targets, mask):
    log_probs, _ = model.pure_fn(inputs, weights, state, rng)
    picked = jnp.take_along_axis(
        log_probs.astype(jnp.float32), targets[..., None], axis=-1)[..., 0]
    mask = mask.astype(jnp.float32)
    correct = (jnp.argmax(log_probs, axis=-1) == targets).astype(jnp.float32)
    return (-jnp.sum(picked * mask), jnp.sum(mask), jnp.sum(correct * mask))

  return jax.jit(batch_loss)


def score_tokens(model, weights, state, batches, log_every=50):
  """Sum the negative log-likelihood and the correct argmax predictions.

  Args:
    model: Trax layer in eval mode mapping int inputs [batch, length] to
      log-probabilities [batch, length, vocab_size].
    weights: The model's weights (for example `loop.model.weights`).
    state: The model's state.
    batches: Iterable of (inputs, targets, weights) arrays of shape
      [batch, length]; a token counts when its weight is 1.
    log_every: Progress is logged every this many batches.

  Returns:
    (nll, n_tokens, n_correct): float sums over weighted tokens, nll in nats
    accumulated in float64, n_correct counting tokens whose most likely
    prediction is the target.
  """
  batch_loss = _make_batch_loss(model)
  rng = jax.random.PRNGKey(0)
  nll = 0.0
  n_tokens = 0.0
  n_correct = 0.0
  start = time.time()
  for index, (inputs, targets, mask) in enumerate(batches):
    batch_nll, batch_tokens, batch_correct = batch_loss(
        weights, state, rng, inputs, targets, mask)
    nll += float(np.asarray(batch_nll, dtype=np.float64))
    n_tokens += float(batch_tokens)
    n_correct += float(batch_correct)
    if log_every and (index + 1) % log_every == 0:
      elapsed = time.time() - start
      logging.info('evaluated %d batches, %d tokens, %.0f tokens/s',
                   index + 1, n_tokens, n_tokens / max(elapsed, 1e-9))
  return nll, n_tokens, n_correct
