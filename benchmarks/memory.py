"""Peak memory and step time of PerformerLM training against depth and length.

Questions:
  depth:  with reversible blocks and Trax's memory-efficient trainer, does
          peak memory stay flat as layers are added? Compared with the same
          model as a standard (non-reversible) residual network trained by
          plain backpropagation. One training step at L = 8,192,
          d_model 256, n_layers 2, 4, 8, 12.
  length: how do peak memory and step time grow with L for FAVOR+ softmax
          attention, exact softmax attention and no attention, in a 6-layer
          d_model 512 reversible model (memory-efficient trainer)? L doubles
          from 2,048 until a point exceeds the memory limit (20 GiB) or the
          time limit, or reaches --max_length.

Each point runs in its own process: one warm-up step (compilation), then
--steps timed steps of Adam training at batch 1, through the project's Loop
(`favor_trax.training.loop.make_loop`). A point reports the process's peak
resident set size (ru_maxrss), its RSS after the imports (baseline), and the
median step time. The parent samples the child's RSS every 0.2 s and stops
it when it passes --memory_limit_gib.

    python benchmarks/memory.py depth
    python benchmarks/memory.py length --max_length 131072
    python benchmarks/memory.py report

`report` writes docs/figures/memory_depth.png and memory_length.png from the
CSVs in benchmarks/results/ and prints the tables and target ratios.
"""

import argparse
import functools
import json
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from benchmarks import csv_records  # pylint: disable=wrong-import-position

RESULTS_DIR = REPO_ROOT / 'benchmarks' / 'results'
FIGURES_DIR = REPO_ROOT / 'docs' / 'figures'
VOCAB_SIZE = 258  # the byte-level vocabulary of tasks.vocabulary
KINDS = ('favor_softmax', 'dot_product', 'none')
FIELDS = ['experiment', 'kind', 'length', 'n_layers', 'd_model', 'variant',
          'status', 'step_seconds', 'peak_rss_mib', 'baseline_rss_mib',
          'sampled_peak_rss_mib', 'wall_seconds']

# Model shapes of the two questions. ff_chunk_size bounds the feed-forward
# activations at long L; FAVOR+ uses its defaults (m = 256, chunk 128).
DEPTH_MODEL = {'d_model': 256, 'd_ff': 1024, 'n_heads': 4,
               'ff_chunk_size': 1024}
LENGTH_MODEL = {'d_model': 512, 'd_ff': 2048, 'n_heads': 8, 'n_layers': 6,
                'ff_chunk_size': 1024}
# variant -> (PerformerLM.reversible, make_loop.use_memory_efficient_trainer)
VARIANTS = {
    'reversible': (True, True),
    'standard': (False, False),
}


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('experiment', choices=['depth', 'length', 'report'])
  parser.add_argument('--point', help='JSON of one point to measure in this '
                      'process (used by the parent).')
  parser.add_argument('--layers', nargs='+', type=int, default=[2, 4, 8, 12])
  parser.add_argument('--variants', nargs='+', default=list(VARIANTS),
                      choices=list(VARIANTS))
  parser.add_argument('--depth_length', type=int, default=8192)
  parser.add_argument('--kinds', nargs='+', default=list(KINDS),
                      choices=KINDS)
  parser.add_argument('--start_length', type=int, default=2048)
  parser.add_argument('--max_length', type=int, default=262144)
  parser.add_argument('--steps', type=int, default=2,
                      help='Timed steps after the warm-up step.')
  parser.add_argument('--memory_limit_gib', type=float, default=20.0,
                      help='A point whose RSS passes this is stopped.')
  parser.add_argument('--append', action='store_true',
                      help='Add rows to the CSV instead of replacing it.')
  parser.add_argument('--timeout', type=int, default=2400,
                      help='Seconds allowed for one point.')
  return parser.parse_args()


def _measure_point(point, steps):
  """Train one warm-up and `steps` timed steps; print one JSON line."""
  # pylint: disable=import-outside-toplevel
  import gin
  import numpy as np
  from benchmarks import loop_timing
  from favor_trax.models import performer_lm
  from favor_trax.training import config
  from favor_trax.training import loop as loop_lib
  # Registers the gin names that the attention configs refer to.
  from tasks import experiment  # pylint: disable=unused-import
  # pylint: enable=import-outside-toplevel

  length = point['length']
  reversible, memory_efficient = VARIANTS[point['variant']]
  bindings = [f'PerformerLM.{name} = {value}'
              for name, value in point['model'].items()]
  bindings += [f'PerformerLM.max_len = {length}',
               f'PerformerLM.reversible = {reversible}',
               'PerformerLM.dropout = 0.1']
  config.parse_gin(
      [str(REPO_ROOT / 'gin' / 'attention' / f"{point['kind']}.gin")],
      bindings)
  batches = functools.partial(loop_timing.random_token_batches, length,
                              VOCAB_SIZE)

  def model_fn(mode):
    return performer_lm.PerformerLM(vocab_size=VOCAB_SIZE, mode=mode)

  baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  never = 10**9
  with tempfile.TemporaryDirectory() as output_dir:
    loop = loop_lib.make_loop(
        model_fn, batches(), batches(), next(batches()), output_dir,
        total_steps=never, tokens_per_step=length, warmup_steps=10,
        steps_per_checkpoint=never, steps_per_eval=never,
        steps_per_log=never, use_memory_efficient_trainer=memory_efficient)
    gin.clear_config()
    times = loop_timing.time_loop_steps(loop, steps)
  peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  print(json.dumps({
      'status': 'ok',
      'step_seconds': float(np.median(times)),
      'peak_rss_mib': peak_kib / 1024,
      'baseline_rss_mib': baseline_kib / 1024,
  }), flush=True)


def _rss_mib(pid):
  """Return the resident set size of process pid in MiB, or 0 if it ended."""
  try:
    with open(f'/proc/{pid}/status', encoding='ascii') as f:
      for line in f:
        if line.startswith('VmRSS:'):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return 0.0


def _run_point(point, args):
  """Measure one point in a child process; return its CSV row."""
  row = {'experiment': point['experiment'], 'kind': point['kind'],
         'length': point['length'], 'n_layers': point['model']['n_layers'],
         'd_model': point['model']['d_model'], 'variant': point['variant']}
  command = [sys.executable, __file__, point['experiment'], '--point',
             json.dumps(point), '--steps', str(args.steps)]
  limit_mib = args.memory_limit_gib * 1024
  start = time.time()
  sampled_peak = 0.0
  status = None
  with tempfile.TemporaryFile('w+') as stdout, \
      tempfile.TemporaryFile('w+') as stderr:
    child = subprocess.Popen(command, stdout=stdout, stderr=stderr,
                             text=True)
    while child.poll() is None:
      sampled_peak = max(sampled_peak, _rss_mib(child.pid))
      if sampled_peak > limit_mib:
        child.kill()
        status = f'over {args.memory_limit_gib:g} GiB'
      elif time.time() - start > args.timeout:
        child.kill()
        status = f'timed out ({args.timeout} s)'
      time.sleep(0.2)
    stdout.seek(0)
    stderr.seek(0)
    output = stdout.read()
    errors = stderr.read()

  row['wall_seconds'] = round(time.time() - start, 1)
  row['sampled_peak_rss_mib'] = round(sampled_peak, 1)
  for line in reversed(output.splitlines()):
    if line.startswith('{'):
      row.update(json.loads(line))
      return row
  if status is None:
    status = 'failed'
    if 'RESOURCE_EXHAUSTED' in errors or child.returncode == -9:
      status = 'out of memory'
    sys.stderr.write(errors[-3000:])
  row['status'] = status
  return row


def _append_row(path, row):
  csv_records.write_csv([row], path, FIELDS, append=True)


def _run_depth(args):
  path = RESULTS_DIR / 'memory_depth.csv'
  if not args.append:
    path.unlink(missing_ok=True)
  for n_layers in args.layers:
    for variant in args.variants:
      point = {'experiment': 'depth', 'kind': 'favor_softmax',
               'length': args.depth_length, 'variant': variant,
               'model': dict(DEPTH_MODEL, n_layers=n_layers)}
      row = _run_point(point, args)
      print(json.dumps(row), flush=True)
      _append_row(path, row)


def _run_length(args):
  """Measure every kind at each L, interleaved, until all kinds stop."""
  path = RESULTS_DIR / 'memory_length.csv'
  if not args.append:
    path.unlink(missing_ok=True)
  active = list(args.kinds)
  length = args.start_length
  while active and length <= args.max_length:
    for kind in list(active):
      point = {'experiment': 'length', 'kind': kind, 'length': length,
               'variant': 'reversible', 'model': dict(LENGTH_MODEL)}
      row = _run_point(point, args)
      print(json.dumps(row), flush=True)
      _append_row(path, row)
      if row['status'] != 'ok':
        active.remove(kind)  # Longer sequences would fail the same way.
    length *= 2


def _read_rows(name):
  path = RESULTS_DIR / name
  if not path.exists():
    return []
  return csv_records.read_csv(path)


def _ok(row):
  return row['status'] == 'ok'


def _report_depth(rows, plt):
  print('\n### Depth (L = 8,192, d_model 256, batch 1)\n')
  print('| layers | variant | peak RSS (MiB) | above baseline (MiB) | '
        'step time (s) |')
  print('|---|---|---|---|---|')
  for row in rows:
    if _ok(row):
      above = float(row['peak_rss_mib']) - float(row['baseline_rss_mib'])
      print(f"| {row['n_layers']} | {row['variant']} | "
            f"{float(row['peak_rss_mib']):.0f} | {above:.0f} | "
            f"{float(row['step_seconds']):.2f} |")
    else:
      print(f"| {row['n_layers']} | {row['variant']} | {row['status']} | | |")

  figure, axis = plt.subplots(figsize=(6, 4))
  for variant in VARIANTS:
    points = [(int(r['n_layers']), float(r['peak_rss_mib']) / 1024)
              for r in rows if r['variant'] == variant and _ok(r)]
    if points:
      axis.plot(*zip(*points), marker='o', label=variant)
  reversible = {int(r['n_layers']): float(r['peak_rss_mib'])
                for r in rows if r['variant'] == 'reversible' and _ok(r)}
  if 2 in reversible and 12 in reversible:
    print(f'\nreversible peak RSS, 12 layers / 2 layers: '
          f'{reversible[12] / reversible[2]:.2f} (target <= 1.3)')
  axis.set_xlabel('layers')
  axis.set_ylabel('peak RSS (GiB)')
  axis.set_title('One training step, L = 8,192, d_model 256')
  axis.legend()
  axis.grid(True, alpha=0.3)
  figure.tight_layout()
  figure.savefig(FIGURES_DIR / 'memory_depth.png', dpi=120)


def _report_length(rows, plt):
  print('\n### Length (6 layers, d_model 512, batch 1, reversible)\n')
  print('| L | kind | peak RSS (MiB) | step time (s) |')
  print('|---|---|---|---|')
  by_kind = {}
  for row in rows:
    by_kind.setdefault(row['kind'], {})[int(row['length'])] = row
    if _ok(row):
      print(f"| {row['length']} | {row['kind']} | "
            f"{float(row['peak_rss_mib']):.0f} | "
            f"{float(row['step_seconds']):.2f} |")
    else:
      print(f"| {row['length']} | {row['kind']} | {row['status']} | |")

  favor = by_kind.get('favor_softmax', {})
  none = by_kind.get('none', {})
  print('\n| L | FAVOR+ / none peak RSS (target <= 1.3) | '
        'FAVOR+ / none step time (target <= 1.5 at L >= 8,192) |')
  print('|---|---|---|')
  for length in sorted(set(favor) & set(none)):
    if _ok(favor[length]) and _ok(none[length]):
      memory = (float(favor[length]['peak_rss_mib']) /
                float(none[length]['peak_rss_mib']))
      seconds = (float(favor[length]['step_seconds']) /
                 float(none[length]['step_seconds']))
      print(f'| {length} | {memory:.2f} | {seconds:.2f} |')
  for kind, kind_rows in by_kind.items():
    trained = [length for length, row in kind_rows.items() if _ok(row)]
    print(f"longest L trained by {kind}: {max(trained) if trained else 'none'}")

  figure, (memory_axis, time_axis) = plt.subplots(1, 2, figsize=(11, 4))
  for kind, kind_rows in sorted(by_kind.items()):
    points = sorted((length, row) for length, row in kind_rows.items()
                    if _ok(row))
    if not points:
      continue
    lengths = [length for length, _ in points]
    memory_axis.plot(lengths, [float(r['peak_rss_mib']) / 1024
                               for _, r in points], marker='o', label=kind)
    time_axis.plot(lengths, [float(r['step_seconds']) for _, r in points],
                   marker='o', label=kind)
  for axis, label in ((memory_axis, 'peak RSS (GiB)'),
                      (time_axis, 'training step (s)')):
    axis.set_xscale('log', base=2)
    axis.set_yscale('log')
    axis.set_xlabel('sequence length L')
    axis.set_ylabel(label)
    axis.grid(True, which='both', alpha=0.3)
    axis.legend()
  figure.suptitle('PerformerLM, 6 reversible layers, d_model 512, batch 1')
  figure.tight_layout()
  figure.savefig(FIGURES_DIR / 'memory_length.png', dpi=120)


def _report():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  FIGURES_DIR.mkdir(parents=True, exist_ok=True)
  depth_rows = _read_rows('memory_depth.csv')
  if depth_rows:
    _report_depth(depth_rows, plt)
  length_rows = _read_rows('memory_length.csv')
  if length_rows:
    _report_length(length_rows, plt)
  if not depth_rows and not length_rows:
    print(f'No results in {RESULTS_DIR}; run the depth or length '
          'experiment first.')


def main():
  args = _parse_args()
  if args.point:
    _measure_point(json.loads(args.point), args.steps)
    return
  RESULTS_DIR.mkdir(parents=True, exist_ok=True)
  if args.experiment == 'depth':
    _run_depth(args)
  elif args.experiment == 'length':
    _run_length(args)
  _report()


if __name__ == '__main__':
  main()
