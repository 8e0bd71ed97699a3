"""Pretraining and fine-tuning: pure train/eval steps under ``jax.pmap`` and the training loop.

``train_step``/``eval_step`` are pure functions of (state or params, batch, rng) wrapped once by
``jax.pmap`` (axis ``'batch'``, state donated). Every cross-device reduction lives inside them:
losses are batch-global means (each device divides its loss sum by the ``psum`` of the
denominators, and gradients are ``psum``-ed), so N devices compute exactly the step one device
would compute on the whole batch. The original instead averages per-GPU means under
``nn.DataParallel`` (spec G14); the difference vanishes when every device sees the same number of
labelled positions.

Pretraining corruption (token/object masking, mismatched pairs, QA-label sampling) runs inside
the jitted step from a key folded with the step and then the device index, so it is
reproducible from (seed, step, device) and never repeats across devices or hosts.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import jax_utils

from lxmert_jax import answers as answers_lib
from lxmert_jax import checkpoint as ckpt
from lxmert_jax import corruption, evaluate, losses, preemption, step_log
from lxmert_jax import train_state as ts
from lxmert_jax.data import pipeline
from lxmert_jax.metrics import vqa as vqa_metrics
from lxmert_jax.models.config import LxmertConfig
from tfrecords_tools import shards

Batch = dict[str, jax.Array]
PyTree = Any
MODEL_INPUTS = ("input_ids", "visual_feats", "visual_pos", "attention_mask", "token_type_ids")
AXIS = "batch"
MODES = ("pretrain", "finetune", "eval")


# ------------------------------------------------------------------------------------------------
# Step hyper-parameters and objectives (pure, shared by train_step and eval_step).


@dataclasses.dataclass(frozen=True)
class StepHParams:
  """Static (hashable) settings of the jitted steps.

  Attributes:
    task: config.task.
    num_answers: QA vocabulary size A (QA tasks).
    weights: pretraining (objective, weight) pairs; objectives with weight 0 are left out.
    semantics: loss conventions of ``losses.pretraining_losses``.
    visual_loss_normalizer: weight of the obj/attr/feat losses (original 1/0.15).
    qa_start_step: first train step whose QA loss counts (None = from the start).
    word_mask_rate, obj_mask_rate, mismatch_prob: corruption rates (spec 2.3-2.4).
    vocab_size, mask_token_id, special_token_ids: tokenizer facts for MLM corruption.
  """

  task: str
  num_answers: int = 0
  weights: tuple[tuple[str, float], ...] = ()
  semantics: str = "original"
  visual_loss_normalizer: float = losses.ORIGINAL_VISUAL_LOSS_NORMALIZER
  qa_start_step: int | None = None
  word_mask_rate: float = 0.15
  obj_mask_rate: float = 0.15
  mismatch_prob: float = 0.5
  vocab_size: int = 0
  mask_token_id: int = 103
  special_token_ids: tuple[int, ...] = (0, 101, 102)


def _pair(loss_sum, denominator):
  return jnp.stack([jnp.asarray(loss_sum, jnp.float32), jnp.asarray(denominator, jnp.float32)])


def prepare_inputs(rng, batch: Batch, hp: StepHParams, axis_name: str | None) -> Batch:
  """Pretraining: corrupts the clean batch and adds its targets; other tasks: unchanged."""
  if hp.task != "pretrain":
    return batch
  return corruption.corrupt_pretraining_batch(
    rng,
    batch,
    vocab_size=hp.vocab_size,
    mask_token_id=hp.mask_token_id,
    special_token_ids=hp.special_token_ids,
    word_mask_rate=hp.word_mask_rate,
    obj_mask_rate=hp.obj_mask_rate,
    mismatch_prob=hp.mismatch_prob,
    axis_name=axis_name,
  )


def objectives(outputs, inputs: Batch, hp: StepHParams, step) -> tuple[dict, dict]:
  """Local ``(sum, denominator)`` per objective and the objective weights.

  Returns:
    ``(pairs, weights)``: objective -> (sum, denominator) over this device's examples, and
    objective -> weight (possibly traced, e.g. QA switched on at ``qa_start_step``).
  """
  mask = inputs["example_mask"]
  if hp.task == "pretrain":
    _, pairs = losses.pretraining_losses(
      outputs,
      inputs,
      weights=dict(hp.weights),
      semantics=hp.semantics,
      visual_loss_normalizer=hp.visual_loss_normalizer,
      step=step,
      qa_start_step=hp.qa_start_step,
    )
    weights = losses.task_weights(dict(hp.weights), step=step, qa_start_step=hp.qa_start_step)
    return pairs, weights
  if hp.task == "nlvr2":
    return {"nlvr2": losses.nlvr2_loss(outputs.logits, inputs["label"], example_mask=mask)}, {
      "nlvr2": 1.0
    }
  logits = outputs.question_answering_score
  targets = losses.soft_targets(inputs["answer_ids"], inputs["answer_scores"], hp.num_answers)
  return {"qa": losses.answer_bce_loss(logits, targets, example_mask=mask)}, {"qa": 1.0}


def task_logits(outputs, hp: StepHParams):
  """The classifier logits of a fine-tuning task: [batch, A] (QA) or [batch, 2] (NLVR2)."""
  return outputs.logits if hp.task == "nlvr2" else outputs.question_answering_score


def accuracy_terms(outputs, inputs: Batch, hp: StepHParams) -> tuple[jax.Array, jax.Array]:
  """Per-example predicted label [batch] and its score [batch] (soft score / correctness)."""
  pred = jnp.argmax(task_logits(outputs, hp), axis=-1).astype(jnp.int32)
  if hp.task == "nlvr2":
    return pred, (pred == inputs["label"]).astype(jnp.float32)
  return pred, vqa_metrics.soft_scores(pred, inputs["answer_ids"], inputs["answer_scores"])


def forward(apply_fn, params, inputs: Batch, *, deterministic: bool, dropout_rng=None):
  rngs = None if deterministic else {"dropout": dropout_rng}
  return apply_fn(
    {"params": params},
    *(inputs[k] for k in MODEL_INPUTS),
    deterministic=deterministic,
    rngs=rngs,
  )


def train_step(state: ts.TrainState, batch: Batch, base_rng, *, hp: StepHParams):
  """One pmapped update on the local shard ``batch`` ([per_device, ...] arrays).

  Returns:
    ``(new_state, metrics)``; metrics are identical on every device: ``loss`` (the weighted
    total of batch-global means), one ``[sum, count]`` pair per objective (and ``accuracy``
    for fine-tuning), ``grad_norm`` and ``param_norm``.
  """
  # Unique per step and per device, across hosts (scenic's bind_rng_to_host_device).
  rng = jax.random.fold_in(base_rng, state.step)
  rng = jax.random.fold_in(rng, jax.lax.axis_index(AXIS))
  corrupt_rng, dropout_rng = jax.random.split(rng)
  inputs = prepare_inputs(corrupt_rng, batch, hp, AXIS)

  def loss_fn(params):
    outputs = forward(state.apply_fn, params, inputs, deterministic=False,
                      dropout_rng=dropout_rng)
    pairs, weights = objectives(outputs, inputs, hp, state.step)
    # Dividing the local sum by the GLOBAL denominator makes the psum of the per-device losses
    # (and of their gradients) the batch-global mean.
    global_pairs = {k: (s, jax.lax.psum(d, AXIS)) for k, (s, d) in pairs.items()}
    return losses.weighted_total(global_pairs, weights), (pairs, outputs)

  (loss, (pairs, outputs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = jax.lax.psum(grads, AXIS)
  new_state = state.apply_gradients(grads=grads)
  metrics = {name: jax.lax.psum(_pair(s, d), AXIS) for name, (s, d) in pairs.items()}
  metrics["loss"] = jax.lax.psum(loss, AXIS)
  if hp.task != "pretrain":
    _, score = accuracy_terms(outputs, inputs, hp)
    mask = inputs["example_mask"]
    metrics["accuracy"] = jax.lax.psum(_pair(jnp.sum(score * mask), jnp.sum(mask)), AXIS)
  metrics["grad_norm"] = _global_norm(grads)
  metrics["param_norm"] = _global_norm(new_state.params)
  return new_state, metrics


def _global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def eval_step(params, batch: Batch, rng, *, apply_fn, hp: StepHParams):
  """Metric sums over the global batch plus per-example predictions of this device.

  Pretraining eval corrupts inputs as in training (the original's validation is random too),
  from ``rng`` folded with the device index so it is reproducible.

  Returns:
    ``{'metrics': name -> [sum, count] (psum-ed), 'pred': [per_device] int32,
    'score': [per_device] float32}``.
  """
  rng = jax.random.fold_in(rng, jax.lax.axis_index(AXIS))
  inputs = prepare_inputs(rng, batch, hp, AXIS)
  outputs = forward(apply_fn, params, inputs, deterministic=True)
  pairs, _ = objectives(outputs, inputs, hp, step=jnp.iinfo(jnp.int32).max)
  metrics = {name: _pair(s, d) for name, (s, d) in pairs.items()}
  mask = inputs["example_mask"]
  batch_size = mask.shape[0]
  pred, score = jnp.zeros((batch_size,), jnp.int32), jnp.zeros((batch_size,), jnp.float32)
  if hp.task != "pretrain":
    pred, score = accuracy_terms(outputs, inputs, hp)
    metrics["accuracy"] = _pair(jnp.sum(score * mask), jnp.sum(mask))
    for t in range(evaluate.NUM_ANSWER_TYPES):
      in_type = mask * (inputs["answer_type"] == t)
      metrics[f"accuracy_type{t}"] = _pair(jnp.sum(score * in_type), jnp.sum(in_type))
  metrics["examples"] = _pair(jnp.sum(mask), jnp.asarray(batch_size, jnp.float32))
  return {"metrics": jax.lax.psum(metrics, AXIS), "pred": pred, "score": score}


# ------------------------------------------------------------------------------------------------
# Run setup: config validation, sizes from dataset_info.json, step counts.


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Clear errors before anything is compiled (task, mode, batch split, data directory)."""
  if config.task not in ts.TASK_MODELS:
    raise ValueError(f"config.task={config.task!r} is unknown; expected one of "
                     f"{sorted(ts.TASK_MODELS)}")
  if config.mode not in MODES:
    raise ValueError(f"config.mode={config.mode!r} is unknown; expected one of {MODES} "
                     "('demo' runs through lxmert_jax.main)")
  if (config.mode == "pretrain") != (config.task == "pretrain"):
    raise ValueError(f"config.mode={config.mode!r} does not fit config.task={config.task!r}: "
                     "mode 'pretrain' goes with task 'pretrain', 'finetune' with the others")
  k = config.optim.grad_accum_steps
  if k < 1 or config.batch_size % k:
    raise ValueError(f"config.batch_size={config.batch_size} is not divisible by "
                     f"config.optim.grad_accum_steps={k}")
  devices = jax.device_count()
  if (config.batch_size // k) % devices:
    raise ValueError(f"batch of {config.batch_size // k} examples per step (config.batch_size="
                     f"{config.batch_size} / grad_accum_steps={k}) is not divisible by the "
                     f"{devices} devices")
  if config.eval.batch_size % devices:
    raise ValueError(f"config.eval.batch_size={config.eval.batch_size} is not divisible by the "
                     f"{devices} devices")
  data_dir = config.data.data_dir
  if not data_dir or not os.path.isdir(data_dir):
    raise FileNotFoundError(f"config.data.data_dir={data_dir!r} is not a directory (write it "
                            "with tfrecords_tools or set --config.data.data_dir)")
  shards.read_info(data_dir)
  if config.mode == "eval" and not (config.eval.splits or config.eval.predict_splits):
    raise ValueError("mode 'eval' needs config.eval.splits or config.eval.predict_splits")
  if config.init_from and not os.path.exists(config.init_from):
    raise FileNotFoundError(f"config.init_from={config.init_from!r} does not exist")


def resolve_model_config(config: ml_collections.ConfigDict, info: Mapping) -> LxmertConfig:
  """``config.model`` as an LxmertConfig; fields set to 0 are read from dataset_info.json."""
  fields = {k: v for k, v in config.model.to_dict().items() if k != "dtype"}
  from_data = {
    "visual_feat_dim": int(info["feat_dim"]),
    "vocab_size": int(info.get("tokenizer", {}).get("vocab_size", 0)),
    "num_qa_labels": int(info.get("num_answers", len(info.get("answer_vocab", ())))),
  }
  for name, value in from_data.items():
    if fields.get(name) == 0:
      if not value:
        raise ValueError(f"config.model.{name}=0 means 'from dataset_info.json', which has none")
      fields[name] = value
  model_config = LxmertConfig.from_dict(fields)
  data_dir = config.data.data_dir
  if model_config.visual_feat_dim != from_data["visual_feat_dim"]:
    raise ValueError(f"config.model.visual_feat_dim={model_config.visual_feat_dim} but the "
                     f"features in {data_dir} have {from_data['visual_feat_dim']} dims")
  if from_data["vocab_size"] > model_config.vocab_size:
    raise ValueError(f"config.model.vocab_size={model_config.vocab_size} is smaller than the "
                     f"tokenizer vocabulary of {data_dir} ({from_data['vocab_size']})")
  if config.task != "nlvr2" and from_data["num_qa_labels"] and (
    model_config.num_qa_labels != from_data["num_qa_labels"]
  ):
    raise ValueError(f"config.model.num_qa_labels={model_config.num_qa_labels} but {data_dir} "
                     f"has {from_data['num_qa_labels']} answers")
  return model_config


@dataclasses.dataclass
class RunSetup:
  """Everything derived once from the config and dataset_info.json.

  Attributes:
    info: dataset_info.json.
    model_config: resolved LxmertConfig.
    answers: answer vocabulary of the task's QA head ([] for NLVR2).
    micro_batch: global examples per train step (batch_size / grad_accum_steps).
    steps_per_epoch: train steps per pass over the train splits.
    total_updates: optimizer updates of the run (t_total of the schedule).
    total_steps: train steps of the run (updates x grad_accum_steps).
    eval_every: train steps between evaluations (0 = only at the end).
    hp: the jitted steps' settings.
  """

  info: dict
  model_config: LxmertConfig
  answers: list
  micro_batch: int
  steps_per_epoch: int
  total_updates: int
  total_steps: int
  eval_every: int
  hp: StepHParams


def make_setup(config: ml_collections.ConfigDict) -> RunSetup:
  info = shards.read_info(config.data.data_dir)
  model_config = resolve_model_config(config, info)
  answers = list(info.get("answer_vocab", ())) if config.task != "nlvr2" else []
  if config.task in ts.QA_TASKS and not answers:
    raise ValueError(f"{config.data.data_dir}/dataset_info.json has no answer_vocab; task "
                     f"{config.task!r} needs one")
  k = config.optim.grad_accum_steps
  micro_batch = config.batch_size // k
  steps_per_epoch = pipeline.steps_per_epoch(
    config.data.data_dir, config.data.train_splits, config.batch_size) * k
  if config.total_steps is not None:  # Durations: total_steps wins over num_epochs.
    total_updates = int(config.total_steps)
  else:
    total_updates = max(1, int(round(config.num_epochs * steps_per_epoch / k)))
  eval_every = config.eval.every_steps
  if eval_every is None:
    eval_every = int(round(config.eval.every_epochs * steps_per_epoch))
  tokenizer = info.get("tokenizer", {})
  hp = StepHParams(task=config.task, num_answers=model_config.num_qa_labels)
  if config.task == "pretrain":
    pre = config.pretrain
    qa_start = int(round(pre.qa_start_epoch * steps_per_epoch)) if pre.qa_start_epoch else None
    hp = dataclasses.replace(
      hp,
      weights=tuple((k_, float(w)) for k_, w in pre.weights.items() if w),
      semantics=pre.semantics,
      visual_loss_normalizer=model_config.visual_loss_normalizer,
      qa_start_step=qa_start,
      word_mask_rate=pre.word_mask_rate,
      obj_mask_rate=pre.obj_mask_rate,
      mismatch_prob=pre.mismatch_prob,
      vocab_size=model_config.vocab_size,
      mask_token_id=int(tokenizer.get("mask_id", 103)),
      special_token_ids=tuple(int(tokenizer.get(k_, d)) for k_, d in
                              (("pad_id", 0), ("cls_id", 101), ("sep_id", 102))),
    )
  return RunSetup(info, model_config, answers, micro_batch, steps_per_epoch, total_updates,
                  total_updates * k, max(0, eval_every), hp)


@dataclasses.dataclass
class TrainResult:
  """What a run leaves behind besides its workdir.

  Attributes:
    metrics: the results.json contents (final train and eval metrics).
    params: final float32 params (host numpy), e.g. for an in-process fine-tune.
    model_config: the LxmertConfig used.
    answers: the QA head's answer vocabulary.
  """

  metrics: dict
  params: PyTree
  model_config: LxmertConfig
  answers: list


# ------------------------------------------------------------------------------------------------
# Host <-> device plumbing.


def _pmap_sharding():
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("devices",))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("devices"))


def shard_batch(batch: Mapping[str, np.ndarray]) -> dict:
  """[local_devices, per_device, ...] host arrays -> device-sharded arrays (no host strings)."""
  sharding = _pmap_sharding()
  return {k: jax.device_put(v, sharding) for k, v in batch.items()
          if k not in pipeline.HOST_KEYS}


def prefetch_to_device(iterator: Iterator[dict], size: int) -> Iterator[dict]:
  """Keeps ``size`` batches in flight on the devices (flax's prefetch_to_device, minus the
  per-leaf restacking copy: the pipeline already yields [local_devices, ...] arrays)."""
  import collections
  import itertools

  queue = collections.deque()

  def enqueue(n):
    for batch in itertools.islice(iterator, n):
      queue.append(shard_batch(batch))

  enqueue(max(size, 1))
  while queue:
    yield queue.popleft()
    enqueue(1)


class _SummaryWriter:
  """ADAPTER (until the tensorboard package is a dependency): clu's metric_writers import
  tensorboard at import time. This writes the same scalars with tf.summary (TensorBoard event
  files) and to the log."""

  def __init__(self, logdir: str | None):
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    self._tf = tf
    self._file = tf.summary.create_file_writer(logdir) if logdir else None
    # What tf.summary.scalar would attach: the TensorBoard scalars plugin marker.
    self._metadata = summary_pb2.SummaryMetadata(
      plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    logging.info("[%d] %s", step, ", ".join(f"{k}={v:.6g}" for k, v in scalars.items()))
    if self._file is not None:
      with self._file.as_default():
        for name, value in scalars.items():
          self._tf.summary.write(name, self._tf.constant(float(value), self._tf.float32),
                                 step=step, metadata=self._metadata)

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()


def create_writer(workdir: str, just_logging: bool):
  """clu's default writer (TensorBoard + log); the tf.summary adapter if clu cannot load it."""
  try:
    from clu import metric_writers
  except ImportError as e:
    logging.warning("clu.metric_writers unavailable (%s); writing tf.summary directly.", e)
    return _SummaryWriter(None if just_logging else workdir)
  return metric_writers.create_default_writer(workdir, just_logging=just_logging)


def _progress_hooks(config, setup: RunSetup, writer, workdir: str) -> list:
  """clu's ReportProgress and Profile on host 0 (none if clu.periodic_actions cannot load)."""
  if jax.process_index() != 0:
    return []
  try:
    from clu import periodic_actions
  except ImportError:  # Same tensorboard import; our own progress line still runs.
    return []
  hooks = [periodic_actions.ReportProgress(num_train_steps=setup.total_steps, writer=writer,
                                           every_steps=config.log_every_steps)]
  if config.get("profile_steps", 0):
    hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=config.profile_steps))
  return hooks


def is_time(step: int, every: int | None) -> bool:
  """The one rule for periodic actions (big_vision's ``itstime``)."""
  return bool(every) and every > 0 and step % every == 0


def _format_secs(secs: float) -> str:
  secs = int(max(secs, 0))
  return f"{secs // 3600}h{secs % 3600 // 60:02d}m" if secs >= 3600 else f"{secs // 60}m{secs % 60:02d}s"


# ------------------------------------------------------------------------------------------------
# The run.


class _TrainLogger:
  """Aggregates pending per-step metrics at log/checkpoint steps; stops on a non-finite loss.

  Per-step metrics stay on the devices until fetched here, so the host never blocks on a step
  it does not log.
  """

  def __init__(self, writer, config, setup: RunSetup, phase: str, start_step: int):
    self.writer, self.config, self.setup, self.phase = writer, config, setup, phase
    self.pending: list[tuple[int, Any]] = []
    self.last: dict[str, float] = {}
    self.t0, self.step0 = time.time(), start_step
    self.t_start, self.step_start = self.t0, start_step
    self.step_log = None  # step_log.StepLog of the run (set by _train).

  def add(self, step: int, metrics) -> None:
    self.pending.append((step, metrics))

  def exclude(self, seconds: float) -> None:
    """Keeps evaluation and checkpoint time out of examples/s and step time."""
    self.t0 += seconds

  def flush(self, step: int, write: bool) -> dict[str, float]:
    """Fetches pending metrics; raises FloatingPointError naming the first bad step."""
    if not self.pending:
      return self.last
    fetched = jax.device_get([m for _, m in self.pending])
    steps = [s for s, _ in self.pending]
    self.pending = []
    for s, m in zip(steps, fetched):
      loss, norm = float(np.asarray(m["loss"])[0]), float(np.asarray(m["param_norm"])[0])
      if not (math.isfinite(loss) and math.isfinite(norm)):
        raise FloatingPointError(
          f"non-finite training loss ({loss}) or params (norm {norm}) at step {s} of "
          f"{self.phase}; stopping. Checkpoints were written only before this step."
        )
    if self.step_log is not None:
      self.step_log.append(steps, [float(np.asarray(m["loss"])[0]) for m in fetched])
    if not write:
      return self.last
    out = {}
    for name in fetched[0]:
      values = np.stack([np.asarray(m[name])[0] for m in fetched])
      if values.ndim == 2:  # [sum, count] pairs: mean over the logging window.
        total = values.sum(axis=0)
        out[name if name in ("accuracy", "loss") else f"loss_{name}"] = (
          float(total[0] / total[1]) if total[1] > 0 else 0.0)
      else:
        out[name] = float(values.mean())
    now = time.time()
    dt, n = now - self.t0, step - self.step0
    step_time = dt / max(n, 1)
    out["examples_per_sec"] = n * self.setup.micro_batch / max(dt, 1e-9)
    out["step_time_ms"] = 1000 * step_time
    out["learning_rate"] = ts.learning_rate(self.config.optim, self.setup.total_updates, step)
    self.t0, self.step0 = now, step
    self.writer.write_scalars(step, {f"train/{k}": v for k, v in out.items()})
    eta = (self.setup.total_steps - step) * step_time
    logging.info(
      "[%s] step %d/%d | loss %.4f | %.1f examples/s | %.0f ms/step | ETA %s",
      self.phase, step, self.setup.total_steps, out["loss"], out["examples_per_sec"],
      out["step_time_ms"], _format_secs(eta),
    )
    self.last = out
    return out


def _eval_splits(config) -> list[str]:
  return list(pipeline.parse_splits(config.eval.splits)) if config.eval.splits else []


def _predict_splits(config) -> list[str]:
  return list(pipeline.parse_splits(config.eval.predict_splits)) if config.eval.predict_splits else []


class _Evaluator:
  """Builds each split's padded stream once and evaluates the replicated params on it."""

  def __init__(self, config, setup: RunSetup, apply_fn, workdir: str, writer):
    self.config, self.setup, self.workdir, self.writer = config, setup, workdir, writer
    self.p_eval_step = jax.pmap(
      functools.partial(eval_step, apply_fn=apply_fn, hp=setup.hp), axis_name=AXIS,
      in_axes=(0, 0, None),
    )
    self.layout = pipeline.Layout.from_info(
      config.data.data_dir, config.data.max_seq_length, 2 if config.task == "nlvr2" else 1)
    self.weights = evaluate.objective_weights(config.task, dict(setup.hp.weights) or None)
    self._data: dict[str, pipeline.EvalData] = {}

  def data(self, split: str) -> pipeline.EvalData:
    if split not in self._data:
      self._data[split] = pipeline.make_eval_dataset(
        self.config.data.data_dir, split, layout=self.layout,
        global_batch_size=self.config.eval.batch_size, threads=self.config.data.threads)
    return self._data[split]

  def __call__(self, params, rng, step: int, *, splits, write_predictions: bool) -> dict:
    results = {}
    for split in splits:
      res = evaluate.evaluate_split(self.p_eval_step, params, self.data(split), rng=rng,
                                    task=self.config.task, weights=self.weights,
                                    shard=shard_batch)
      results[split] = res.metrics
      self.writer.write_scalars(step, {f"eval_{split}/{k}": v for k, v in res.metrics.items()})
      logging.info("[eval %s] step %d: %s", split, step,
                   ", ".join(f"{k} {v:.4f}" for k, v in res.metrics.items()))
      if write_predictions:
        evaluate.write_predictions(self.config.task, split, res.predictions, self.setup.answers,
                                   os.path.join(self.workdir, "predictions"))
    return results


def _load_init_params(config, setup: RunSetup, init_params):
  """The params-only source of the restore order: in-memory params, else config.init_from."""
  if init_params is None and not config.init_from:
    return None
  family = ts.TASK_MODELS[config.task]

  def load():
    if isinstance(init_params, ckpt.LoadedParams):
      return init_params
    if isinstance(init_params, TrainResult):
      return ckpt.LoadedParams(init_params.params, init_params.model_config,
                               init_params.answers or None, "in-memory params")
    if init_params is not None:
      return ckpt.LoadedParams(init_params, None, None, "in-memory params")
    return ckpt.load_params(config.init_from, family, setup.model_config)

  return load


def _adapt_loaded(config, setup: RunSetup):
  """Transfers the QA head by answer string (original load_lxmert_qa) when asked to."""

  def adapt(loaded: ckpt.LoadedParams) -> dict:
    params = dict(loaded.params)
    if "lxmert" not in params:  # A bare backbone tree (transformers LxmertModel).
      params = {"lxmert": params}
    head = params.get("answer_head")
    if not (config.transfer_answer_head and config.task in ts.QA_TASKS and head):
      return params
    src_answers = loaded.answers
    if src_answers is None and config.get("init_answers"):
      src_answers = answers_lib.load_answer_vocab(config.init_answers)
    if src_answers is None:
      raise ValueError(
        f"config.transfer_answer_head needs the answer table of {loaded.source}; set "
        "config.init_answers to it (e.g. all_ans.json of the original pretraining data)")
    new_fc, carried = answers_lib.transfer_answer_head_params(
      head["logit_fc"], src_answers, setup.answers, final_layer="3")
    logging.info("QA head: %d of %d answers transferred from the %d-answer head of %s.",
                 carried, len(setup.answers), len(src_answers), loaded.source)
    params["answer_head"] = {"logit_fc": new_fc}
    return params

  return adapt


def run(config: ml_collections.ConfigDict, workdir: str, *, init_params=None) -> TrainResult:
  """Trains and/or evaluates as ``config.mode`` says; see ``train_and_evaluate``."""
  validate_config(config)
  pipeline.hide_accelerators_from_tf()
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  setup = make_setup(config)
  host0 = jax.process_index() == 0
  writer = create_writer(workdir, just_logging=not host0)
  phase = config.task if config.mode == "pretrain" else f"{config.mode} {config.task}"
  logging.info("[%s] %d steps (%d updates of %d examples; %d steps/epoch) on %d devices.",
               phase, setup.total_steps, setup.total_updates, config.batch_size,
               setup.steps_per_epoch, jax.device_count())

  model = ts.build_model(setup.model_config, config.task, config.model.dtype)
  tx = ts.make_optimizer(config.optim, setup.total_updates)
  init_rng, train_rng, eval_rng = jax.random.split(jax.random.PRNGKey(config.seed), 3)
  abstract = ts.abstract_train_state(init_rng, model, setup.model_config, config.task, tx)
  ts.log_parameter_overview(abstract.params)
  mngr = ckpt.make_manager(
    ckpt.checkpoint_dir(workdir), max_to_keep=config.checkpoint.max_to_keep,
    best_metric=config.eval.best_metric if _eval_splits(config) else None,
    best_mode=config.eval.best_mode, async_save=config.checkpoint.async_save)
  try:
    state, source = ckpt.restore_or_initialize(
      mngr, abstract,
      lambda: ts.init_train_state(init_rng, model, setup.model_config, config.task, tx),
      model_config=setup.model_config,
      load_init_params=_load_init_params(config, setup, init_params),
      adapt=_adapt_loaded(config, setup), dont_load=tuple(config.dont_load))
    if config.mode == "eval" and source == "fresh":
      raise ValueError(f"mode 'eval' needs a checkpoint in {workdir} or config.init_from")
    evaluator = _Evaluator(config, setup, model.apply, workdir, writer)
    rstate = jax_utils.replicate(state)
    del state
    train_metrics, preempted = {}, False
    if config.mode != "eval":
      rstate, train_metrics, preempted = _train(config, setup, rstate, train_rng, eval_rng, mngr,
                                                writer, evaluator, phase)
    step = int(jax.device_get(jax_utils.unreplicate(rstate.step)))
    if preempted:  # Resume later with the same command; no final evaluation now.
      return TrainResult({"step": step, "preempted": True}, None, setup.model_config,
                         setup.answers)
    final = {}
    for split in _eval_splits(config):
      final.update(evaluator(rstate.params, eval_rng, step, splits=[split],
                             write_predictions=config.eval.write_predictions or
                             split in _predict_splits(config)))
    # Predict-only splits have no labels: their files are written, their metrics are not kept.
    predict_only = [s for s in _predict_splits(config) if s not in final]
    if predict_only:
      evaluator(rstate.params, eval_rng, step, splits=predict_only, write_predictions=True)
    if config.mode != "eval" and mngr.latest_step() != step:
      _save(mngr, rstate, step, config, setup, final)
  finally:
    mngr.wait_until_finished()
    writer.flush()
  results = {
    "mode": config.mode, "task": config.task, "step": step, "init": source,
    "train": train_metrics, "eval": final,
  }
  if host0:
    _write_json(os.path.join(workdir, "results.json"), results)
  params = jax.device_get(jax_utils.unreplicate(rstate.params))
  mngr.close()
  return TrainResult(results, params, setup.model_config, setup.answers)


def _write_json(path: str, data) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _best_metrics(config, eval_results: Mapping[str, Mapping[str, float]]):
  splits = _eval_splits(config)
  if not splits or splits[0] not in eval_results:
    return None
  metrics = eval_results[splits[0]]
  if config.eval.best_metric not in metrics:
    raise KeyError(f"config.eval.best_metric={config.eval.best_metric!r} is not among the eval "
                   f"metrics {sorted(metrics)}")
  return {config.eval.best_metric: metrics[config.eval.best_metric]}


def _save(mngr, rstate, step: int, config, setup: RunSetup, eval_results=None) -> None:
  # Orbax copies to host before returning, so the next step may reuse (donate) the buffers.
  ckpt.save_checkpoint(mngr, step, jax_utils.unreplicate(rstate), config=config,
                       model_config=setup.model_config, answers=setup.answers,
                       metrics=_best_metrics(config, eval_results or {}))


def _train(config, setup: RunSetup, rstate, train_rng, eval_rng, mngr, writer, evaluator, phase):
  """The training loop from the restored step to ``setup.total_steps``."""
  start_step = int(jax.device_get(jax_utils.unreplicate(rstate.step)))
  if start_step >= setup.total_steps:
    logging.info("[%s] already at step %d of %d: nothing to train.", phase, start_step,
                 setup.total_steps)
    return rstate, {}, False
  p_train_step = jax.pmap(functools.partial(train_step, hp=setup.hp), axis_name=AXIS,
                          donate_argnums=(0,), in_axes=(0, 0, None))
  layout = pipeline.Layout.from_info(config.data.data_dir, config.data.max_seq_length,
                                     2 if config.task == "nlvr2" else 1)
  train_ds = pipeline.make_train_dataset(
    config.data.data_dir, config.data.train_splits, layout=layout,
    global_batch_size=setup.micro_batch, seed=config.seed, start_step=start_step,
    shuffle_buffer_groups=config.data.shuffle_buffer_groups,
    shuffle_buffer_examples=config.data.shuffle_buffer_examples,
    cycle_length=config.data.cycle_length, threads=config.data.threads)
  train_iter = prefetch_to_device(pipeline.train_iterator(train_ds),
                                  config.data.prefetch_to_device)
  logger = _TrainLogger(writer, config, setup, phase, start_step)
  logger.step_log = step_log.StepLog(evaluator.workdir, start_step,
                                     primary=jax.process_index() == 0)
  preemption.install()
  hooks = _progress_hooks(config, setup, writer, evaluator.workdir)
  train_metrics, preempted = {}, False
  for step in range(start_step + 1, setup.total_steps + 1):
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      batch = next(train_iter)
      rstate, metrics = p_train_step(rstate, batch, train_rng)
    logger.add(step, metrics)
    for hook in hooks:
      hook(step)
    last = step == setup.total_steps
    if is_time(step, config.log_every_steps) or last:
      train_metrics = logger.flush(step, write=True)
    do_eval = is_time(step, setup.eval_every) and not last and bool(_eval_splits(config))
    # The last step is saved by run() together with the final eval metrics.
    preempted = preemption.reached(mngr, step)  # SIGTERM or Orbax's sync point.
    do_save = preempted or ((is_time(step, config.checkpoint.every_steps) or do_eval) and not last)
    if do_eval or do_save:
      logger.flush(step, write=False)  # Waits for the step; never checkpoint NaN params.
      t_other = time.time()
      eval_results = None
      if do_eval:
        eval_results = evaluator(rstate.params, eval_rng, step, splits=_eval_splits(config),
                                 write_predictions=False)
      _save(mngr, rstate, step, config, setup, eval_results)
      logger.exclude(time.time() - t_other)
    if preempted:
      mngr.wait_until_finished()
      logging.warning("[%s] preempted: saved step %d and stopping.", phase, step)
      break
  preemption.uninstall()
  return rstate, train_metrics, preempted


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       init_params=None) -> dict:
  """Runs ``config`` (mode pretrain / finetune / eval) in ``workdir``; returns results.json.

  Restore order: the latest checkpoint in ``workdir/checkpoints``, else ``init_params``
  (in-memory params: a ``TrainResult``, ``checkpoint.LoadedParams`` or a param tree), else
  ``config.init_from``, else a fresh init. Several runs with different configs may follow one
  another in the same process (e.g. pretraining then fine-tuning from its ``TrainResult``).

  Returns:
    ``{'mode', 'task', 'step', 'init', 'train': {...}, 'eval': {split: {...}}}``.
  """
  return run(config, workdir, init_params=init_params).metrics
