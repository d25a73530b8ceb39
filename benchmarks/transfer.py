"""Exact-attention weights in a FAVOR+ model: accuracy before and after fine-tuning.

Question: does a model trained with exact softmax attention keep its accuracy
when its attention is swapped for FAVOR+ softmax (the backward compatibility
shown in Choromanski et al., "Rethinking Attention with Performers", ICLR
2021), and how many fine-tuning steps recover the rest?

Steps, all on a local PG-19 directory with the demo model (gin/pg19/demo.gin):
1. Train exact attention (`DotProductAttention`) for --exact_steps steps,
   scoring the validation split every --exact_every steps.
2. Load its weights into a FAVOR+ model (`--init_checkpoint`), score it
   before any fine-tuning, then fine-tune for --finetune_steps steps,
   scoring every --finetune_every steps.
3. For reference, train FAVOR+ from scratch for --finetune_steps steps.

    python benchmarks/transfer.py --data_dir ../shared/data/pg19_mini

Writes benchmarks/results/transfer.csv and docs/figures/transfer.png, and
prints a table for docs/BENCHMARKS.md.
"""

import argparse
import math
import os
import pathlib
import sys
import time

import gin

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks import csv_records  # pylint: disable=wrong-import-position
from favor_trax.training import config  # pylint: disable=wrong-import-position
from tasks import experiment  # pylint: disable=wrong-import-position

CHANCE_ACCURACY = 1 / 256


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data_dir', required=True,
                      help='PG-19 directory (metadata.csv, train/, ...).')
  parser.add_argument('--work_dir', default='/tmp/favor_trax_transfer',
                      help='Directory for the runs; reused runs resume.')
  parser.add_argument('--exact_steps', type=int, default=400)
  parser.add_argument('--exact_every', type=int, default=50)
  parser.add_argument('--finetune_steps', type=int, default=60)
  parser.add_argument('--finetune_every', type=int, default=10)
  parser.add_argument('--csv', default=str(
      REPO_ROOT / 'benchmarks' / 'results' / 'transfer.csv'))
  parser.add_argument('--png', default=str(
      REPO_ROOT / 'docs' / 'figures' / 'transfer.png'))
  return parser.parse_args()


def _score(output_dir, data_dir, attention, n_steps, init_checkpoint=None):
  """Train (or resume) to n_steps and return the validation results."""
  gin.clear_config()
  config.parse_gin([str(REPO_ROOT / 'gin' / 'pg19' / 'demo.gin')], [
      f'PerformerLM.attention_layer = @favor_trax.{attention}',
      f'run_experiment.n_steps = {n_steps}',
      "run_experiment.eval_splits = ('validation',)",
      'run_experiment.eval_batch_size = 32',
      'make_loop.steps_per_eval = 100000',
      # run_experiment checkpoints at the end of each call, where the next
      # call resumes, so no periodic checkpoints are needed.
      'make_loop.steps_per_checkpoint = 100000',
  ])
  results = experiment.run_experiment(
      output_dir=str(output_dir), mode='train', data_dir=data_dir,
      init_checkpoint=init_checkpoint)
  return results['splits'][0]


def _curve(label, output_dir, data_dir, attention, steps, init_checkpoint=None,
           step_offset=0):
  rows = []
  for n_steps in steps:
    start = time.time()
    split = _score(output_dir, data_dir, attention, n_steps,
                   init_checkpoint=init_checkpoint)
    rows.append({
        'run': label, 'attention': attention,
        'step': step_offset + n_steps, 'run_step': n_steps,
        'nll_per_token': split['nll_per_token'],
        'accuracy': split['accuracy'],
        'seconds': time.time() - start,
    })
    print(f"{label:>18} step {n_steps:4d}: loss {split['nll_per_token']:.4f}"
          f" nats/token, accuracy {split['accuracy']:.4f}", flush=True)
  return rows


def _plot(rows, path, exact_steps):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  from matplotlib import pyplot  # pylint: disable=import-outside-toplevel

  figure, axes = pyplot.subplots(1, 2, figsize=(11, 4))
  for label in sorted({row['run'] for row in rows}):
    points = [row for row in rows if row['run'] == label]
    for axis, key in zip(axes, ('accuracy', 'nll_per_token')):
      axis.plot([row['step'] for row in points], [row[key] for row in points],
                marker='o', label=label)
  for axis, key in zip(axes, ('validation accuracy', 'validation loss (nats/token)')):
    axis.axvline(exact_steps, color='gray', linestyle=':', linewidth=1)
    axis.set_xlabel('training step (fine-tuning starts at the dotted line)')
    axis.set_ylabel(key)
    axis.grid(alpha=0.3)
  axes[0].axhline(CHANCE_ACCURACY, color='black', linestyle='--',
                  linewidth=1, label='chance (1/256)')
  axes[0].legend()
  figure.suptitle('Exact-attention weights loaded into FAVOR+ (pg19 sample)')
  figure.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  figure.savefig(path, dpi=90)


def main():
  args = _parse_args()
  if not os.path.isdir(args.data_dir):
    sys.exit(f'--data_dir {args.data_dir} is not a directory; give a PG-19 '
             'directory with metadata.csv and train/, validation/, test/.')
  work_dir = pathlib.Path(args.work_dir)
  exact_dir = work_dir / 'exact'

  exact_steps = list(range(args.exact_every, args.exact_steps + 1,
                           args.exact_every))
  finetune_steps = [0] + list(range(args.finetune_every,
                                    args.finetune_steps + 1,
                                    args.finetune_every))
  rows = _curve('exact', exact_dir, args.data_dir, 'DotProductAttention',
                exact_steps)
  rows += _curve('favor+ from exact', work_dir / 'transferred', args.data_dir,
                 'FavorAttention', finetune_steps,
                 init_checkpoint=str(exact_dir), step_offset=args.exact_steps)
  rows += _curve('favor+ from scratch', work_dir / 'scratch', args.data_dir,
                 'FavorAttention', finetune_steps)

  csv_records.write_csv(rows, args.csv, list(rows[0]))
  _plot(rows, args.png, args.exact_steps)

  print('\n| run | steps of this run | validation loss (nats/token) | '
        'validation accuracy |')
  print('|---|---|---|---|')
  for row in rows:
    print(f"| {row['run']} | {row['run_step']} | {row['nll_per_token']:.4f} "
          f"| {row['accuracy']:.4f} |")
  exact_final = [row for row in rows if row['run'] == 'exact'][-1]
  transferred = [row for row in rows if row['run'] == 'favor+ from exact']
  recovered = next((row['run_step'] for row in transferred
                    if row['accuracy'] >= exact_final['accuracy']), None)
  print(f"\nexact accuracy {exact_final['accuracy']:.4f}; FAVOR+ before "
        f"fine-tuning {transferred[0]['accuracy']:.4f}; chance "
        f"{CHANCE_ACCURACY:.4f}; recovered at fine-tuning step "
        f"{recovered if recovered is not None else 'not within the run'}"
        f" of {args.exact_steps} exact steps")
  if not math.isfinite(exact_final['nll_per_token']):
    sys.exit('exact training diverged')


if __name__ == '__main__':
  main()
