"""Error of random-feature attention against exact softmax attention, vs m.

Question: how close is the output of FAVOR attention to the output of exact
softmax attention, for each softmax-kernel feature map of
`favor_trax.ops.features`, with iid and with orthogonal projections, as the
number of features m grows?

For every seed and input scale s, q, k and v of shape [1, L, 1, d] are drawn
with iid N(0, s^2) entries. With x = q d^-1/4 and y = k d^-1/4, one product of
positive features has second moment exp(|x + y|^2) times its squared mean
exp(x . y)^2. For independent q and k, |x + y|^2 is about 2 s^2 sqrt(d), so
the default runs two scales: s = 0.5 (e^4 for d = 64) and s = 1 (e^16).

The reference is `exact.softmax_attention` in float64. The estimate runs as
the layers run it, in float32 unless --estimate-dtype sets float64:
features of x and y, then `linear_attention.bidirectional_linear_attention`
(or the causal one with --causal). The error of one seed is the relative
Frobenius error |out - reference| / |reference| over all positions, so 1 is
the error of an output of zeros. The CSV also contains the mean squared
error. m counts features per position, the size of the attention sums, so
kernels that make two features per projection row (hyperbolic,
trigonometric) get m / 2 rows. The same seed gives the same inputs to every
kernel.

    python benchmarks/approximation.py
    python benchmarks/approximation.py --from-csv FILE   # figure + table
"""

import argparse
import pathlib
import statistics
import sys
from typing import Callable, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp

REPOSITORY_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPOSITORY_ROOT) not in sys.path:
  sys.path.insert(0, str(REPOSITORY_ROOT))

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import csv_records
from favor_trax.ops import exact
from favor_trax.ops import features
from favor_trax.ops import linear_attention
from favor_trax.ops import projections
# pylint: enable=g-import-not-at-top,wrong-import-position

DEFAULT_FEATURE_COUNTS = tuple(16 * 2**i for i in range(7))  # 16 to 1,024.
DEFAULT_CSV = REPOSITORY_ROOT / 'benchmarks' / 'results' / 'approximation.csv'
DEFAULT_FIGURE = REPOSITORY_ROOT / 'docs' / 'figures' / 'approximation.png'
PROJECTIONS = ('iid', 'orthogonal')
# Trigonometric features can give errors of 1e4 and more, which would squash
# every other line, so the figure cuts the error axis here. The tables keep
# all values.
ERROR_AXIS_MAX = 10.0
FIELDS = ('kernel', 'projection', 'n_features', 'projection_rows', 'length',
          'depth', 'input_std', 'estimate_dtype', 'causal', 'n_seeds', 'error_mean',
          'error_std', 'error_min', 'error_max', 'mse_mean')


class SoftmaxKernel(NamedTuple):
  """A feature map that estimates exp(x . y).

  Attributes:
    feature_fn: function (x, y, projection) -> (Features of x, Features of y)
      for queries x and keys y, already scaled by d^-1/4.
    features_per_row: features per projection row.
  """
  feature_fn: Callable[..., tuple[features.Features, features.Features]]
  features_per_row: int


def _apply_separately(feature_fn):
  """Apply a feature map that needs nothing shared to x and y separately."""
  return lambda x, y, projection: (feature_fn(x, projection),
                                   feature_fn(y, projection))


def _favor_plus_plus(x, y, projection):
  # Queries and keys must share rho, which depends on both.
  rho = features.favor_plus_plus_rho(x, y)
  return (features.favor_plus_plus_features(x, projection, rho),
          features.favor_plus_plus_features(y, projection, rho))


# ReLU features estimate no softmax kernel, so they have no error to measure
# here.
KERNELS = {
    'positive': SoftmaxKernel(
        _apply_separately(features.positive_softmax_features), 1),
    'hyperbolic': SoftmaxKernel(
        _apply_separately(features.hyperbolic_softmax_features), 2),
    'trigonometric': SoftmaxKernel(
        _apply_separately(features.trigonometric_softmax_features), 2),
    'favor_plus_plus': SoftmaxKernel(_favor_plus_plus, 1),
}


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--kernels', nargs='+', default=list(KERNELS),
                      choices=list(KERNELS), help='feature maps to measure')

  parser.add_argument('--projections', nargs='+', default=list(PROJECTIONS),
                      choices=PROJECTIONS, help='random projections')
  parser.add_argument('--feature-counts', nargs='+', type=int,
                      default=list(DEFAULT_FEATURE_COUNTS),
                      help='numbers of features m per position')

  parser.add_argument('--length', type=int, default=1024,
                      help='sequence length L')
  parser.add_argument('--depth', type=int, default=64,
                      help='query and key depth d')
  parser.add_argument(
      '--input-stds', nargs='+', type=float, default=[0.5, 1.0],
      help='standard deviations of the entries of q, k and v; each makes '
           'one panel of the figure')
  parser.add_argument('--seeds', type=int, default=10,
                      help='number of seeds to average over')
  parser.add_argument(
      '--estimate-dtype', choices=('float32', 'float64'), default='float32',
      help='dtype of the estimate: float32 as the layers run it, or float64 '
           'to separate estimator variance from float32 rounding')
  parser.add_argument('--causal', action='store_true',
                      help='measure causal attention instead of bidirectional')

  parser.add_argument('--csv', type=pathlib.Path, default=DEFAULT_CSV,
                      help='output CSV path')
  parser.add_argument('--figure', type=pathlib.Path, default=DEFAULT_FIGURE,
                      help='output PNG path')
  parser.add_argument(
      '--from-csv', type=pathlib.Path,
      help='run nothing: redraw the figure and print the table of this CSV')

  args = parser.parse_args(argv)
  for name in ('length', 'depth', 'seeds'):
    if getattr(args, name) < 1:
      parser.error(f'--{name} must be >= 1, got {getattr(args, name)}.')
  for kernel in args.kernels:
    rows_per_feature = KERNELS[kernel].features_per_row
    for count in args.feature_counts:
      if count < rows_per_feature or count % rows_per_feature:
        parser.error(
            f'--feature-counts must be positive multiples of '
            f'{rows_per_feature} for kernel {kernel}, got {count}.')
  return args


def draw_inputs(seed, length, depth, input_std):
  """Draw float32 q, k, v of shape [1, length, 1, depth]."""
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  shape = (1, length, 1, depth)
  return tuple(input_std * jax.random.normal(key, shape, jnp.float32)
               for key in keys)


def draw_projection(kind, key, rows, depth, dtype):
  if kind == 'iid':
    return projections.iid_gaussian_matrix(key, rows, depth, dtype=dtype)
  return projections.orthogonal_gaussian_matrix(key, rows, depth, dtype=dtype)


def make_error_fn(kernel, causal):
  """Return a jitted (q, k, v, projection, reference) -> errors.

  The errors are (relative Frobenius error, mean squared error) of the
  estimated attention output against `reference`.
  """

  def error_fn(q, k, v, projection, reference):
    # phi(x) . phi(y) estimates exp(x . y), so x = q d^-1/4 and y = k d^-1/4
    # give exp(q . k / sqrt(d)).
    input_scale = q.shape[-1]**-0.25
    q_features, k_features = kernel.feature_fn(
        q * input_scale, k * input_scale, projection)
    if causal:
      out = linear_attention.causal_linear_attention(
          q_features.values, k_features.values, v,
          key_log_scale=k_features.log_scale)
    else:
      out = linear_attention.bidirectional_linear_attention(
          q_features.values, k_features.values, v,
          key_log_scale=k_features.log_scale)
    difference = out.astype(jnp.float64) - reference
    relative_error = jnp.linalg.norm(difference) / jnp.linalg.norm(reference)
    return relative_error, jnp.mean(difference**2)

  return jax.jit(error_fn)


def measure(args):
  """Return one record per (kernel, projection, m), averaged over seeds."""
  records = []
  for input_std in args.input_stds:
    records.extend(_measure_input_scale(args, input_std))
  return records


def _measure_input_scale(args, input_std):
  dtype = jnp.dtype(args.estimate_dtype)
  inputs = []
  for seed in range(args.seeds):
    q, k, v = draw_inputs(seed, args.length, args.depth, input_std)
    reference = exact.softmax_attention(
        *(x.astype(jnp.float64) for x in (q, k, v)), causal=args.causal)
    inputs.append(tuple(x.astype(dtype) for x in (q, k, v)) + (reference,))

  records = []
  for kernel_name in args.kernels:
    kernel = KERNELS[kernel_name]
    error_fn = make_error_fn(kernel, args.causal)
    for kind in args.projections:
      for count in sorted(args.feature_counts):
        rows = count // kernel.features_per_row
        errors = []
        squared_errors = []
        for seed, (q, k, v, reference) in enumerate(inputs):
          # The key depends only on the seed and the number of rows, so
          # kernels with the same number of rows share the projection.
          key = jax.random.fold_in(jax.random.PRNGKey(10_000 + seed), rows)
          projection = draw_projection(kind, key, rows, args.depth, dtype)
          relative_error, squared_error = error_fn(q, k, v, projection,
                                                   reference)
          errors.append(float(relative_error))
          squared_errors.append(float(squared_error))
        record = dict(
            kernel=kernel_name, projection=kind, n_features=count,
            projection_rows=rows, length=args.length, depth=args.depth,
            input_std=input_std, estimate_dtype=args.estimate_dtype,
            causal=args.causal,
            n_seeds=len(errors), error_mean=statistics.fmean(errors),
            error_std=statistics.stdev(errors) if len(errors) > 1 else 0.0,
            error_min=min(errors), error_max=max(errors),
            mse_mean=statistics.fmean(squared_errors))
        records.append(record)
        logging.info('input std %g, %s %s m=%d: mean relative error %.4g',
                     input_std, kernel_name, kind, count,
                     record['error_mean'])
  return records


def plot(records, path):
  """Draw mean relative error against m on log-log axes, a panel per scale."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top

  input_stds = sorted({float(record['input_std']) for record in records})
  figure, panels = pyplot.subplots(
      1, len(input_stds), figsize=(5.5 * len(input_stds), 5), squeeze=False)
  kernels = list(dict.fromkeys(record['kernel'] for record in records))
  colors = dict(zip(kernels, pyplot.rcParams['axes.prop_cycle'].by_key()
                    ['color']))
  for axes, input_std in zip(panels[0], input_stds):
    for kernel in kernels:
      for kind, style in (('iid', '--'), ('orthogonal', '-')):
        points = sorted(
            (int(record['n_features']), float(record['error_mean']))
            for record in records
            if record['kernel'] == kernel and record['projection'] == kind and
            float(record['input_std']) == input_std)
        if points:
          axes.plot(*zip(*points), style, marker='o', markersize=3,
                    color=colors[kernel], label=f'{kernel}, {kind}')
    axes.set_xscale('log', base=2)
    axes.set_yscale('log')
    bottom, top = axes.get_ylim()
    if top > ERROR_AXIS_MAX:
      axes.set_ylim(bottom, ERROR_AXIS_MAX)
      axes.text(0.99, 0.99, f'axis cut at {ERROR_AXIS_MAX:g}',
                transform=axes.transAxes, ha='right', va='top', fontsize=7)
    axes.set_xlabel('features per position m')
    axes.set_ylabel('relative error of the attention output')
    axes.set_title(f'q, k, v entries ~ N(0, {input_std:g}^2)', fontsize=9)
    axes.grid(True, which='both', alpha=0.3)
  handles, labels = panels[0][0].get_legend_handles_labels()
  figure.legend(handles, labels, loc='lower center', ncol=4, fontsize=8)
  first = records[0]
  attention = 'causal' if str(first['causal']) == 'True' else 'bidirectional'
  figure.suptitle(
      f'{attention} attention, L = {first["length"]}, d = {first["depth"]}, '
      f'{first["estimate_dtype"]} estimate against float64 exact, mean of '
      f'{first["n_seeds"]} seeds', fontsize=10)
  # The bottom of the figure is left free for the legend.
  figure.tight_layout(rect=(0, 0.12, 1, 1))
  figure.savefig(path, dpi=90)
  pyplot.close(figure)


def summarize(records):
  """Return markdown tables of mean (std) relative error per m and scale."""
  counts = sorted({int(record['n_features']) for record in records})
  input_stds = sorted({float(record['input_std']) for record in records})
  configurations = list(dict.fromkeys(
      (record['kernel'], record['projection']) for record in records))
  by_key = {(float(record['input_std']), record['kernel'],
             record['projection'], int(record['n_features'])): record
            for record in records}
  lines = []
  for input_std in input_stds:
    lines.append(f'q, k, v entries ~ N(0, {input_std:g}^2):')
    lines.append('')
    lines.append('| kernel | projection | ' +
                 ' | '.join(f'm = {count}' for count in counts) + ' |')
    lines.append('|---|---|' + '---|' * len(counts))
    for kernel, kind in configurations:
      cells = []
      for count in counts:
        record = by_key.get((input_std, kernel, kind, count))
        if record is None:
          cells.append('-')
        else:
          cells.append(f'{float(record["error_mean"]):.3g} '
                       f'({float(record["error_std"]):.2g})')
      lines.append(f'| {kernel} | {kind} | ' + ' | '.join(cells) + ' |')
    lines.append('')
  return '\n'.join(lines)


def main(argv=None):
  args = parse_args(argv)
  logging.set_verbosity(logging.INFO)
  if args.from_csv is not None:
    records = csv_records.read_csv(args.from_csv)
  else:
    # The reference runs in float64. The estimates run in the dtype of their
    # inputs and projections, --estimate-dtype.
    jax.config.update('jax_enable_x64', True)
    records = measure(args)
    csv_records.write_csv(records, args.csv, FIELDS)
    logging.info('Wrote %s', args.csv)
  args.figure.parent.mkdir(parents=True, exist_ok=True)
  plot(records, args.figure)
  logging.info('Wrote %s', args.figure)
  print(summarize(records))


if __name__ == '__main__':
  main()
