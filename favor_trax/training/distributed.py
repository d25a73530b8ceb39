"""Training on several hosts: JAX's distributed runtime and per-host batches.

With `jax.distributed` initialized, every host runs the same program on its
local devices. Trax's trainers pmap each step over the local devices, and the
gradient sum (`psum` over the batch axis) spans the devices of all hosts. So
each host feeds only its own rows of the global batch. `host_batches` cuts
them from the global stream, so the hosts together train on the same global
batches, in the same order, as one host with all the devices would.
"""

from typing import Iterable, Iterator, Optional, Tuple

from absl import logging
import jax
import numpy as np

Batch = Tuple[np.ndarray, ...]


def initialize(coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None,
               process_id: Optional[int] = None,
               shutdown_timeout_seconds: int = 300) -> None:
  """Start JAX's distributed runtime for this host.

  Without arguments, JAX reads the cluster from its environment (Cloud TPU
  pods, SLURM and other launchers it supports). On CPU-only hosts the
  collectives go through gloo.

  Args:
    coordinator_address: host:port of process 0's coordinator service.
    num_processes: Number of processes (hosts) in the job.
    process_id: Index of this process, from 0.
    shutdown_timeout_seconds: How long a process that finished waits at exit
      for the others before JAX reports an error.
  """
  if jax.config.jax_platforms in (None, '', 'cpu'):
    # CPU collectives across processes need an implementation; gloo ships
    # with jaxlib. Accelerators bring their own.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id,
                             shutdown_timeout_seconds=shutdown_timeout_seconds)
  logging.info('JAX distributed runtime: process %d of %d, %d local and %d '
               'global devices.', jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def check_batch_size(batch_size: int, process_count: int,
                     local_device_count: int) -> None:
  """Raise ValueError unless batch_size splits over hosts and devices."""
  devices = process_count * local_device_count
  if batch_size % devices:
    raise ValueError(
        f'batch_size = {batch_size} does not split evenly over {devices} '
        f'devices ({process_count} hosts x {local_device_count} local '
        f'devices). Choose a batch size divisible by {devices}.')


def host_batches(batches: Iterable[Batch], process_index: int,
                 process_count: int) -> Iterator[Batch]:
  """Yield this host's rows of each global batch.

  Args:
    batches: Global batches, tuples of arrays of shape [batch, ...], the same
      on every host.
    process_index: This host's index, from 0.
    process_count: Number of hosts; it must divide the batch size.

  Yields:
    Tuples of arrays of shape [batch // process_count, ...]: rows
    process_index * rows_per_host up to the next host's first row.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index must be in [0, {process_count}), got '
                     f'{process_index}.')
  for batch in batches:
    size = batch[0].shape[0]
    if size % process_count:
      raise ValueError(f'A batch of {size} rows does not split evenly over '
                       f'{process_count} hosts.')
    rows = size // process_count
    start = process_index * rows
    yield tuple(array[start:start + rows] for array in batch)
