"""Time and peak memory of causal attention, forward and backward, against L.

Question: how do time and memory of one forward and backward pass of causal
attention grow with the sequence length L, for

* `favor_trax`: this library's causal FAVOR+ as the layer runs it:
  `linear_attention.causal_linear_attention_of_inputs`, the chunked scan
  that maps each chunk of q and k to positive softmax features
  (`features.positive_softmax_features`, per-position stabilizer) and
  recomputes the chunk in the backward pass.
* `trax_scan`: Trax 1.4.1's `CausalFavorAttention`, a scan over single
  positions with a custom VJP, fed the same positive random features. They
  are computed without stabilizer, so that Trax's prefix sums see phi(q) and
  phi(k) themselves. For the N(0, 1) inputs used here (|x|^2 about 8 after
  the d^-1/4 scaling) they stay far from float32 overflow.
* `exact`: exact causal softmax attention (`exact.softmax_attention`), which
  forms the L x L attention matrix.
* `identity`: no attention, so the loss is taken on v directly. It is the
  floor of what the harness itself costs.

Each step computes loss = sum(out^2) and its gradient with respect to q, k and
v, in float32, jitted. Feature maps are part of the timed step for both FAVOR
methods.

Every (method, L) point runs in its own process, so that peak memory is per
point:

    python benchmarks/attention_speed.py                # all points, CSV + PNG
    python benchmarks/attention_speed.py --point favor_trax 4096   # one point
    python benchmarks/attention_speed.py --from-csv FILE   # figure + tables

The driver records a point that exceeds the time limit, or the memory limit,
or that fails, with its status, and it does not run larger L for that method.
"""

import argparse
import functools
import json
import math
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from absl import logging
import jax
import jax.numpy as jnp
import psutil

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

METHODS = ('favor_trax', 'trax_scan', 'exact', 'identity')
DEFAULT_LENGTHS = tuple(1024 * 2**i for i in range(7))  # 1,024 to 65,536.
DEFAULT_CSV = REPOSITORY_ROOT / 'benchmarks' / 'results' / 'attention_speed.csv'
DEFAULT_FIGURE = REPOSITORY_ROOT / 'docs' / 'figures' / 'attention_speed.png'
RESULT_PREFIX = 'RESULT '
MIB = 2**20

FIELDS = (
    'method', 'length', 'batch', 'heads', 'depth', 'n_features', 'chunk_size',
    'status', 'note', 'backend', 'compile_s', 'time_median_s', 'time_min_s',
    'time_max_s', 'cpu_time_median_s', 'n_runs', 'rss_process_peak_mib',
    'rss_run_delta_mib', 'xla_temp_mib', 'xla_buffers_mib', 'device_peak_mib',
    'load_average',
)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument(
      '--point', nargs=2, metavar=('METHOD', 'LENGTH'),
      help='measure one point in this process and print its record as JSON '
           '(the driver runs this in a subprocess per point)')
  parser.add_argument('--methods', nargs='+', default=list(METHODS),
                      choices=METHODS, help='methods to measure')
  parser.add_argument('--lengths', nargs='+', type=int,
                      default=list(DEFAULT_LENGTHS),
                      help='sequence lengths L, run in increasing order')

  parser.add_argument('--batch', type=int, default=1, help='batch size')
  parser.add_argument('--heads', type=int, default=1,
                      help='number of attention heads')
  parser.add_argument('--depth', type=int, default=64,
                      help='query, key and value depth per head, d')
  parser.add_argument('--n-features', type=int, default=256,
                      help='random features m of both FAVOR methods')
  parser.add_argument(
      '--chunk-size', type=int, default=linear_attention.DEFAULT_CHUNK_SIZE,
      help='positions per scan step of favor_trax')

  parser.add_argument('--repeats', type=int, default=5,
                      help='timed runs per point, after one untimed run')
  parser.add_argument(
      '--run-budget', type=float, default=60.0,
      help='seconds of timed runs after which a point stops early, with at '
           'least 3 runs')
  parser.add_argument(
      '--time-limit', type=float, default=300.0,
      help='wall-clock seconds per point, including imports and '
           'compilation. A point that takes longer is killed and recorded '
           'as timed_out')
  parser.add_argument(
      '--memory-limit-gib', type=float,
      default=psutil.virtual_memory().total / 2**30 / 2,
      help='GiB of memory per point (default: half of this machine\'s '
           'memory). A point whose resident memory, or whose XLA-planned '
           'buffers, exceed it is stopped and recorded as out_of_memory. On '
           'an accelerator, set it to the device memory.')

  parser.add_argument('--csv', type=pathlib.Path, default=DEFAULT_CSV,
                      help='output CSV path')
  parser.add_argument('--figure', type=pathlib.Path, default=DEFAULT_FIGURE,
                      help='output PNG path')
  parser.add_argument(
      '--from-csv', type=pathlib.Path,
      help='run nothing: redraw the figure and print the summary tables of '
           'this CSV')

  args = parser.parse_args(argv)
  if args.point is not None:
    method, length = args.point
    if method not in METHODS:
      parser.error(f'METHOD must be one of {METHODS}, got {method!r}.')
    if not length.isdigit() or int(length) < 1:
      parser.error(f'LENGTH must be a positive int, got {length!r}.')
    args.point = (method, int(length))
  if min(args.lengths) < 1:
    parser.error(f'--lengths must be positive, got {args.lengths}.')
  for name in ('batch', 'heads', 'depth', 'n_features', 'chunk_size',
               'repeats'):
    if getattr(args, name) < 1:
      parser.error(f'--{name.replace("_", "-")} must be >= 1, got '
                   f'{getattr(args, name)}.')
  return args


# Attention methods. Each maps q, k, v of shape [batch, length, heads, depth]
# and a projection of shape [n_features, depth] to [batch, length, heads,
# depth].


def favor_causal_attention(q, k, v, projection,
                           chunk_size=linear_attention.DEFAULT_CHUNK_SIZE):
  """Apply causal FAVOR+ attention as `favor_trax.layers.favor` does."""
  # phi(x) . phi(y) estimates exp(x . y), so x = q d^-1/4 and y = k d^-1/4
  # give exp(q . k / sqrt(d)).
  input_scale = q.shape[-1]**-0.25
  _, out = linear_attention.causal_linear_attention_of_inputs(
      None, q * input_scale, k * input_scale, v,
      features.positive_softmax_features, (projection,),
      chunk_size=chunk_size)
  return out


def trax_scan_attention(q, k, v, projection):
  """Run Trax 1.4.1's `CausalFavorAttention` on positive random features.

  The layer maps its inputs through ReLU(x) + numerical_stabilizer and then
  runs prefix sums over single positions. Positive features pass ReLU
  unchanged, so with numerical_stabilizer=0 the layer attends with exactly
  phi(q) and phi(k). The layer has no head axis, so heads are folded into the
  batch axis.
  """
  batch, length, heads, depth = v.shape
  input_scale = q.shape[-1]**-0.25
  q_features = features.positive_softmax_features(
      q * input_scale, projection, stabilizer='none').values
  k_features = features.positive_softmax_features(
      k * input_scale, projection, stabilizer='none').values

  def heads_to_batch(x):
    return jnp.swapaxes(x, 1, 2).reshape(batch * heads, length, x.shape[-1])

  layer = _trax_sparsity().CausalFavorAttention(numerical_stabilizer=0.0)
  out = layer.forward((heads_to_batch(q_features), heads_to_batch(k_features),
                       heads_to_batch(v)))
  return jnp.swapaxes(out.reshape(batch, heads, length, depth), 1, 2)


def _trax_sparsity():
  """Import Trax's sparsity module, which loads TensorFlow."""
  # pylint: disable-next=g-import-not-at-top
  from trax.layers.research import sparsity
  return sparsity


def exact_causal_attention(q, k, v, projection):
  del projection
  return exact.softmax_attention(q, k, v, causal=True)


def identity_attention(q, k, v, projection):
  del q, k, projection
  return v


ATTENTION_FUNCTIONS = {
    'favor_trax': favor_causal_attention,
    'trax_scan': trax_scan_attention,
    'exact': exact_causal_attention,
    'identity': identity_attention,
}


def make_inputs(length, batch, heads, depth, n_features):
  """Draw q, k, v of shape [batch, length, heads, depth] and a projection."""
  q_key, k_key, v_key, projection_key = jax.random.split(
      jax.random.PRNGKey(0), 4)
  shape = (batch, length, heads, depth)
  q, k, v = (jax.random.normal(key, shape)
             for key in (q_key, k_key, v_key))
  projection = projections.orthogonal_gaussian_matrix(
      projection_key, n_features, depth)
  return q, k, v, projection


def make_train_step(attention_fn):
  """Return a jitted function (q, k, v, projection) -> (loss, grads)."""
  def loss_fn(q, k, v, projection):
    return jnp.sum(attention_fn(q, k, v, projection)**2)

  return jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2)))


# Memory of the point process.


def _reset_peak_rss():
  """Reset the kernel's peak-RSS counter to the current RSS (Linux >= 4.0).

  Returns:
    Whether the reset succeeded. Afterwards ru_maxrss reports the peak since
    the reset.
  """
  try:
    with open('/proc/self/clear_refs', 'w') as clear_refs:
      clear_refs.write('5')
    return True
  except OSError:
    return False


def _peak_rss_mib():
  # ru_maxrss is in KiB on Linux.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mib():
  return psutil.Process().memory_info().rss / MIB


def new_record(method, length, args, **fields):
  """Return a record of `FIELDS` with the point's configuration filled in."""
  record = dict.fromkeys(FIELDS, '')
  record.update(method=method, length=length, batch=args.batch,
                heads=args.heads, depth=args.depth,
                n_features=args.n_features, chunk_size=args.chunk_size)
  record.update(fields)
  return record


def measure_point(method, length, args):
  """Compile and time one (method, length) point in this process.

  `rss_process_peak_mib` is the peak resident memory of the whole process
  (imports, inputs, compilation and runs). `rss_run_delta_mib` is the peak
  during the runs minus the resident memory just before them, after
  compilation. `xla_temp_mib` is the scratch memory XLA plans for the
  compiled step, and `xla_buffers_mib` adds its arguments and outputs.
  `device_peak_mib` is the device allocator's peak, on backends that report
  it (GPUs, not the CPU). `cpu_time_median_s` is the CPU time of all threads
  of the process per run, which other processes on the machine slow less
  than the wall-clock time.

  Returns:
    A dict with the keys of `FIELDS`.
  """
  if method == 'trax_scan':
    _trax_sparsity()  # Keeps the import out of the compile time.

  record = new_record(method, length, args, backend=jax.default_backend(),
                      load_average=round(os.getloadavg()[0], 2))

  inputs = make_inputs(length, args.batch, args.heads, args.depth,
                       args.n_features)
  jax.block_until_ready(inputs)
  attention_fn = ATTENTION_FUNCTIONS[method]
  if method == 'favor_trax':
    attention_fn = functools.partial(attention_fn, chunk_size=args.chunk_size)
  step = make_train_step(attention_fn)

  start = time.perf_counter()
  compiled = step.lower(*inputs).compile()
  record['compile_s'] = round(time.perf_counter() - start, 3)

  analysis = compiled.memory_analysis()
  if analysis is not None:
    planned = (analysis.temp_size_in_bytes + analysis.argument_size_in_bytes +
               analysis.output_size_in_bytes)
    record['xla_temp_mib'] = round(analysis.temp_size_in_bytes / MIB, 1)
    record['xla_buffers_mib'] = round(planned / MIB, 1)
    if planned > args.memory_limit_gib * 2**30:
      record['status'] = 'out_of_memory'
      record['note'] = (
          f'XLA plans {planned / 2**30:.1f} GiB of buffers, above the limit '
          f'of {args.memory_limit_gib:.1f} GiB; not run')
      record['rss_process_peak_mib'] = round(_peak_rss_mib(), 1)
      return record

  compile_peak_mib = _peak_rss_mib()
  reset = _reset_peak_rss()
  run_baseline_mib = _current_rss_mib()

  # The first run is untimed: it pays for allocations and caches.
  jax.block_until_ready(compiled(*inputs))
  times = []
  cpu_times = []
  while len(times) < args.repeats:
    start = time.perf_counter()
    cpu_start = time.process_time()
    jax.block_until_ready(compiled(*inputs))
    times.append(time.perf_counter() - start)
    cpu_times.append(time.process_time() - cpu_start)
    if len(times) >= 3 and sum(times) > args.run_budget:
      break

  run_peak_mib = _peak_rss_mib()
  record.update(
      status='ok',
      time_median_s=round(statistics.median(times), 5),
      time_min_s=round(min(times), 5),
      time_max_s=round(max(times), 5),
      cpu_time_median_s=round(statistics.median(cpu_times), 5),
      n_runs=len(times),
      rss_process_peak_mib=round(max(compile_peak_mib, run_peak_mib), 1),
      rss_run_delta_mib=round(run_peak_mib - run_baseline_mib, 1),
  )
  if not reset:
    record['note'] = ('peak RSS counter could not be reset, so the delta may '
                      'include compilation')
  device_stats = jax.devices()[0].memory_stats()
  if device_stats and 'peak_bytes_in_use' in device_stats:
    record['device_peak_mib'] = round(device_stats['peak_bytes_in_use'] / MIB,
                                      1)
  return record


def run_point(method, length, args):
  """Run `measure_point` in this process and print its record."""
  try:
    record = measure_point(method, length, args)
  except Exception as error:  # pylint: disable=broad-except
    # The driver records the failure. XLA reports allocation failures as
    # RESOURCE_EXHAUSTED.
    text = f'{type(error).__name__}: {error}'
    out_of_memory = (isinstance(error, MemoryError) or
                     'RESOURCE_EXHAUSTED' in text)
    record = new_record(
        method, length, args,
        status='out_of_memory' if out_of_memory else 'failed',
        note=text.splitlines()[0][:300])
  print(RESULT_PREFIX + json.dumps(record), flush=True)


# Driver.


def _point_command(method, length, args):
  return [
      sys.executable, str(pathlib.Path(__file__).resolve()),
      '--point', method, str(length),
      '--batch', str(args.batch), '--heads', str(args.heads),
      '--depth', str(args.depth), '--n-features', str(args.n_features),
      '--chunk-size', str(args.chunk_size),
      '--repeats', str(args.repeats), '--run-budget', str(args.run_budget),
      '--memory-limit-gib', str(args.memory_limit_gib),
  ]


def _last_line(path):
  lines = pathlib.Path(path).read_text(errors='replace').strip().splitlines()
  return lines[-1][:300] if lines else ''


def run_point_subprocess(method, length, args):
  """Run one point in a child process under the time and memory limits.

  Returns:
    The child's record, or a record with status timed_out, out_of_memory or
    failed when the child was killed or printed no record.
  """
  record = new_record(method, length, args)
  memory_limit_bytes = args.memory_limit_gib * 2**30
  environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')

  with tempfile.TemporaryDirectory() as log_dir:
    stdout_path = os.path.join(log_dir, 'stdout')
    stderr_path = os.path.join(log_dir, 'stderr')
    with open(stdout_path, 'w') as stdout, open(stderr_path, 'w') as stderr:
      child = subprocess.Popen(_point_command(method, length, args),
                               stdout=stdout, stderr=stderr, env=environment,
                               cwd=REPOSITORY_ROOT)
      monitor = psutil.Process(child.pid)
      start = time.monotonic()
      killed_status = None
      peak_rss = 0
      while child.poll() is None:
        try:
          peak_rss = max(peak_rss, monitor.memory_info().rss)
        except psutil.NoSuchProcess:
          break
        if peak_rss > memory_limit_bytes:
          killed_status = ('out_of_memory',
                           f'resident memory passed the limit of '
                           f'{args.memory_limit_gib:.1f} GiB; killed')
        elif time.monotonic() - start > args.time_limit:
          killed_status = ('timed_out',
                           f'ran longer than the limit of '
                           f'{args.time_limit:g} s; killed')
        if killed_status:
          child.kill()
          child.wait()
          break
        time.sleep(0.1)

    if killed_status:
      record['status'], record['note'] = killed_status
      record['rss_process_peak_mib'] = round(peak_rss / MIB, 1)
      return record

    results = [line for line in pathlib.Path(stdout_path).read_text()
               .splitlines() if line.startswith(RESULT_PREFIX)]
    if results:
      return json.loads(results[-1][len(RESULT_PREFIX):])
    record['status'] = 'failed'
    if child.returncode < 0:
      record['note'] = (f'killed by signal {-child.returncode} (the system '
                        f'may have run out of memory)')
    else:
      record['note'] = (f'exit status {child.returncode}: '
                        f'{_last_line(stderr_path)}')
    return record


def run_driver(args):
  """Run every point, then write the CSV, the figure and a summary."""
  lengths = sorted(set(args.lengths))
  stopped = {}  # method -> (status, length) of its first failed point.
  records = []
  # Lengths are the outer loop, so that all methods at one L run close in
  # time and see similar background load.
  for length in lengths:
    for method in args.methods:
      if method in stopped:
        status, failed_length = stopped[method]
        record = new_record(method, length, args, status='not_run',
                            note=f'{status} at L={failed_length}')
      else:
        record = run_point_subprocess(method, length, args)
        if record['status'] != 'ok':
          stopped[method] = (record['status'], length)
      records.append(record)
      logging.info('%s L=%d: %s, median %s s, run delta %s MiB %s',
                   method, length, record['status'], record['time_median_s'],
                   record['rss_run_delta_mib'], record['note'])

  csv_records.write_csv(records, args.csv, FIELDS)
  logging.info('Wrote %s', args.csv)
  args.figure.parent.mkdir(parents=True, exist_ok=True)
  plot(records, args.figure)
  logging.info('Wrote %s', args.figure)
  print(summarize(records))


def _ok_points(records, method, field):
  """Return sorted (length, value) of the ok points of `method`."""
  points = []
  for record in records:
    if (record['method'] == method and record['status'] == 'ok' and
        record[field] not in ('', None)):
      points.append((int(record['length']), float(record[field])))
  return sorted(points)


def _first_failure(records, method):
  failures = [record for record in records
              if record['method'] == method and
              record['status'] not in ('ok', 'not_run')]
  if not failures:
    return None
  first = min(failures, key=lambda record: int(record['length']))
  return first['status'].replace('_', ' '), int(first['length'])


def log_log_slope(points):
  """Return the least-squares slope of log(value) against log(length)."""
  if len(points) < 2:
    return float('nan')
  xs = [math.log(length) for length, _ in points]
  ys = [math.log(value) for _, value in points]
  x_mean = sum(xs) / len(xs)
  y_mean = sum(ys) / len(ys)
  covariance = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys))
  variance = sum((x - x_mean)**2 for x in xs)
  return covariance / variance


def plot(records, path):
  """Draw time and run memory against L on log-log axes, one line a method.

  A dotted grey line proportional to L through the last point of the first
  method shows the slope of linear growth.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top

  figure, (time_axes, memory_axes) = pyplot.subplots(1, 2, figsize=(10, 4))
  methods = list(dict.fromkeys(record['method'] for record in records))
  # A log axis cannot show 0, and a memory delta below 1 MiB is noise.
  panels = ((time_axes, 'time_median_s', 'forward + backward time (s)', 0),
            (memory_axes, 'rss_run_delta_mib',
             'peak resident memory of the runs (MiB)', 1))
  for axes, field, label, minimum in panels:
    for method in methods:
      points = [(length, value) for length, value
                in _ok_points(records, method, field) if value >= minimum and
                value > 0]
      failure = _first_failure(records, method)
      name = method if failure is None else (
          f'{method} ({failure[0]} at L={failure[1]:,})')
      if points:
        axes.plot(*zip(*points), marker='o', label=name)
    guide_points = _ok_points(records, methods[0], field)
    if guide_points:
      last_length, last_value = guide_points[-1]
      lengths = [length for length, _ in guide_points]
      axes.plot(lengths, [last_value * length / last_length
                          for length in lengths],
                ':', color='grey', label='proportional to L')
    axes.set_xscale('log', base=2)
    axes.set_yscale('log')
    axes.set_xlabel('sequence length L')
    axes.set_ylabel(label)
    axes.grid(True, which='both', alpha=0.3)
    axes.legend(fontsize=7)
  first = records[0]
  figure.suptitle(
      f'Causal attention, forward and backward, batch {first["batch"]}, '
      f'{first["heads"]} head(s), d = {first["depth"]}, '
      f'm = {first["n_features"]}, float32', fontsize=10)
  figure.tight_layout()
  figure.savefig(path, dpi=90)
  pyplot.close(figure)


def _format_number(value):
  """Format with 3 significant digits, or as an integer from 100 up."""
  if value is None or math.isnan(value):
    return '-'
  if abs(value) >= 100:
    return f'{value:,.0f}'
  return f'{value:.3g}'


def _format_slope(value):
  return '-' if math.isnan(value) else f'{value:.2f}'


def summarize(records, numerator='favor_trax', denominator='trax_scan',
              slope_min_length=8192):
  """Return markdown tables: per-L numbers, ratios and log-log slopes.

  Ratio columns divide `numerator` by `denominator` at the same L. Slopes are
  least-squares fits of log value against log L over the ok points.
  """
  lengths = sorted({int(record['length']) for record in records})
  methods = list(dict.fromkeys(record['method'] for record in records))
  by_key = {(record['method'], int(record['length'])): record
            for record in records}
  has_ratio = numerator in methods and denominator in methods

  def cell(method, length, field):
    record = by_key.get((method, length))
    if record is None:
      return '-'
    if record['status'] != 'ok':
      return record['status'].replace('_', ' ')
    return _format_number(float(record[field]))

  def ratio(length, field):
    top = by_key.get((numerator, length))
    bottom = by_key.get((denominator, length))
    if top is None or bottom is None:
      return '-'
    if top['status'] != 'ok' or bottom['status'] != 'ok':
      return '-'
    if top[field] in ('', None) or bottom[field] in ('', None):
      return '-'
    if float(bottom[field]) <= 0:
      return '-'
    return f'{float(top[field]) / float(bottom[field]):.2f}'

  tables = (
      ('time_median_s', 'median time (s)',
       (('time_median_s', 'median'), ('time_min_s', 'min'),
        ('cpu_time_median_s', 'CPU time'))),
      ('rss_run_delta_mib', 'run peak RSS delta (MiB)',
       (('rss_run_delta_mib', 'RSS delta'),)),
      ('xla_temp_mib', 'XLA temp buffers (MiB)',
       (('xla_temp_mib', 'XLA temp'),)),
  )
  lines = []
  for field, title, ratio_fields in tables:
    header = ['L'] + [f'{method} {title}' for method in methods]
    if has_ratio:
      header += [f'{numerator} / {denominator}, {ratio_label}'
                 for _, ratio_label in ratio_fields]
    lines.append('| ' + ' | '.join(header) + ' |')
    lines.append('|' + '---|' * len(header))
    for length in lengths:
      row = [f'{length:,}'] + [cell(method, length, field)
                               for method in methods]
      if has_ratio:
        row += [ratio(length, ratio_field) for ratio_field, _ in ratio_fields]
      lines.append('| ' + ' | '.join(row) + ' |')
    lines.append('')

  lines.append(f'| method | time slope, all L | time slope, '
               f'L >= {slope_min_length:,} | RSS delta slope, '
               f'L >= {slope_min_length:,} | XLA temp slope, '
               f'L >= {slope_min_length:,} |')
  lines.append('|---|---|---|---|---|')
  for method in methods:
    cells = []
    for field, min_length in (('time_median_s', 0),
                              ('time_median_s', slope_min_length),
                              ('rss_run_delta_mib', slope_min_length),
                              ('xla_temp_mib', slope_min_length)):
      points = [(length, value) for length, value
                in _ok_points(records, method, field)
                if length >= min_length and value > 0]
      cells.append(_format_slope(log_log_slope(points)))
    lines.append(f'| {method} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main(argv=None):
  args = parse_args(argv)
  if args.point is not None:
    run_point(*args.point, args)
    return
  logging.set_verbosity(logging.INFO)
  if args.from_csv is not None:
    records = csv_records.read_csv(args.from_csv)
    plot(records, args.figure)
    print(summarize(records))
    return
  run_driver(args)


if __name__ == '__main__':
  main()
