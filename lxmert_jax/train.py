"""Pretraining and fine-tuning: pure train/eval steps under ``jax.pmap`` and the training loop.

``train_step``/``eval_step`` are pure functions of (state or params, batch, rng) wrapped once by
``jax.pmap`` (axis ``'batch'``; the state is donated on GPU/TPU, see ``state_donation``). Every
cross-device reduction lives inside them:
losses are batch-global means (each device divides its loss sum by the ``psum`` of the
denominators, and gradients are ``psum``-ed), so N devices compute exactly the step one device
would compute on the whole batch. The original instead averages per-GPU means under
``nn.DataParallel`` (spec G14); the difference vanishes when every device sees the same number of
labelled positions.

Pretraining corruption (token/object masking, mismatched pairs, QA-label sampling) runs inside
the jitted step from a key folded with the step and then the device index, so it is
reproducible from (seed, step, device) and never repeats across devices or hosts. The MLM
decoder runs only at the masked positions (``forward_and_objectives``), with the same loss.
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

from lxmert_jax import checkpoint as ckpt
from lxmert_jax import corruption, evaluate, gfile, losses, preemption, step_log
from lxmert_jax import train_state as ts
from lxmert_jax.data import pipeline
from lxmert_jax.metrics import vqa as vqa_metrics
from lxmert_jax.models.config import LxmertConfig

Batch = dict[str, jax.Array]
PyTree = Any
MODEL_INPUTS = ("input_ids", "visual_feats", "visual_pos", "attention_mask", "token_type_ids")
AXIS = "batch"
# Run setup lives in train_state.py; re-exported because callers know it as train.*.
MODES, StepHParams, RunSetup = ts.MODES, ts.StepHParams, ts.RunSetup
validate_config, make_setup, resolve_model_config = (
  ts.validate_config,
  ts.make_setup,
  ts.resolve_model_config,
)


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
    # The targets' "no label" value must be the one the losses ignore (-1 or -100, G8).
    ignore_index=losses.semantics_ignore_index(hp.semantics),
  )


def objectives(outputs, inputs: Batch, hp: StepHParams, step, *, mlm=None) -> tuple[dict, dict]:
  """Local ``(sum, denominator)`` per objective and the objective weights.

  Args:
    outputs: model outputs.
    inputs: the (corrupted) batch with its targets.
    hp: step settings.
    step: current (traced) step.
    mlm: pretraining only: the MLM ``(sum, denominator)`` computed elsewhere (at the masked
      positions, ``forward_and_objectives``); ``outputs.prediction_logits`` is then not read.

  Returns:
    ``(pairs, weights)``: objective -> (sum, denominator) over this device's examples, and
    objective -> weight (possibly traced, e.g. QA switched on at ``qa_start_step``).
  """
  mask = inputs["example_mask"]
  if hp.task == "pretrain":
    computed = dict(hp.weights)
    if mlm is not None:
      computed.pop("mlm")
    _, pairs = losses.pretraining_losses(
      outputs,
      inputs,
      weights=computed,
      semantics=hp.semantics,
      visual_loss_normalizer=hp.visual_loss_normalizer,
      step=step,
      qa_start_step=hp.qa_start_step,
    )
    if mlm is not None:  # First, as pretraining_losses orders them (the total sums in order).
      pairs = {"mlm": mlm, **pairs}
    weights = losses.task_weights(dict(hp.weights), step=step, qa_start_step=hp.qa_start_step)
    return pairs, weights
  if hp.task == "nlvr2":
    return {"nlvr2": losses.nlvr2_loss(outputs.logits, inputs["label"], example_mask=mask)}, {
      "nlvr2": 1.0
    }
  logits = outputs.question_answering_score
  targets = losses.soft_targets(inputs["answer_ids"], inputs["answer_scores"], hp.num_answers)
  qa_loss = losses.answer_mce_loss if hp.qa_loss == "mce" else losses.answer_bce_loss
  return {"qa": qa_loss(logits, targets, example_mask=mask)}, {"qa": 1.0}


def task_logits(outputs, hp: StepHParams):
  """The classifier logits of a fine-tuning task: [batch, A] (QA) or [batch, 2] (NLVR2)."""
  return outputs.logits if hp.task == "nlvr2" else outputs.question_answering_score


def accuracy_terms(outputs, inputs: Batch, hp: StepHParams) -> tuple[jax.Array, jax.Array]:
  """Per-example predicted label [batch] and its score [batch] (soft score / correctness)."""
  pred = jnp.argmax(task_logits(outputs, hp), axis=-1).astype(jnp.int32)
  if hp.task == "nlvr2":
    return pred, (pred == inputs["label"]).astype(jnp.float32)
  return pred, vqa_metrics.soft_scores(pred, inputs["answer_ids"], inputs["answer_scores"])


def forward(
  apply_fn, params, inputs: Batch, *, deterministic: bool, dropout_rng=None, mlm_positions=None
):
  """The model on ``inputs``; ``mlm_positions`` (pretraining model only) as in
  ``LxmertForPreTraining``."""
  rngs = None if deterministic else {"dropout": dropout_rng}
  extra = {} if mlm_positions is None else {"mlm_positions": mlm_positions}
  return apply_fn(
    {"params": params},
    *(inputs[k] for k in MODEL_INPUTS),
    deterministic=deterministic,
    rngs=rngs,
    **extra,
  )


def mlm_capacity(hp: StepHParams, lm_labels_shape: tuple[int, ...]) -> int:
  """Static number K of MLM decoder slots for [batch, seq_len] labels (``losses.masked_capacity``)."""
  batch, seq_len = lm_labels_shape
  return losses.masked_capacity(batch, seq_len, hp.word_mask_rate)


def forward_and_objectives(
  apply_fn,
  params,
  inputs: Batch,
  hp: StepHParams,
  step,
  *,
  deterministic: bool,
  dropout_rng=None,
  capacity: int | None = None,
):
  """The model and ``objectives``; for pretraining the MLM decoder runs at K slots only.

  The tied MLM decoder (hidden x vocab: ~8% of a base-size train step when it runs at all
  B x L positions) is applied only at the labelled positions, gathered into K static slots
  (``losses.mlm_slots``); every other position has no label and adds nothing to the loss, so
  the MLM ``(sum, denominator)`` is the full decoder's. A batch with more than K labelled
  positions (K is six sigma above the mean: a ~1e-9 event) takes a ``lax.cond`` branch that
  decodes every position from the same backbone outputs, so the result is exact for every
  batch. Other tasks, or K >= B x L: the model and ``objectives`` as they are.

  Args:
    apply_fn, params: the model's ``apply`` and its params.
    inputs: the (corrupted) local batch.
    hp: step settings.
    step: current (traced) step.
    deterministic, dropout_rng: as ``forward``.
    capacity: K; default ``mlm_capacity`` of the batch (a test may force the fallback).

  Returns:
    ``(outputs, pairs, weights)`` as ``forward`` and ``objectives``; for pretraining with slots,
    ``outputs.prediction_logits`` is [K, vocab].
  """
  run = functools.partial(
    forward, apply_fn, params, inputs, deterministic=deterministic, dropout_rng=dropout_rng
  )
  decodes_mlm = hp.task == "pretrain" and "mlm" in dict(hp.weights)
  if decodes_mlm and capacity is None:
    capacity = mlm_capacity(hp, inputs["lm_labels"].shape)
  if not decodes_mlm or capacity >= inputs["lm_labels"].size:  # Slots would save nothing.
    outputs = run()
    return (outputs, *objectives(outputs, inputs, hp, step))
  lm_labels, example_mask = inputs["lm_labels"], inputs["example_mask"]
  ignore_index = losses.semantics_ignore_index(hp.semantics)
  slots = losses.mlm_slots(
    lm_labels, capacity, ignore_index=ignore_index, example_mask=example_mask
  )
  outputs = run(mlm_positions=slots.positions)

  def at_slots():
    return losses.masked_lm_loss(
      outputs.prediction_logits,
      slots.labels,
      ignore_index=ignore_index,
      example_mask=slots.example_mask,
    )

  def at_every_position():  # More labelled positions than slots.
    logits, _ = apply_fn(
      {"params": params},
      outputs.language_output,
      outputs.pooled_output,
      method="pretraining_heads",
    )
    return losses.masked_lm_loss(
      logits, lm_labels, ignore_index=ignore_index, example_mask=example_mask
    )

  mlm = jax.lax.cond(slots.count <= capacity, at_slots, at_every_position)
  return (outputs, *objectives(outputs, inputs, hp, step, mlm=mlm))


def dropout_key(rng: jax.Array) -> jax.Array:
  """A key of the ``rbg`` PRNG (XLA's RngBitGenerator) made from the threefry key ``rng``.

  Dropout draws a random word per activation. jax's default threefry is traced as a chain of
  integer ops per word, which XLA:CPU evaluates slowly; XLA's own RngBitGenerator makes the
  base-size train step measurably faster (BENCHMARKS.md). Its bits may differ between backends
  and XLA versions, so it is used only for dropout masks (same distribution; which stream does
  not matter); the corruption (masked tokens and boxes, mismatches, QA samples: the training
  data itself) stays on threefry, reproducible from (seed, step, device) on every backend.
  """
  return jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl="rbg")


def loss_and_gradients(state: ts.TrainState, batch: Batch, base_rng, *, hp: StepHParams):
  """Everything of ``train_step`` but the update: global gradients and the step's metrics.

  Returns:
    ``(grads, metrics)``: gradients of the batch-global loss (identical on every device) and
    the metrics ``train_step`` returns.
  """
  # Unique per step and per device, across hosts (scenic's bind_rng_to_host_device).
  rng = jax.random.fold_in(base_rng, state.step)
  rng = jax.random.fold_in(rng, jax.lax.axis_index(AXIS))
  corrupt_rng, dropout_rng = jax.random.split(rng)
  inputs = prepare_inputs(corrupt_rng, batch, hp, AXIS)

  def loss_fn(params):
    outputs, pairs, weights = forward_and_objectives(
      state.apply_fn,
      params,
      inputs,
      hp,
      state.step,
      deterministic=False,
      dropout_rng=dropout_key(dropout_rng),
    )
    # Dividing the local sum by the GLOBAL denominator makes the psum of the per-device losses
    # (and of their gradients) the batch-global mean.
    global_pairs = {k: (s, jax.lax.psum(d, AXIS)) for k, (s, d) in pairs.items()}
    return losses.weighted_total(global_pairs, weights), (pairs, outputs)

  (loss, (pairs, outputs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  # On one device the psum is an identity that XLA still materialises as a copy of every
  # gradient (an all-reduce into a new buffer, 0.85 GiB at base size).
  if jax.lax.axis_size(AXIS) > 1:
    grads = jax.lax.psum(grads, AXIS)
  metrics = {name: jax.lax.psum(_pair(s, d), AXIS) for name, (s, d) in pairs.items()}
  metrics["loss"] = jax.lax.psum(loss, AXIS)
  if hp.task != "pretrain":
    _, score = accuracy_terms(outputs, inputs, hp)
    mask = inputs["example_mask"]
    metrics["accuracy"] = jax.lax.psum(_pair(jnp.sum(score * mask), jnp.sum(mask)), AXIS)
  metrics["grad_norm"] = _global_norm(grads)
  return grads, metrics


def train_step(state: ts.TrainState, batch: Batch, base_rng, *, hp: StepHParams):
  """One pmapped update on the local shard ``batch`` ([per_device, ...] arrays).

  Returns:
    ``(new_state, metrics)``; metrics are identical on every device: ``loss`` (the weighted
    total of batch-global means), one ``[sum, count]`` pair per objective (and ``accuracy``
    for fine-tuning) and ``grad_norm``. The parameter norm is not a step metric (it is one more
    pass over every parameter); the loop computes it when it logs (``param_norm``).
  """
  grads, metrics = loss_and_gradients(state, batch, base_rng, hp=hp)
  return state.apply_gradients(grads=grads), metrics


def state_donation() -> tuple[int, ...]:
  """``donate_argnums`` of the pmapped ``train_step``: the state on GPU/TPU, nothing on CPU.

  Donation lets an accelerator write the new state into the old one's memory. XLA:CPU may run
  independent thunks concurrently, so a donated buffer read by two fusions (one of which writes
  its new value) is copied first: at base size 2.55 GiB of moment and param copies per step,
  and 3x the params of temporaries (BENCHMARKS.md). Without donation the new state goes to fresh
  buffers instead, which is cheaper there.
  """
  return () if jax.default_backend() == "cpu" else (0,)


def _global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


# The norm of replicated params (one value per local device); called at log steps only.
_replicated_global_norm = jax.pmap(_global_norm, axis_name=AXIS)


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
  outputs, pairs, _ = forward_and_objectives(
    apply_fn, params, inputs, hp, jnp.iinfo(jnp.int32).max, deterministic=True
  )
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
  return {k: jax.device_put(v, sharding) for k, v in batch.items() if k not in pipeline.HOST_KEYS}


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


def replicate(tree):
  """One copy of ``tree`` per local device, laid out exactly as ``p_train_step`` returns it.

  ``jax_utils.replicate`` places the copies on a mesh axis of its own; the pmapped step's
  outputs live on the ``AXIS`` mesh, so feeding them back at step 2 would compile the whole
  train step a second time. One pass through an identity pmap gives step 1 the same layout.
  """
  return jax.pmap(lambda x: x, axis_name=AXIS)(jax_utils.replicate(tree))


def create_writer(workdir: str, just_logging: bool):
  """clu's default writer: TensorBoard event files plus the log (log only on other hosts).

  Assembled as ``clu.metric_writers.create_default_writer`` does it, minus its
  ``etils.epath.Path(workdir)``: epath knows only some URL schemes, while TensorFlow's summary
  writer takes every path ``tf.io.gfile`` does (local, gs://, ...).
  """
  from clu import metric_writers

  writers = [metric_writers.LoggingWriter()]
  if not just_logging:
    writers.append(metric_writers.SummaryWriter(workdir))
  return metric_writers.AsyncMultiWriter(writers)


def _progress_hooks(config, setup: RunSetup, writer, workdir: str) -> list:
  """clu's ReportProgress and Profile on host 0."""
  from clu import periodic_actions

  if jax.process_index() != 0:
    return []
  hooks = [
    periodic_actions.ReportProgress(
      num_train_steps=setup.total_steps, writer=writer, every_steps=config.log_every_steps
    )
  ]
  if config.get("profile_steps", 0):
    hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=config.profile_steps))
  return hooks


def is_time(step: int, every: int | None) -> bool:
  """The one rule for periodic actions (big_vision's ``itstime``)."""
  return bool(every) and every > 0 and step % every == 0


def _format_secs(secs: float) -> str:
  secs = int(max(secs, 0))
  return (
    f"{secs // 3600}h{secs % 3600 // 60:02d}m" if secs >= 3600 else f"{secs // 60}m{secs % 60:02d}s"
  )


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

  def flush(self, step: int, params, write: bool) -> dict[str, float]:
    """Fetches pending metrics and the norm of ``params`` (the replicated params after
    ``step``); raises FloatingPointError naming the first bad step."""
    if not self.pending:
      return self.last
    fetched = jax.device_get([m for _, m in self.pending])
    steps = [s for s, _ in self.pending]
    self.pending = []
    param_norm = float(np.asarray(_replicated_global_norm(params))[0])
    norms = [None] * (len(steps) - 1) + [param_norm]  # Known after the last pending step only.
    for s, m, norm in zip(steps, fetched, norms):
      loss, grad_norm = float(np.asarray(m["loss"])[0]), float(np.asarray(m["grad_norm"])[0])
      if not (math.isfinite(loss) and math.isfinite(grad_norm)) or (
        norm is not None and not math.isfinite(norm)
      ):
        raise FloatingPointError(
          f"non-finite training loss ({loss}), gradients (norm {grad_norm}) or params "
          f"(norm {norm if norm is not None else 'not computed'}) at step {s} of "
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
          float(total[0] / total[1]) if total[1] > 0 else 0.0
        )
      else:
        out[name] = float(values.mean())
    out["param_norm"] = param_norm
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
      self.phase,
      step,
      self.setup.total_steps,
      out["loss"],
      out["examples_per_sec"],
      out["step_time_ms"],
      _format_secs(eta),
    )
    self.last = out
    return out


def run(config: ml_collections.ConfigDict, workdir: str, *, init_params=None) -> TrainResult:
  """Trains and/or evaluates as ``config.mode`` says; see ``train_and_evaluate``."""
  validate_config(config)
  pipeline.hide_accelerators_from_tf()
  workdir = gfile.abspath(workdir)  # Local or gs://: TensorBoard, Orbax and gfile write both.
  gfile.makedirs(workdir)
  setup = make_setup(config)
  host0 = jax.process_index() == 0
  writer = create_writer(workdir, just_logging=not host0)
  phase = config.task if config.mode == "pretrain" else f"{config.mode} {config.task}"
  logging.info(
    "[%s] %d steps (%d updates of %d examples; %d steps/epoch) on %d devices.",
    phase,
    setup.total_steps,
    setup.total_updates,
    config.batch_size,
    setup.steps_per_epoch,
    jax.device_count(),
  )

  model = ts.build_model(setup.model_config, config.task, config.model.dtype)
  tx = ts.make_optimizer(config.optim, setup.total_updates)
  init_rng, train_rng, eval_rng = jax.random.split(jax.random.PRNGKey(config.seed), 3)
  abstract = ts.abstract_train_state(init_rng, model, setup.model_config, config.task, tx)
  ts.log_parameter_overview(abstract.params)
  mngr = ckpt.make_manager(
    ckpt.checkpoint_dir(workdir),
    max_to_keep=config.checkpoint.max_to_keep,
    best_metric=config.eval.best_metric if evaluate.eval_splits(config) else None,
    best_mode=config.eval.best_mode,
    async_save=config.checkpoint.async_save,
  )
  try:
    state, source = ckpt.restore_or_initialize(
      mngr,
      abstract,
      lambda: ts.init_train_state(init_rng, model, setup.model_config, config.task, tx),
      model_config=setup.model_config,
      load_init_params=ckpt.init_params_loader(
        init_params, config.init_from, ts.TASK_MODELS[config.task], setup.model_config
      ),
      adapt=ckpt.qa_head_adapter(
        transfer=config.transfer_answer_head and config.task in ts.QA_TASKS,
        answers=setup.answers,
        init_answers=config.get("init_answers", ""),
      ),
      dont_load=tuple(config.dont_load),
    )
    if config.mode == "eval" and source == "fresh":
      raise ValueError(f"mode 'eval' needs a checkpoint in {workdir} or config.init_from")
    p_eval_step = jax.pmap(
      functools.partial(eval_step, apply_fn=model.apply, hp=setup.hp),
      axis_name=AXIS,
      in_axes=(0, 0, None),
    )
    evaluator = evaluate.Evaluator(
      config,
      p_eval_step,
      shard_batch,
      weights=evaluate.objective_weights(config.task, dict(setup.hp.weights) or None),
      answers=setup.answers,
      workdir=workdir,
      writer=writer,
    )
    rstate = replicate(state)
    del state
    train_metrics, preempted = {}, False
    if config.mode != "eval":
      rstate, train_metrics, preempted = _train(
        config, setup, rstate, train_rng, eval_rng, mngr, writer, evaluator, phase
      )
    step = int(jax.device_get(jax_utils.unreplicate(rstate.step)))
    if preempted:  # Resume later with the same command; no final evaluation now.
      return TrainResult({"step": step, "preempted": True}, None, setup.model_config, setup.answers)
    final = {}
    for split in evaluate.eval_splits(config):
      final.update(
        evaluator(
          rstate.params,
          eval_rng,
          step,
          splits=[split],
          write_predictions=config.eval.write_predictions
          or split in evaluate.predict_splits(config),
        )
      )
    # Predict-only splits have no labels: their files are written, their metrics are not kept.
    predict_only = [s for s in evaluate.predict_splits(config) if s not in final]
    if predict_only:
      evaluator(rstate.params, eval_rng, step, splits=predict_only, write_predictions=True)
    if config.mode != "eval" and mngr.latest_step() != step:
      _save(mngr, rstate, step, config, setup, final)
  finally:
    mngr.wait_until_finished()
    writer.flush()
  results = {
    "mode": config.mode,
    "task": config.task,
    "step": step,
    "init": source,
    "train": train_metrics,
    "eval": final,
  }
  if host0:
    _write_json(os.path.join(workdir, "results.json"), results)
  params = jax.device_get(jax_utils.unreplicate(rstate.params))
  mngr.close()
  return TrainResult(results, params, setup.model_config, setup.answers)


def _write_json(path: str, data) -> None:
  """Writes ``path`` (local or URL) under a temporary name, then renames it into place."""
  tmp = path + ".tmp"
  with gfile.open(tmp, "w") as f:
    json.dump(data, f, indent=2, sort_keys=True)
  gfile.replace(tmp, path)


def _best_metrics(config, eval_results: Mapping[str, Mapping[str, float]]):
  splits = evaluate.eval_splits(config)
  if not splits or splits[0] not in eval_results:
    return None
  metrics = eval_results[splits[0]]
  if config.eval.best_metric not in metrics:
    raise KeyError(
      f"config.eval.best_metric={config.eval.best_metric!r} is not among the eval "
      f"metrics {sorted(metrics)}"
    )
  return {config.eval.best_metric: metrics[config.eval.best_metric]}


def _save(mngr, rstate, step: int, config, setup: RunSetup, eval_results=None) -> None:
  # Orbax copies to host before returning, so the next step may reuse (donate) the buffers.
  ckpt.save_checkpoint(
    mngr,
    step,
    jax_utils.unreplicate(rstate),
    config=config,
    model_config=setup.model_config,
    answers=setup.answers,
    metrics=_best_metrics(config, eval_results or {}),
  )


def _train(config, setup: RunSetup, rstate, train_rng, eval_rng, mngr, writer, evaluator, phase):
  """The training loop from the restored step to ``setup.total_steps``."""
  start_step = int(jax.device_get(jax_utils.unreplicate(rstate.step)))
  if start_step >= setup.total_steps:
    logging.info(
      "[%s] already at step %d of %d: nothing to train.", phase, start_step, setup.total_steps
    )
    return rstate, {}, False
  p_train_step = jax.pmap(
    functools.partial(train_step, hp=setup.hp),
    axis_name=AXIS,
    donate_argnums=state_donation(),
    in_axes=(0, 0, None),
  )
  layout = pipeline.Layout.from_info(
    config.data.data_dir, config.data.max_seq_length, 2 if config.task == "nlvr2" else 1
  )
  train_ds = pipeline.make_train_dataset(
    config.data.data_dir,
    config.data.train_splits,
    layout=layout,
    global_batch_size=setup.micro_batch,
    seed=config.seed,
    start_step=start_step,
    shuffle_buffer_groups=config.data.shuffle_buffer_groups,
    shuffle_buffer_examples=config.data.shuffle_buffer_examples,
    cycle_length=config.data.cycle_length,
    threads=config.data.threads,
  )
  train_iter = prefetch_to_device(pipeline.train_iterator(train_ds), config.data.prefetch_to_device)
  logger = _TrainLogger(writer, config, setup, phase, start_step)
  logger.step_log = step_log.StepLog(
    evaluator.workdir, start_step, primary=jax.process_index() == 0
  )
  preemption.install()
  # Whatever ends the loop (done, preempted, NaN, a data error), the process's SIGTERM handler
  # is put back: a caller that goes on (tests, notebooks, a fine-tune after pretraining) must
  # not keep ours.
  try:
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
        train_metrics = logger.flush(step, rstate.params, write=True)
      do_eval = is_time(step, setup.eval_every) and not last and bool(evaluate.eval_splits(config))
      # The last step is saved by run() together with the final eval metrics.
      preempted = preemption.reached(mngr, step)  # SIGTERM or Orbax's sync point.
      do_save = preempted or (
        (is_time(step, config.checkpoint.every_steps) or do_eval) and not last
      )
      if do_eval or do_save:
        # Waits for the step; never checkpoint NaN params.
        logger.flush(step, rstate.params, write=False)
        t_other = time.time()
        eval_results = None
        if do_eval:
          eval_results = evaluator(
            rstate.params,
            eval_rng,
            step,
            splits=evaluate.eval_splits(config),
            write_predictions=False,
          )
        _save(mngr, rstate, step, config, setup, eval_results)
        logger.exclude(time.time() - t_other)
      if preempted:
        mngr.wait_until_finished()
        logging.warning("[%s] preempted: saved step %d and stopping.", phase, step)
        break
  finally:
    preemption.uninstall()
  return rstate, train_metrics, preempted


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, init_params=None
) -> dict:
  """Runs ``config`` (mode pretrain / finetune / eval) in ``workdir``; returns results.json.

  Restore order: the latest checkpoint in ``workdir/checkpoints``, else ``init_params``
  (in-memory params: a ``TrainResult``, ``checkpoint.LoadedParams`` or a param tree), else
  ``config.init_from``, else a fresh init. Several runs with different configs may follow one
  another in the same process (e.g. pretraining then fine-tuning from its ``TrainResult``).

  Returns:
    ``{'mode', 'task', 'step', 'init', 'train': {...}, 'eval': {split: {...}}}``.
  """
  return run(config, workdir, init_params=init_params).metrics
