"""Gin parsing and output-directory checks that fail early with clear errors."""

import os
import tempfile
import tokenize

import gin


class ConfigError(ValueError):
  """A gin file or binding that cannot be applied."""


def parse_gin(config_files, bindings):
  """Parse gin files in order, then bindings; unknown names are errors.

  Args:
    config_files: Paths of gin files.
    bindings: Gin binding strings such as 'PerformerLM.n_layers = 2'.

  Raises:
    ConfigError: a file is missing or does not parse, or a file or binding
      names a configurable or parameter that does not exist. The message names
      the file (or the binding) and gin's reason.
  """
  for path in config_files:
    if not os.path.isfile(path):
      raise ConfigError(
          f'Gin config file not found: {path}. Pass an existing file to '
          '--config_file, for example gin/pg19/demo.gin.')
    # An `include` inside a file names its target relative to that file, and
    # gin resolves it against the working directory first.
    absolute_path = os.path.abspath(path)
    working_dir = os.getcwd()
    os.chdir(os.path.dirname(absolute_path))
    try:
      gin.parse_config_file(absolute_path, skip_unknown=False)
    except (ValueError, SyntaxError, tokenize.TokenError, ImportError,
            OSError) as error:
      raise ConfigError(f'Invalid gin config file {path}: {error}') from error
    finally:
      os.chdir(working_dir)
  for binding in bindings:
    try:
      gin.parse_config(binding, skip_unknown=False)
    except (ValueError, SyntaxError, tokenize.TokenError) as error:
      raise ConfigError(f'Invalid gin binding {binding!r}: {error}') from error


def ensure_writable_dir(path):
  """Create `path` if needed and check that a file can be written there.

  Raises:
    OSError: the directory cannot be created or written, with the path named.
  """
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as error:
    raise OSError(
        f'Output directory {path} is not writable ({error.strerror}). Choose '
        'another --output_dir or fix its permissions.') from error
