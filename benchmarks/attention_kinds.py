"""Training-step time and peak memory of PerformerLM with each attention kind.

Question: what does each attention kind cost in one training step of the
whole model (forward, backward and Adam update), against the sequence
length?

The model is gin/pg19/demo.gin's PerformerLM (2 reversible blocks, d_model
128, 4 heads) at batch 1, trained through the project's Loop. Each (kind, L)
point runs in its own process, which reports its peak resident memory and
the median time of --steps steps after one warm-up step (compilation).

    python benchmarks/attention_kinds.py --lengths 1024 4096 16384
    python benchmarks/attention_kinds.py --point favor_softmax 4096

Writes benchmarks/results/attention_kinds.csv and prints a Markdown table.
"""

import argparse
import functools
import json
import pathlib
import resource
import subprocess
import sys
import tempfile

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from benchmarks import csv_records  # pylint: disable=wrong-import-position

FIELDS = ['kind', 'length', 'status', 'step_seconds', 'peak_rss_mib',
          'baseline_rss_mib']
KINDS = ['favor_softmax', 'favor_relu', 'dot_product', 'local', 'lsh', 'none']


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--point', nargs=2, metavar=('KIND', 'LENGTH'),
                      help='Measure one point in this process.')
  parser.add_argument('--kinds', nargs='+', default=KINDS, choices=KINDS)
  parser.add_argument('--lengths', nargs='+', type=int,
                      default=[1024, 4096, 16384])
  parser.add_argument('--steps', type=int, default=3,
                      help='Timed steps after the warm-up step.')
  parser.add_argument('--timeout', type=int, default=600,
                      help='Seconds allowed for one point.')
  parser.add_argument('--csv', default=str(
      REPO_ROOT / 'benchmarks' / 'results' / 'attention_kinds.csv'))
  return parser.parse_args()


def _measure_point(kind, length, steps):
  """Train `steps` + 1 steps at this length; print one JSON line."""
  import gin  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from benchmarks import loop_timing  # pylint: disable=import-outside-toplevel
  from favor_trax.models import performer_lm  # pylint: disable=import-outside-toplevel
  from favor_trax.training import config  # pylint: disable=import-outside-toplevel
  from favor_trax.training import loop as loop_lib  # pylint: disable=import-outside-toplevel
  # Registers the gin names that the task config refers to.
  from tasks import experiment  # pylint: disable=import-outside-toplevel,unused-import

  config.parse_gin([str(REPO_ROOT / 'gin' / 'pg19' / 'demo.gin'),
                    str(REPO_ROOT / 'gin' / 'attention' / f'{kind}.gin')],
                   [f'PerformerLM.max_len = {length}'])
  batches = functools.partial(loop_timing.random_token_batches, length, 258)

  model_fn = lambda mode: performer_lm.PerformerLM(vocab_size=258, mode=mode)  # pylint: disable=unnecessary-lambda-assignment
  baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  with tempfile.TemporaryDirectory() as output_dir:
    loop = loop_lib.make_loop(
        model_fn, batches(), batches(), next(batches()), output_dir,
        total_steps=steps + 1, tokens_per_step=length)
    gin.clear_config()
    times = loop_timing.time_loop_steps(loop, steps)
  peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  print(json.dumps({
      'kind': kind, 'length': length, 'status': 'ok',
      'step_seconds': float(np.median(times)),
      'peak_rss_mib': peak_kib / 1024,
      'baseline_rss_mib': baseline_kib / 1024,
  }))


def _run_point(kind, length, steps, timeout):
  command = [sys.executable, __file__, '--point', kind, str(length),
             '--steps', str(steps)]
  try:
    result = subprocess.run(command, capture_output=True, text=True,
                            timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return {'kind': kind, 'length': length, 'status': f'timed out ({timeout} s)'}
  for line in reversed(result.stdout.splitlines()):
    if line.startswith('{'):
      return json.loads(line)
  status = 'failed'
  if 'RESOURCE_EXHAUSTED' in result.stderr or result.returncode == -9:
    status = 'out of memory'
  sys.stderr.write(result.stderr[-2000:])
  return {'kind': kind, 'length': length, 'status': status}


def main():
  args = _parse_args()
  if args.point:
    _measure_point(args.point[0], int(args.point[1]), args.steps)
    return

  rows = []
  for kind in args.kinds:
    for length in args.lengths:
      row = _run_point(kind, length, args.steps, args.timeout)
      print(json.dumps(row), flush=True)
      rows.append(row)
      if row['status'] != 'ok':
        break  # Longer sequences would fail the same way.

  csv_records.write_csv(rows, args.csv, FIELDS)

  print('\n| kind | L | step time (s) | peak RSS (MiB) |')
  print('|---|---|---|---|')
  for row in rows:
    if row['status'] == 'ok':
      print(f"| {row['kind']} | {row['length']} | {row['step_seconds']:.3f} "
            f"| {row['peak_rss_mib']:.0f} |")
    else:
      print(f"| {row['kind']} | {row['length']} | {row['status']} | |")


if __name__ == '__main__':
  main()
