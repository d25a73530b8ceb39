"""Generation speed against position: FAVOR+ decode state vs full recomputation.

Question: what does one new token cost at position t? A FAVOR+ model in
predict mode carries its prefix sums, so each token costs the same at any t.
A model without a decode cache reruns the causal forward pass over the whole
prefix for every token. Here that model uses exact softmax attention
(`favor_trax.layers.kinds.DotProductAttention`), so a token at position t
costs O(t) in the dense layers and O(t^2) in the attention.

Both models have gin/pg19/demo.gin's shape (2 reversible blocks, d_model 128,
4 heads, byte vocabulary) and random weights. Each decodes greedily from an
empty prompt to --max_position tokens at batch 1. The full-pass decoder pads the
prefix to a multiple of 64 positions so that it compiles once per 64 tokens;
the first token after each new length includes that compilation, so the
report takes the median over each bin of 64 positions.

    python benchmarks/generation.py --max_position 2048

Writes benchmarks/results/generation.csv and docs/figures/generation.png.
"""

import argparse
import functools
import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = 64


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--max_position', type=int, default=2048)
  parser.add_argument('--csv', default=str(
      REPO_ROOT / 'benchmarks' / 'results' / 'generation.csv'))
  parser.add_argument('--figure', default=str(
      REPO_ROOT / 'docs' / 'figures' / 'generation.png'))
  return parser.parse_args()


def _model_fn(attention_layer, max_len):
  # pylint: disable=import-outside-toplevel
  from favor_trax.models import performer_lm
  return functools.partial(
      performer_lm.PerformerLM, vocab_size=258, d_model=128, d_ff=256,
      n_layers=2, n_heads=4, max_len=max_len, dropout=0.0,
      attention_layer=attention_layer)


def _measure(max_position):
  """Return {decoder: per-token seconds} for both decoders."""
  # pylint: disable=import-outside-toplevel
  import jax
  import numpy as np
  from trax import shapes
  from favor_trax import decoding
  from favor_trax.layers import favor
  from favor_trax.layers import kinds
  # pylint: enable=import-outside-toplevel

  prompt = np.zeros((1, 0), np.int32)
  favor_fn = _model_fn(functools.partial(favor.FavorAttention,
                                         n_random_features=256),
                       max_position)
  trained = favor_fn(mode='eval')
  trained.init(shapes.ShapeDtype((1, 64), np.int32),
               rng=jax.random.PRNGKey(0))
  predict = decoding.predict_model(favor_fn, trained.weights, trained.state,
                                   batch_size=1)
  sampler = decoding.Sampler(predict, 258, max_len=max_position)
  sampler.sample(prompt, max_position, temperature=0.0)
  seconds = {'favor_predict_mode': list(sampler.token_seconds)}

  exact_fn = _model_fn(kinds.DotProductAttention, max_position + BIN)
  exact = exact_fn(mode='eval')
  exact.init(shapes.ShapeDtype((1, 64), np.int32),
             rng=jax.random.PRNGKey(0))
  _, exact_seconds = decoding.full_pass_greedy(
      exact, exact.weights, exact.state, prompt, max_position,
      length_multiple=BIN)
  seconds['exact_full_pass'] = exact_seconds
  return seconds


def _binned_medians(values):
  import numpy as np  # pylint: disable=import-outside-toplevel
  return [(start + BIN // 2, float(np.median(values[start:start + BIN])))
          for start in range(0, len(values), BIN)]


def main():
  args = _parse_args()
  sys.path.insert(0, str(REPO_ROOT))
  seconds = _measure(args.max_position)

  from benchmarks import csv_records  # pylint: disable=import-outside-toplevel
  rows = []
  for decoder, values in seconds.items():
    for position, value in enumerate(values):
      rows.append({'decoder': decoder, 'position': position,
                   'seconds': f'{value:.6f}'})
  csv_records.write_csv(rows, args.csv, ['decoder', 'position', 'seconds'])

  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  figure, axis = plt.subplots(figsize=(6, 4))
  print('| position | ' + ' | '.join(f'{d} tokens/s' for d in seconds) + ' |')
  print('|---|' + '---|' * len(seconds))
  binned = {decoder: _binned_medians(values)
            for decoder, values in seconds.items()}
  for decoder, points in binned.items():
    positions, medians = zip(*points)
    axis.plot(positions, [1 / m for m in medians], marker='.', label=decoder)
  for index in range(0, len(binned['exact_full_pass']), 4):
    row = [f"{1 / binned[d][index][1]:.0f}" for d in seconds]
    print(f"| {binned['exact_full_pass'][index][0]} | " + ' | '.join(row)
          + ' |')
  axis.set_yscale('log')
  axis.set_xlabel('position of the new token')
  axis.set_ylabel('tokens/s (median per 64 positions)')
  axis.set_title('Greedy generation, demo-size model, batch 1, CPU')
  axis.grid(True, which='both', alpha=0.3)
  axis.legend()
  figure.tight_layout()
  figure.savefig(args.figure, dpi=120)
  print(f'Wrote {args.csv} and {args.figure}')


if __name__ == '__main__':
  main()
