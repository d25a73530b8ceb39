"""Trax training Loop from gin: optimizer, schedule, checkpoints, progress logs.

`make_loop` builds a `trax.supervised.training.Loop` that writes checkpoints to
output_dir and, when output_dir already contains one, resumes from it at the saved
step with the saved weights, state and optimizer slots.
"""

import functools
import glob
import math
import os
import time

from absl import logging
import gin
from trax import fastmath
from trax import layers as tl
from trax import optimizers
from trax import shapes
from trax.supervised import callbacks
from trax.supervised import lr_schedules
from trax.supervised import training

from favor_trax.training import named_weights
from favor_trax.training import trax_compat


class CheckpointingLoop(training.Loop):
  """A Loop whose checkpoint files are replaced together at the end of a save.

  Trax writes a checkpoint as several files (weights, optimizer slots, a
  pickle with the step and state), each through its own temporary file. A
  kill between two of those writes would pair new weights with an old step.
  Here every file is first written under a staging name and then renamed in
  one short burst, pickle last, so a kill during the slow part leaves the
  previous checkpoint whole.

  With `use_memory_efficient_trainer`, Trax's Loop evaluates the train-mode
  model, with dropout on. Here the periodic evaluation runs `eval_model`
  instead, with the weights and state of the trained model, as it does with
  the standard trainer.
  """

  def __init__(self, model, tasks, eval_model=None, **kwargs):
    self._eval_mode_model = eval_model
    super().__init__(model, tasks, eval_model=eval_model, **kwargs)

  def _init_evaluator(self, eval_task):
    if not self._use_memory_efficient_trainer or self._eval_mode_model is None:
      return super()._init_evaluator(eval_task)
    # Trax builds the metrics function from self._eval_model, which its
    # memory-efficient path sets to the train-mode model. Evaluation passes
    # the trained weights and state explicitly, so the eval-mode model gets
    # only the shapes of the weights here, not a second copy of them.
    eval_model = self._eval_mode_model
    eval_model.weights = fastmath.nested_map(shapes.signature,
                                             self._model.weights)
    eval_model.state = self._model.state
    train_model = self._eval_model
    self._eval_model = eval_model
    try:
      return super()._init_evaluator(eval_task)
    finally:
      self._eval_model = train_model

  def save_checkpoint(self, basename):
    if self._output_dir is None:
      return
    staging = basename + '.staging'
    super().save_checkpoint(staging)
    if not self.is_chief:
      # Trax writes checkpoints on the first host only, and the other hosts
      # hold the same weights, so they write nothing.
      return
    named_weights.save(
        self.model, os.path.join(self._output_dir,
                                 staging + named_weights.NAMED_WEIGHTS_SUFFIX))
    staged = glob.glob(os.path.join(self._output_dir, staging + '.*'))
    # The pickle names the step, so it is renamed after the arrays it
    # describes. NOTE: the renames are separate system calls, so a kill
    # between them can still mix two checkpoints; the window is microseconds.
    staged.sort(key=lambda path: path.endswith('.pkl.gz'))
    for path in staged:
      suffix = os.path.basename(path)[len(staging):]
      os.replace(path, os.path.join(self._output_dir, basename + suffix))


class ProgressLogger(callbacks.TrainingStepCallback):
  """Logs steps/s, tokens/s and the estimated time left every `every` steps."""

  def __init__(self, loop, total_steps, tokens_per_step, every):
    super().__init__(loop)
    self._total_steps = total_steps
    self._tokens_per_step = tokens_per_step
    self._every = max(1, every)
    self._last_time = None
    self._last_step = None

  def call_at(self, step):
    return step % self._every == 0 or step == self._total_steps

  def on_step_begin(self, step):
    if self._last_time is None:
      self._last_time = time.time()
      self._last_step = step - 1

  def on_step_end(self, step):
    now = time.time()
    steps = step - self._last_step
    seconds = max(now - self._last_time, 1e-9)
    steps_per_second = steps / seconds
    remaining = max(self._total_steps - step, 0) / steps_per_second
    logging.info(
        'step %d/%d: %.2f steps/s, %.0f tokens/s, about %s left',
        step, self._total_steps, steps_per_second,
        steps_per_second * self._tokens_per_step, _format_seconds(remaining))
    self._last_time = now
    self._last_step = step


def _format_seconds(seconds):
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours:d}:{minutes:02d}:{seconds:02d}'


@gin.configurable(module='favor_trax', denylist=[
    'model_fn', 'train_batches', 'eval_batches', 'sample_batch', 'output_dir',
    'total_steps', 'tokens_per_step'])
def make_loop(model_fn,
              train_batches,
              eval_batches,
              sample_batch,
              output_dir,
              total_steps,
              tokens_per_step,
              learning_rate=1e-3,
              warmup_steps=100,
              steps_per_checkpoint=100,
              steps_per_eval=100,
              steps_per_log=10,
              n_eval_batches=4,
              use_memory_efficient_trainer=False,
              random_seed=0):
  """Return a Loop training model_fn(mode='train') on train_batches.

  Args:
    model_fn: Called with mode='train' and mode='eval'; returns a Trax model
      from token ids to log-probabilities.
    train_batches: Iterator of (inputs, targets, weights) batches.
    eval_batches: Iterator of batches for the periodic evaluation; it must not
      run out.
    sample_batch: A batch of the training shape, used to initialize the model
      without drawing from train_batches, which may depend on the restored
      step.
    output_dir: Directory for checkpoints and TensorBoard events.
    total_steps: Step count the run ends at, for the progress log.
    tokens_per_step: Tokens in one training batch, for the progress log.
    learning_rate: Peak learning rate of Adam.
    warmup_steps: Steps of linear warm-up, followed by rsqrt decay.
    steps_per_checkpoint: A checkpoint is written every this many steps.
    steps_per_eval: Loss and accuracy on n_eval_batches every this many steps.
    steps_per_log: Throughput is logged every this many steps.
    n_eval_batches: Batches per periodic evaluation.
    use_memory_efficient_trainer: Train reversible blocks one at a time,
      recomputing activations in backward (Trax's ReversibleSerialTrainer).
      Weights and optimizer slots then live in host memory, and each layer's
      are copied to the accelerator for its step. NOTE: Trax compiles the
      periodic evaluation of this path for the CPU, so on a GPU or TPU host
      it runs on the host.
    random_seed: Seed of the weight initialization and dropout.

  Returns:
    A `CheckpointingLoop`, restored from output_dir when it contains a checkpoint.
  """
  if not learning_rate > 0:
    raise ValueError(f'learning_rate must be positive, got {learning_rate}.')
  for name, value in (('warmup_steps', warmup_steps),
                      ('steps_per_checkpoint', steps_per_checkpoint),
                      ('steps_per_eval', steps_per_eval),
                      ('n_eval_batches', n_eval_batches)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f'{name} must be a positive integer, got {value!r}.')
  trax_compat.apply_all()
  # Trax's rsqrt_decay divides by sqrt(max(step, warmup_steps)), so scaling
  # the constant by sqrt(warmup_steps) makes learning_rate the peak, reached
  # at the end of the warm-up.
  schedule = lr_schedules.multifactor(
      constant=learning_rate * math.sqrt(warmup_steps),
      factors='constant * linear_warmup * rsqrt_decay',
      warmup_steps=warmup_steps)
  # The memory-efficient trainer calls the optimizer to create one optimizer
  # per block, so it gets a factory; the standard trainer takes an instance.
  optimizer = functools.partial(optimizers.Adam, learning_rate)
  if not use_memory_efficient_trainer:
    optimizer = optimizer()
  train_task = training.TrainTask(
      labeled_data=train_batches,
      loss_layer=tl.WeightedCategoryCrossEntropy(),
      optimizer=optimizer,
      lr_schedule=schedule,
      sample_batch=sample_batch,
      n_steps_per_checkpoint=steps_per_checkpoint)
  eval_task = training.EvalTask(
      labeled_data=eval_batches,
      metrics=[tl.WeightedCategoryCrossEntropy(), tl.WeightedCategoryAccuracy()],
      metric_names=['cross_entropy', 'accuracy'],
      n_eval_batches=n_eval_batches)
  progress = functools.partial(
      ProgressLogger, total_steps=total_steps,
      tokens_per_step=tokens_per_step, every=steps_per_log)
  return CheckpointingLoop(
      model_fn(mode='train'),
      [train_task],
      eval_model=model_fn(mode='eval'),
      eval_tasks=[eval_task],
      output_dir=output_dir,
      eval_at=lambda step: step % steps_per_eval == 0 or step == total_steps,
      random_seed=random_seed,
      use_memory_efficient_trainer=use_memory_efficient_trainer,
      callbacks=[progress])
