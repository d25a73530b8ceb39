r"""Train or evaluate a favor_trax model from gin config files.

  python run.py --config_file gin/pg19/demo.gin --output_dir runs/demo
  python run.py --config_file gin/pg19/base.gin --data_dir /data/pg19 \
      --config 'PerformerLM.n_layers = 2' --output_dir runs/pg19
  python run.py --config_file gin/pg19/demo.gin --output_dir runs/demo \
      --mode sample --prompt 'The list type' --temperature 0.8 --top_k 20

Flags follow Trax's trainer: --config_file and --config repeat and apply in
order; an unknown configurable or parameter is an error. Training resumes
from the latest checkpoint in --output_dir. Both modes end by scoring every
token of the evaluation splits and writing output_dir/eval_results.json.
Mode sample draws from the checkpoint in --output_dir with the same config
files; see tasks/sampling.py.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

# Only light modules load before the flags and files are checked, so a bad
# input fails in seconds; JAX, TensorFlow and Trax load in main().
from favor_trax.training import config
from tasks import pg19

_CONFIG_FILES = flags.DEFINE_multi_string(
    'config_file', [], 'Gin config file; repeat the flag to apply several in '
    'order.')
_CONFIG = flags.DEFINE_multi_string(
    'config', [], "Gin binding such as 'PerformerLM.n_layers = 2', applied "
    'after the files; repeatable.')
_OUTPUT_DIR = flags.DEFINE_string(
    'output_dir', None, 'Directory for checkpoints, TensorBoard events, the '
    'operative gin config and eval_results.json.')
_MODE = flags.DEFINE_enum(
    'mode', 'train', ['train', 'eval', 'sample'], 'train: train (resuming '
    'from output_dir), then evaluate. eval: evaluate the checkpoint in '
    'output_dir. sample: draw from the checkpoint in output_dir (text: '
    'continue --prompt; images: write PNG grids).')
_INIT_CHECKPOINT = flags.DEFINE_string(
    'init_checkpoint', None, 'Output directory of an earlier run whose '
    'weights start this run wherever names and shapes agree, for example '
    'those of a model trained with another attention kind.')
_PROMPT = flags.DEFINE_string(
    'prompt', '', 'Mode sample, text tasks: the text the samples continue.')
_N_SAMPLES = flags.DEFINE_integer(
    'n_samples', 1, 'Mode sample: number of samples (images: per grid).')
_SAMPLE_LENGTH = flags.DEFINE_integer(
    'sample_length', None, 'Mode sample, text tasks: new tokens per sample. '
    "Defaults to the rest of the model's max_len after the prompt.")
_TEMPERATURE = flags.DEFINE_float(
    'temperature', 1.0, 'Mode sample: softmax temperature; 0 decodes '
    'greedily.')
_TOP_K = flags.DEFINE_integer(
    'top_k', 0, 'Mode sample: draw among the k most likely tokens only; 0 '
    'keeps all.')
_SEED = flags.DEFINE_integer('seed', 0, 'Mode sample: seed of the draws.')
_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, "Local dataset directory; overrides the config's "
    'data_dir.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'Several hosts: host:port of the first '
    "host's JAX coordinator. Give it with --num_processes and --process_id "
    'on every host, each host with the same other flags.')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Several hosts: number of hosts (processes).')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'Several hosts: index of this host, from 0; host 0 '
    'writes the checkpoints and results.')


def _check_sample_flags():
  """Raise ConfigError on a sampling flag out of range."""
  if _N_SAMPLES.value < 1:
    raise config.ConfigError(
        f'--n_samples must be at least 1, got {_N_SAMPLES.value}.')
  if _SAMPLE_LENGTH.value is not None and _SAMPLE_LENGTH.value < 1:
    raise config.ConfigError(
        f'--sample_length must be at least 1, got {_SAMPLE_LENGTH.value}.')
  if _TEMPERATURE.value < 0:
    raise config.ConfigError(
        f'--temperature must be >= 0 (0 decodes greedily), got '
        f'{_TEMPERATURE.value}.')
  if _TOP_K.value < 0:
    raise config.ConfigError(
        f'--top_k must be >= 0 (0 keeps every token), got {_TOP_K.value}.')


def _check_host_flags():
  """Raise ConfigError unless the several-host flags are all given or none."""
  values = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if all(value is None for value in values):
    return False
  if any(value is None for value in values):
    raise config.ConfigError(
        '--coordinator_address, --num_processes and --process_id go '
        'together: give all three on every host, or none on one host.')
  if _NUM_PROCESSES.value < 1 or not (
      0 <= _PROCESS_ID.value < _NUM_PROCESSES.value):
    raise config.ConfigError(
        f'--process_id must be in [0, --num_processes), got --process_id '
        f'{_PROCESS_ID.value} with --num_processes {_NUM_PROCESSES.value}.')
  return True


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if not _CONFIG_FILES.value:
    raise app.UsageError(
        'Give at least one --config_file, for example gin/pg19/demo.gin.')
  if not _OUTPUT_DIR.value:
    raise app.UsageError('--output_dir is required.')

  for path in _CONFIG_FILES.value:
    if not os.path.isfile(path):
      raise config.ConfigError(
          f'Gin config file not found: {path}. Pass an existing file to '
          '--config_file, for example gin/pg19/demo.gin.')
  if _DATA_DIR.value and not os.path.isdir(_DATA_DIR.value):
    raise config.ConfigError(
        f'--data_dir {_DATA_DIR.value} is not a directory. Give the dataset '
        'directory the config reads: for PG-19 the one with metadata.csv '
        'and train/, validation/, test/; for ImageNet64 the one with the '
        'npz files.')
  if _MODE.value == 'sample':
    _check_sample_flags()
  several_hosts = _check_host_flags()
  output_dir = os.path.abspath(os.path.expanduser(_OUTPUT_DIR.value))
  config.ensure_writable_dir(output_dir)

  # pylint: disable=import-outside-toplevel
  if several_hosts:
    # JAX's distributed runtime must start before any other JAX call.
    from favor_trax.training import distributed
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                           _PROCESS_ID.value)
  from tasks import experiment
  from tasks import sampling
  # pylint: enable=import-outside-toplevel
  config.parse_gin(_CONFIG_FILES.value, _CONFIG.value)
  sample_options = sampling.SampleOptions(
      prompt=_PROMPT.value, n_samples=_N_SAMPLES.value,
      n_new_tokens=_SAMPLE_LENGTH.value, temperature=_TEMPERATURE.value,
      top_k=_TOP_K.value, seed=_SEED.value)
  results = experiment.run_experiment(
      output_dir=output_dir, mode=_MODE.value, data_dir=_DATA_DIR.value,
      init_checkpoint=_INIT_CHECKPOINT.value, sample_options=sample_options)
  if _MODE.value == 'sample':
    logging.info('samples written to %s',
                 os.path.join(output_dir, sampling.SAMPLES_FILE))
    return 0
  logging.info('results written to %s',
               os.path.join(output_dir, 'eval_results.json'))
  for split_results in results['splits']:
    print(experiment.format_results(split_results))
  return 0


def _main_with_clear_errors(argv):
  """Run main; print bad-input errors as one message, without a traceback."""
  try:
    return main(argv)
  except (config.ConfigError, pg19.DataError, OSError) as error:
    print(f'Error: {_without_gin_context(str(error))}', file=sys.stderr)
    return 1


def _without_gin_context(message):
  """Drop the "In call to configurable ..." lines that gin appends."""
  lines = message.split('\n')
  return '\n'.join(line for line in lines
                   if not line.strip().startswith('In call to configurable'))


def run_main():
  """Entry point of the favor_trax_run console script."""
  logging.set_verbosity(logging.INFO)
  app.run(_main_with_clear_errors)


if __name__ == '__main__':
  sys.exit(run_main())
