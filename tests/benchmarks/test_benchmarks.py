"""Tests of the benchmark scripts on small sizes: what they compute and record.

No test here checks a measured time.
"""

import math

import jax
import numpy as np

from benchmarks import approximation
from benchmarks import attention_speed


def _speed_args(*extra):
  return attention_speed.parse_args(
      ['--heads', '2', '--depth', '8', '--n-features', '16', '--repeats', '3',
       *extra])


def test_trax_scan_matches_favor_output():
  q, k, v, projection = attention_speed.make_inputs(
      length=64, batch=1, heads=2, depth=8, n_features=16)
  ours = attention_speed.favor_causal_attention(q, k, v, projection)
  trax_scan = attention_speed.trax_scan_attention(q, k, v, projection)
  assert trax_scan.shape == ours.shape == v.shape
  np.testing.assert_allclose(trax_scan, ours, rtol=1e-4, atol=1e-5)


def test_favor_methods_gradients_match():
  inputs = attention_speed.make_inputs(
      length=32, batch=1, heads=1, depth=8, n_features=16)
  _, ours = attention_speed.make_train_step(
      attention_speed.favor_causal_attention)(*inputs)
  _, trax_scan = attention_speed.make_train_step(
      attention_speed.trax_scan_attention)(*inputs)
  for ours_grad, trax_grad in zip(ours, trax_scan):
    np.testing.assert_allclose(trax_grad, ours_grad, rtol=1e-3, atol=1e-4)


def test_point_subprocess_records_ok_point():
  args = _speed_args()
  record = attention_speed.run_point_subprocess('identity', 128, args)
  assert record['status'] == 'ok', record['note']
  assert set(record) == set(attention_speed.FIELDS)
  assert record['n_runs'] == 3
  assert record['time_median_s'] > 0
  assert record['cpu_time_median_s'] > 0
  assert record['rss_process_peak_mib'] > 0


def test_point_subprocess_records_time_limit():
  args = _speed_args('--time-limit', '0.5')
  record = attention_speed.run_point_subprocess('identity', 128, args)
  assert record['status'] == 'timed_out'
  assert 'limit of 0.5 s' in record['note']


def test_point_records_planned_memory_above_limit():
  args = _speed_args('--memory-limit-gib', '0.001')
  record = attention_speed.measure_point('exact', 256, args)
  assert record['status'] == 'out_of_memory'
  assert 'XLA plans' in record['note']
  assert record['time_median_s'] == ''


def test_summary_ratio_and_slope():
  records = []
  for length in (1024, 2048, 4096):
    for method, seconds in (('favor_trax', 1e-6 * length),
                            ('trax_scan', 2e-6 * length)):
      record = dict.fromkeys(attention_speed.FIELDS, '')
      record.update(method=method, length=length, status='ok',
                    time_median_s=seconds, time_min_s=seconds / 2,
                    cpu_time_median_s=seconds * 2,
                    rss_run_delta_mib=10.0,
                    xla_temp_mib=5.0)
      records.append(record)
  summary = attention_speed.summarize(records)
  assert '| 4,096 | 0.0041 | 0.00819 | 0.50 | 0.50 | 0.50 |' in summary
  assert '| 4,096 | 10 | 10 | 1.00 |' in summary
  assert '| favor_trax | 1.00 | - | - | - |' in summary


def test_log_log_slope_of_quadratic():
  points = [(length, 3.0 * length**2) for length in (8, 16, 64)]
  assert math.isclose(attention_speed.log_log_slope(points), 2.0)


def test_approximation_error_small_for_small_inputs():
  args = approximation.parse_args(
      ['--seeds', '2', '--length', '32', '--depth', '8', '--feature-counts',
       '16', '--input-stds', '0.01'])
  with jax.enable_x64(True):
    records = approximation.measure(args)
  kernels_and_projections = {(record['kernel'], record['projection'])
                             for record in records}
  assert len(kernels_and_projections) == (
      len(approximation.KERNELS) * len(approximation.PROJECTIONS))
  for record in records:
    assert record['n_seeds'] == 2
    assert record['error_mean'] < 0.05, record
