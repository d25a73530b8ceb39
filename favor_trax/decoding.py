"""Autoregressive sampling from a trained model in predict mode.

A predict-mode PerformerLM decodes one call after another: each FAVOR layer
carries its prefix sums (`favor_trax.ops.linear_attention.CausalState`) and the
positional encoding carries the position, so each new token costs the same
whatever its position. `predict_model` builds such a model from the weights
and state of a trained one. `Sampler` feeds it a prompt and draws new tokens
with a temperature and top-k.

`full_pass_greedy` is the reference: it reruns the whole causal forward pass
on the growing prefix for every token, as a model without a decode cache must.

Token ids are int32 arrays of shape [batch, length]. Models shift their input
right by one in train and eval mode. In predict mode they do not, so the
sampler feeds `start_id` (the id that tl.ShiftRight inserts, 0) first.
"""

import time
from typing import Callable, List, Optional, Tuple

from absl import logging
import jax
from jax import numpy as jnp
import numpy as np
from trax import shapes

from favor_trax.layers import favor

# tl.ShiftRight pads with zeros, so a trained model predicts the first token
# of a window from id 0.
START_ID = 0


def _same_structure(first, second) -> bool:
  """Return whether two pytrees have the same structure and leaf shapes."""
  first_leaves, first_tree = jax.tree_util.tree_flatten(first)
  second_leaves, second_tree = jax.tree_util.tree_flatten(second)
  if first_tree != second_tree:
    return False
  return all(np.shape(a) == np.shape(b)
             for a, b in zip(first_leaves, second_leaves))


def transfer_state(predict_layer, trained_state, predict_state):
  """Return the predict-mode state of a layer tree with the trained parts.

  FAVOR layers keep their trained projection, redraw key and step, and start
  decoding from empty prefix sums. Other layers take the trained state where
  it has the predict state's structure (learned statistics, for example) and
  otherwise keep their fresh predict state (position counters, caches).

  Args:
    predict_layer: A layer built in predict mode.
    trained_state: The state of the same layer tree in train or eval mode.
    predict_state: `predict_layer.state` after init.

  Returns:
    A state tree for `predict_layer`.
  """
  if isinstance(predict_layer, favor.FavorAttention):
    return tuple(trained_state[:3]) + tuple(predict_state[3:])
  if predict_layer.sublayers:
    return tuple(
        transfer_state(sublayer, trained, fresh)
        for sublayer, trained, fresh in zip(predict_layer.sublayers,
                                            trained_state, predict_state))
  if _same_structure(trained_state, predict_state):
    return trained_state
  return predict_state


def predict_model(model_fn: Callable, weights, state, batch_size: int):
  """Build model_fn(mode='predict') with trained weights and state.

  Args:
    model_fn: Model factory taking `mode`, for example a partial of
      `favor_trax.models.performer_lm.PerformerLM`.
    weights: Weights of the trained model (train or eval mode).
    state: State of the trained model.
    batch_size: Number of sequences decoded together.

  Returns:
    The initialized predict-mode model. Its `state` is ready to decode from
    position 0.
  """
  model = model_fn(mode='predict')
  model.init(shapes.ShapeDtype((batch_size, 1), jnp.int32))
  model.weights = weights
  model.state = transfer_state(model, state, model.state)
  return model


def _check_ids(name: str, ids, vocab_size: int) -> np.ndarray:
  ids = np.asarray(ids)
  if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f'{name} must be an integer array of shape [batch, '
                     f'length], got dtype {ids.dtype} and shape {ids.shape}.')
  if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
    raise ValueError(f'{name} must hold ids in [0, {vocab_size}), found '
                     f'values from {ids.min()} to {ids.max()}.')
  return ids.astype(np.int32)


def choose_tokens(log_probs, rng, temperature: float, top_k: int):
  """Draw one id per row of log_probs [batch, vocab_size].

  Temperature 0 picks the argmax. Otherwise ids are drawn from
  softmax(log_probs / temperature), restricted to the top_k most likely ids
  when top_k > 0.
  """
  log_probs = log_probs.astype(jnp.float32)
  if temperature == 0:
    return jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
  logits = log_probs / temperature
  if top_k:
    kth_largest = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


class Sampler:
  """Draws continuations of prompts from a predict-mode model.

  The model's state at construction is the empty decode state. Every call to
  `sample` starts from it, so calls are independent.
  """

  def __init__(self, model, vocab_size: int, max_len: Optional[int] = None,
               start_id: int = START_ID):
    """Wrap a predict-mode model.

    Args:
      model: Predict-mode model (see `predict_model`) mapping ids
        [batch, length] to log-probabilities [batch, length, vocab_size].
      vocab_size: Number of ids the model scores.
      max_len: Maximum number of positions the model can decode, counting
        the start id; None for no limit. A sinusoidal or learned positional
        encoding of max_len positions sets it.
      start_id: Id fed before the prompt.
    """
    self._model = model
    self._weights = model.weights
    self._initial_state = model.state
    self._vocab_size = vocab_size
    self._max_len = max_len
    self._start_id = start_id
    self._forward = jax.jit(model.pure_fn)
    self._choose = jax.jit(choose_tokens, static_argnums=(2, 3))
    # Seconds per generated token, after the prompt, of the last call.
    self.token_seconds: List[float] = []

  def check_length(self, prompt_length: int, n_new_tokens: int) -> None:
    """Raise ValueError when the prompt and new tokens exceed max_len."""
    if n_new_tokens < 1:
      raise ValueError(f'n_new_tokens must be at least 1, got {n_new_tokens}.')
    n_positions = 1 + prompt_length + n_new_tokens - 1
    if self._max_len is not None and n_positions > self._max_len:
      raise ValueError(
          f'A prompt of {prompt_length} tokens followed by {n_new_tokens} new '
          f'tokens needs {n_positions} positions, but the model covers '
          f'max_len = {self._max_len}. Shorten the prompt or ask for fewer '
          'tokens.')

  def sample(self, prompt, n_new_tokens: int, temperature: float = 1.0,
             top_k: int = 0, seed: int = 0) -> np.ndarray:
    """Return n_new_tokens ids drawn after each prompt row.

    Args:
      prompt: int ids [batch, prompt_length]; prompt_length may be 0.
      n_new_tokens: Number of ids to draw per row.
      temperature: Softmax temperature; 0 decodes greedily.
      top_k: Draw only among the k most likely ids; 0 keeps all.
      seed: Seed of the draws.

    Returns:
      int32 array [batch, n_new_tokens].
    """
    prompt = _check_ids('prompt', prompt, self._vocab_size)
    if temperature < 0:
      raise ValueError(f'temperature must be >= 0, got {temperature}.')
    if top_k < 0 or top_k > self._vocab_size:
      raise ValueError(f'top_k must be in [0, {self._vocab_size}], got '
                       f'{top_k}.')
    self.check_length(prompt.shape[1], n_new_tokens)

    batch = prompt.shape[0]
    start = np.full((batch, 1), self._start_id, np.int32)
    inputs = np.concatenate([start, prompt], axis=1)
    state = self._initial_state
    rng = jax.random.PRNGKey(seed)
    new_tokens = []
    self.token_seconds = []
    for _ in range(n_new_tokens):
      tic = time.perf_counter()
      rng, forward_rng, choice_rng = jax.random.split(rng, 3)
      log_probs, state = self._forward(inputs, self._weights, state,
                                       forward_rng)
      tokens = self._choose(log_probs[:, -1], choice_rng, float(temperature),
                            int(top_k))
      inputs = np.asarray(tokens)[:, None]
      new_tokens.append(inputs)
      self.token_seconds.append(time.perf_counter() - tic)
    return np.concatenate(new_tokens, axis=1)

  def generate_fn(self, temperature: float = 1.0, top_k: int = 0,
                  seed: int = 0) -> Callable[[np.ndarray, int], np.ndarray]:
    """Return generate(prompt_ids, n_new_tokens) with these sampling options."""
    def generate(prompt_ids, n_new_tokens):
      return self.sample(prompt_ids, n_new_tokens, temperature=temperature,
                         top_k=top_k, seed=seed)
    return generate


def full_pass_greedy(model, weights, state, prompt, n_new_tokens: int,
                     length_multiple: int = 64
                     ) -> Tuple[np.ndarray, List[float]]:
  """Decode greedily by rerunning the full causal pass on the prefix.

  Args:
    model: Eval-mode model mapping ids [batch, length] to log-probabilities.
      It shifts its inputs right, so row i of its output predicts token i.
    weights: The model's weights.
    state: The model's state.
    prompt: int ids [batch, prompt_length].
    n_new_tokens: Number of ids to decode.
    length_multiple: Each pass runs on the prefix padded to a multiple of
      this many positions, so a new length compiles only every
      length_multiple tokens.

  Returns:
    (ids [batch, n_new_tokens], seconds spent on each new token).
  """
  prompt = np.asarray(prompt, np.int32)
  forward = jax.jit(model.pure_fn)
  rng = jax.random.PRNGKey(0)
  sequence = prompt
  seconds = []
  for _ in range(n_new_tokens):
    tic = time.perf_counter()
    # Position `length` predicts the next token from the prefix. Causal
    # attention hides the padding ids after the prefix from it.
    length = sequence.shape[1]
    padded_length = -(-(length + 1) // length_multiple) * length_multiple
    padded = np.zeros((sequence.shape[0], padded_length), np.int32)
    padded[:, :length] = sequence
    log_probs, _ = forward(padded, weights, state, rng)
    tokens = np.asarray(jnp.argmax(log_probs[:, length], axis=-1), np.int32)
    sequence = np.concatenate([sequence, tokens[:, None]], axis=1)
    seconds.append(time.perf_counter() - tic)
  logging.debug('full-pass greedy decoding took %.3f s', sum(seconds))
  return sequence[:, prompt.shape[1]:], seconds
