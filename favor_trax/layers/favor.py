"""Multi-head FAVOR attention as a Trax layer.

`FavorAttention` is self-attention over [batch, length, d_model] whose softmax
kernel exp(q . k / sqrt(d)) is estimated with random features (FAVOR+,
Choromanski et al., "Rethinking Attention with Performers", ICLR 2021), so time
and memory grow linearly with the length. Generalized attention with ReLU
features is the other choice of kernel. The math is in `favor_trax.ops`.
This module adds the dense projections, the random projection matrix in the
layer state, its redraw policy, output dropout, and the train, eval and
predict modes.
"""


from typing import Callable, NamedTuple

import gin
import jax
import jax.numpy as jnp
from trax.layers import base
from trax.layers import initializers

from favor_trax.ops import features
from favor_trax.ops import linear_attention
from favor_trax.ops import projections


class Kernel(NamedTuple):
  """A feature map and how the layer applies it.

  Attributes:
    feature_fn: function (x, projection) -> `features.Features`, or
      (x, projection, rho) -> `features.Features` when `takes_rho` is set.
    features_per_row: number of features per projection row.
    scales_inputs: whether q and k are scaled by d^-1/4 first, so that a
      softmax-kernel estimate of exp(x . y) becomes exp(q . k / sqrt(d)).
    uses_projection: whether feature_fn reads the random projection. If not,
      the projection in the layer state is an empty [0, d_qk] array, and
      there are d_qk features.
    takes_rho: whether feature_fn takes the FAVOR++ statistic rho.
  """
  feature_fn: Callable[..., features.Features]
  features_per_row: int
  scales_inputs: bool
  uses_projection: bool = True
  takes_rho: bool = False


def _relu_features_without_projection(x, projection):
  """Return ReLU(x) + epsilon features, ignoring the empty projection."""
  del projection
  return features.relu_features(x)


KERNELS = {
    'positive_softmax': Kernel(features.positive_softmax_features, 1, True),
    'hyperbolic_softmax': Kernel(features.hyperbolic_softmax_features, 2,
                                 True),
    'trigonometric_softmax': Kernel(
        features.trigonometric_softmax_features, 2, True),
    'favor_plus_plus': Kernel(features.favor_plus_plus_features, 1, True,
                              takes_rho=True),
    'relu': Kernel(features.relu_features, 1, False),
    'relu_no_projection': Kernel(_relu_features_without_projection, 1, False,
                                 uses_projection=False),
}
MODES = ('train', 'eval', 'predict')
PROJECTIONS = ('orthogonal', 'iid')


def _validate_favor_plus_plus_rho(rho, kernel, causal):
  if rho is None:
    if kernel == 'favor_plus_plus' and causal:
      raise ValueError(
          "kernel='favor_plus_plus' with causal=True needs a fixed "
          'favor_plus_plus_rho >= 0: a rho computed from the whole sequence '
          'would let each output depend on later positions.')
    return
  if kernel != 'favor_plus_plus':
    raise ValueError(
        f"favor_plus_plus_rho applies only to kernel='favor_plus_plus', got "
        f'favor_plus_plus_rho={rho!r} with kernel={kernel!r}.')
  if isinstance(rho, bool) or not isinstance(rho, (int, float)) or rho < 0:
    raise ValueError(
        f'favor_plus_plus_rho must be a float >= 0 or None, got {rho!r}.')


def _raw_key(rng):
  """Return `rng` as raw uint32 key data, which pickles with the layer state."""
  if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(rng)
  return rng


@gin.configurable(module='favor_trax')
class FavorAttention(base.Layer):
  """Multi-head self-attention with FAVOR random-feature kernels.

  Input x of shape [batch, length, d_model] goes through dense projections to
  q, k of shape [batch, length, n_heads, d_qk] and v of shape
  [batch, length, n_heads, d_v]. Random features of q and k give linear
  attention per head, and a dense projection maps the heads back to
  [batch, length, d_model].

  Weights: ((w_q, b_q), (w_k, b_k), (w_v, b_v), (w_o, b_o)), where w_q has
  shape [d_model, n_heads * d_qk] and w_o has shape [n_heads * d_v, d_model].

  State: (projection, redraw_key, step). `projection` is the random matrix of
  shape [n_random_features, d_qk] shared by all heads, so checkpoints save it
  ([0, d_qk] for 'relu_no_projection'). Projection number i is drawn from the
  key fold_in(redraw_key, i). At init it is number 0. In train mode, forward
  call number s (from 0) uses number floor(s / redraw_every) and stores it,
  so a redraw happens at every call where s is a positive multiple of
  redraw_every. `step` counts
  train-mode calls. Eval and predict never redraw and never change `step`.
  Predict mode appends the decoding sums (kv_sum, k_sum, max_log_scale) of
  `favor_trax.ops.linear_attention.CausalState`, and each call continues the
  sequence from them, whatever its number of positions.

  NOTE: a predict-mode layer draws its own projection at init. To decode with
  a trained model, copy the projection from the trained state along with the
  weights.
  """

  def __init__(self, d_model, n_heads=1, d_qk=None, d_v=None,
               n_random_features=256, causal=False,
               chunk_size=linear_attention.DEFAULT_CHUNK_SIZE,
               redraw_every=0, kernel='positive_softmax', dropout=0.0,
               projection='orthogonal', scaling='chi',
               favor_plus_plus_rho=None, mode='train'):
    """Create a FAVOR attention layer.

    Args:
      d_model: input and output depth.
      n_heads: number of attention heads.
      d_qk: query and key depth per head, or None for d_model // n_heads.
      d_v: value depth per head, or None for d_model // n_heads.
      n_random_features: number of projection rows m. 'hyperbolic_softmax'
        and 'trigonometric_softmax' make 2m features from them, and
        'relu_no_projection' ignores m.
      causal: if True, position i attends only to positions j <= i.
      chunk_size: positions per scan step of causal attention.
      redraw_every: in train mode, draw a new projection every this many
        calls, or 0 to keep the initial projection.
      kernel: the feature map, one of `KERNELS`:
        'positive_softmax' and 'hyperbolic_softmax' (FAVOR+),
        'trigonometric_softmax' (random Fourier features, which can be
        negative, so the attention denominator can be near 0),
        'favor_plus_plus' (optimal positive features), 'relu' (generalized
        attention with ReLU(W x) features) and 'relu_no_projection'
        (ReLU(x) features, no random projection).
      dropout: dropout rate in train mode on the attention output of every
        head, before the output projection. FAVOR forms no attention matrix,
        so no attention weights are dropped. Eval and predict modes apply no
        dropout.
      projection: 'orthogonal' (block-orthogonal rows) or 'iid' (independent
        Gaussian rows), see `favor_trax.ops.projections`.
      scaling: row lengths of an orthogonal projection: 'chi' (the lengths of
        Gaussian rows, which keeps softmax estimates unbiased) or 'fixed'
        (sqrt(d_qk)). An iid projection needs 'chi'.
      favor_plus_plus_rho: for kernel 'favor_plus_plus', a fixed statistic
        rho >= 0 (see `favor_trax.ops.features.favor_plus_plus_coefficient`),
        or None to compute rho from the queries and keys of each example and
        head. Causal attention needs a fixed rho, because a rho computed
        from the whole sequence would let each output depend on later
        positions.
      mode: 'train', 'eval' or 'predict'. Predict mode decodes with carried
        sums and needs causal=True.
    """
    super().__init__(n_in=1, n_out=1)
    for name, value in (('d_model', d_model), ('n_heads', n_heads)):
      if not isinstance(value, int) or value < 1:
        raise ValueError(f'{name} must be a positive int, got {value!r}.')
    d_qk = d_model // n_heads if d_qk is None else d_qk
    d_v = d_model // n_heads if d_v is None else d_v
    for name, value in (('d_qk', d_qk), ('d_v', d_v),
                        ('n_random_features', n_random_features),
                        ('chunk_size', chunk_size)):
      if not isinstance(value, int) or value < 1:
        raise ValueError(f'{name} must be a positive int, got {value!r}.')
    if not isinstance(redraw_every, int) or redraw_every < 0:
      raise ValueError(
          f'redraw_every must be an int >= 0 (0 never redraws), got '
          f'{redraw_every!r}.')
    if kernel not in KERNELS:
      raise ValueError(
          f'kernel must be one of {sorted(KERNELS)}, got {kernel!r}.')
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f'dropout must be in [0, 1), got {dropout!r}.')
    if mode not in MODES:
      raise ValueError(f'mode must be one of {MODES}, got {mode!r}.')
    if mode == 'predict' and not causal:
      raise ValueError(
          'mode "predict" decodes one position after another and needs '
          'causal=True, got causal=False.')
    if projection not in PROJECTIONS:
      raise ValueError(
          f'projection must be one of {PROJECTIONS}, got {projection!r}.')
    if scaling not in projections.SCALINGS:
      raise ValueError(
          f'scaling must be one of {projections.SCALINGS}, got {scaling!r}.')
    if projection == 'iid' and scaling != 'chi':
      raise ValueError(
          f"projection='iid' draws Gaussian row lengths and needs "
          f"scaling='chi', got scaling={scaling!r}.")
    _validate_favor_plus_plus_rho(favor_plus_plus_rho, kernel, causal)

    self._d_model = d_model
    self._n_heads = n_heads
    self._d_qk = d_qk
    self._d_v = d_v
    self._n_random_features = n_random_features
    self._causal = causal
    self._chunk_size = chunk_size
    self._redraw_every = redraw_every
    self._kernel = kernel
    self._dropout = dropout
    self._projection = projection
    self._scaling = scaling
    self._favor_plus_plus_rho = favor_plus_plus_rho
    self._mode = mode

  @property
  def n_features(self):
    """Number of features per query or key, the m of the attention sums."""
    kernel = KERNELS[self._kernel]
    if not kernel.uses_projection:
      return self._d_qk
    return kernel.features_per_row * self._n_random_features

  def draw_projection(self, redraw_key, index):
    """Return projection number `index`, of shape [n_random_features, d_qk].

    A kernel without projection gets an empty array of shape [0, d_qk].
    """
    key = jax.random.fold_in(redraw_key, index)
    if not KERNELS[self._kernel].uses_projection:
      return jnp.zeros((0, self._d_qk), jnp.float32)
    if self._projection == 'iid':
      return projections.iid_gaussian_matrix(key, self._n_random_features,
                                             self._d_qk)
    return projections.orthogonal_gaussian_matrix(
        key, self._n_random_features, self._d_qk, scaling=self._scaling)

  def init_weights_and_state(self, input_signature):
    """Initialize the dense weights (Glorot uniform, zero biases) and state."""
    shape = input_signature.shape
    if len(shape) != 3 or shape[-1] != self._d_model:
      raise ValueError(
          f'input must have shape [batch, length, d_model={self._d_model}], '
          f'got shape {shape}.')
    q_key, k_key, v_key, out_key, redraw_key = jax.random.split(self.rng, 5)
    redraw_key = _raw_key(redraw_key)
    initializer = initializers.GlorotUniformInitializer()

    def dense(key, n_in, n_out):
      return (initializer((n_in, n_out), key), jnp.zeros((n_out,), jnp.float32))

    self.weights = (
        dense(q_key, self._d_model, self._n_heads * self._d_qk),
        dense(k_key, self._d_model, self._n_heads * self._d_qk),
        dense(v_key, self._d_model, self._n_heads * self._d_v),
        dense(out_key, self._n_heads * self._d_v, self._d_model),
    )

    state = (self.draw_projection(redraw_key, 0), redraw_key,
             jnp.zeros((), jnp.int32))
    if self._mode == 'predict':
      decode_state = linear_attention.init_causal_state(
          shape[0], self._n_heads, self.n_features, self._d_v)
      state += (tuple(decode_state),)
    self.state = state

  def forward(self, x):
    """Apply attention to x of shape [batch, length, d_model].

    Returns:
      Array of shape [batch, length, d_model].
    """
    if x.ndim != 3 or x.shape[-1] != self._d_model:
      raise ValueError(
          f'input must have shape [batch, length, d_model={self._d_model}], '
          f'got shape {x.shape}.')
    projection, redraw_key, step = self.state[:3]
    if self._mode == 'train':
      projection = self._projection_for_step(projection, redraw_key, step)
      step = step + 1

    if self._mode == 'predict':
      out, decode_state = self._decode(x, projection, self.state[3])
      self.state = (projection, redraw_key, step, decode_state)
      return out
    self.state = (projection, redraw_key, step)
    if self._causal:
      _, out = self._causal_chunks(x, projection, None)
      return out
    attended = self._attend_bidirectional(*self._project_inputs(x),
                                          projection)
    if self._mode == 'train' and self._dropout > 0:
      attended = self._drop(attended, self.rng)
    return self._project_output(attended)

  def _project_output(self, attended):
    """Map [batch, length, heads, d_v] to [batch, length, d_model]."""
    batch, length = attended.shape[:2]
    attended = attended.reshape(batch, length, self._n_heads * self._d_v)
    w_out, b_out = self.weights[3]
    return jnp.dot(attended, w_out) + b_out

  def _drop(self, attended, rng):
    """Apply inverted dropout: zero or scale by 1/(1-p)."""
    keep_rate = 1.0 - self._dropout
    keep = jax.random.bernoulli(rng, keep_rate, attended.shape)
    return jnp.where(keep, attended / keep_rate, 0).astype(attended.dtype)

  def _projection_for_step(self, projection, redraw_key, step):
    """Return the projection of train call `step`, redrawing on multiples."""
    if not self._redraw_every:
      return projection

    def redraw():
      index = step // self._redraw_every
      return self.draw_projection(redraw_key, index).astype(projection.dtype)

    is_redraw_step = (step > 0) & (step % self._redraw_every == 0)
    return jax.lax.cond(is_redraw_step, redraw, lambda: projection)

  def _project_inputs(self, x):
    """Return q, k [batch, length, heads, d_qk] and v [..., heads, d_v]."""
    batch, length = x.shape[:2]
    heads = []
    for (w, b), depth in zip(self.weights[:3],
                             (self._d_qk, self._d_qk, self._d_v)):
      y = jnp.dot(x, w) + b
      heads.append(y.reshape(batch, length, self._n_heads, depth))
    return tuple(heads)

  def _scale_inputs(self, q, k):
    """Scale q and k by d^-1/4 for the softmax kernels."""
    if not KERNELS[self._kernel].scales_inputs:
      return q, k
    # phi(x) . phi(y) estimates exp(x . y). With x = q d^-1/4 and
    # y = k d^-1/4 that is exp(q . k / sqrt(d)).
    input_scale = self._d_qk ** -0.25
    return q * input_scale, k * input_scale

  def _feature_fn_and_args(self, projection):
    """Return the layer's feature map and the arguments after x it takes.

    The arguments are the projection, and for FAVOR++ also the fixed rho:
    causal attention maps each position alone, so it never uses a rho
    computed from the sequence.
    """
    kernel = KERNELS[self._kernel]
    if kernel.takes_rho:
      return kernel.feature_fn, (projection, self._favor_plus_plus_rho)
    return kernel.feature_fn, (projection,)

  def _attend_bidirectional(self, q, k, v, projection):
    """Return non-causal attention outputs [batch, length, heads, d_v]."""
    q, k = self._scale_inputs(q, k)
    kernel = KERNELS[self._kernel]
    if kernel.takes_rho:
      # Queries and keys share one rho per example and head, so they share
      # the coefficient A that the unbiased estimate needs.
      rho = self._favor_plus_plus_rho
      if rho is None:
        rho = features.favor_plus_plus_rho(q, k)
      q_features = kernel.feature_fn(q, projection, rho)
      k_features = kernel.feature_fn(k, projection, rho)
    else:
      q_features = kernel.feature_fn(q, projection)
      k_features = kernel.feature_fn(k, projection)
    # Per-query log scales cancel in the normalization, so only the key
    # scales are passed on.
    return linear_attention.bidirectional_linear_attention(
        q_features.values, k_features.values, v,
        key_log_scale=k_features.log_scale)

  def _causal_chunks(self, x, projection, state):
    """Run causal attention chunk by chunk, from x to the output projection.

    Every per-position step (the q, k and v projections, the feature maps,
    dropout and the output projection) runs inside the scan of
    `linear_attention.causal_linear_attention_of_chunks`, and its backward
    pass recomputes them per chunk. Training then stores x, the output and
    one state per chunk, and no [length, heads, m] features or q, k, v.
    Dropout draws chunk i's mask from fold_in(rng, i).

    Args:
      x: inputs of shape [batch, length, d_model].
      projection: the random projection of this call.
      state: `linear_attention.CausalState` to continue from, or None.

    Returns:
      (new `CausalState`, outputs of shape [batch, length, d_model]).
    """
    feature_fn, feature_args = self._feature_fn_and_args(projection)
    drop = self._mode == 'train' and self._dropout > 0
    rng = self.rng if drop else None

    def features_fn(chunk, valid, index):
      del valid, index  # Padding is zeros, so its keys stay finite.
      # Heads first: the scan multiplies per (batch, head) without
      # transposing the [heads, C, m] features.
      q, k, v = (jnp.swapaxes(array, 1, 2)
                 for array in self._project_inputs(chunk))
      q, k = self._scale_inputs(q, k)
      return (feature_fn(q, *feature_args).values,
              feature_fn(k, *feature_args), v)

    def output_fn(attended, index):
      attended = jnp.swapaxes(attended, 1, 2)
      if drop:
        attended = self._drop(attended, jax.random.fold_in(rng, index))
      return self._project_output(attended)

    return linear_attention.causal_linear_attention_of_chunks(
        state, x, features_fn, output_fn, chunk_size=self._chunk_size)

  def _decode(self, x, projection, decode_state):
    """Attend the positions of one call from the carried sums.

    A single position takes the decode step. Several positions, such as a
    prompt or a window of a book scored in streaming evaluation, run through
    the chunked scan from the carried sums, at the cost of a causal pass over
    that many positions.

    Returns:
      (outputs of shape [batch, length, d_model], new decode state).
    """
    state = linear_attention.CausalState(*decode_state)
    if x.shape[1] != 1:
      state, out = self._causal_chunks(x, projection, state)
      return out, tuple(state)

    q, k, v = self._project_inputs(x)
    q, k = self._scale_inputs(q, k)
    feature_fn, feature_args = self._feature_fn_and_args(projection)
    q_features = feature_fn(q[:, 0], *feature_args)
    k_features = feature_fn(k[:, 0], *feature_args)
    state, attended = linear_attention.causal_linear_attention_step(
        state, q_features.values, k_features.values, v[:, 0],
        key_log_scale=k_features.log_scale)
    return self._project_output(attended[:, None]), tuple(state)
