"""Run setup: config validation, sizes from dataset_info.json, step counts, TrainState, optimizer."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from clu import parameter_overview
from flax.training import train_state

from lxmert_jax import gfile, losses, optim
from lxmert_jax.data import pipeline
from lxmert_jax.models import tasks as model_tasks
from lxmert_jax.models.config import LxmertConfig
from tfrecords_tools import shards

PyTree = Any
PRNGKey = jax.Array
# config.task -> model family of lxmert_jax.models.tasks.
TASK_MODELS = {
  "pretrain": "pretraining",
  "vqa": "qa",
  "gqa": "qa",
  "easy_vqa": "qa",
  "nlvr2": "nlvr2",
}
QA_TASKS = ("vqa", "gqa", "easy_vqa")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Modes lxmert_jax.train runs ('demo' is dispatched by lxmert_jax.main).
MODES = ("pretrain", "finetune", "eval")
# Fine-tuning QA losses (losses.answer_bce_loss / answer_mce_loss).
QA_LOSSES = ("bce", "mce")


class TrainState(train_state.TrainState):
  """flax's TrainState; ``step`` counts train steps (micro-batches under grad accumulation)."""


def build_model(model_config: LxmertConfig, task: str, dtype: str = "float32"):
  """The Linen module of ``task`` with compute ``dtype`` (params stay float32)."""
  if task not in TASK_MODELS:
    raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASK_MODELS)}")
  if dtype not in COMPUTE_DTYPES:
    raise ValueError(f"config.model.dtype must be one of {sorted(COMPUTE_DTYPES)}, got {dtype!r}")
  return model_tasks.build_model(model_config, TASK_MODELS[task], COMPUTE_DTYPES[dtype])


def make_optimizer(optim_config: ml_collections.ConfigDict, total_updates: int):
  """BertAdam (spec 2.6) with global-norm clipping, optionally accumulating micro-batches.

  Args:
    optim_config: ``config.optim``.
    total_updates: optimizer updates of the whole run (t_total of the schedule).
  """
  # With grad_accum_steps k > 1, optax.MultiSteps averages k micro-batch gradients and applies
  # one BertAdam update; the schedule counts updates, so total_updates stays in updates.
  return optim.bert_adam(
    learning_rate=optim_config.learning_rate,
    total_steps=total_updates,
    warmup_fraction=optim_config.warmup_fraction,
    weight_decay=optim_config.weight_decay,
    max_grad_norm=optim_config.max_grad_norm,
    accumulation_steps=optim_config.grad_accum_steps,
    bias_correction=optim_config.get("bias_correction", False),
  )


def learning_rate(optim_config: ml_collections.ConfigDict, total_updates: int, step: int) -> float:
  """The lr BertAdam applies at train step ``step`` (1-based), for logging."""
  updates_applied = (step - 1) // optim_config.grad_accum_steps
  schedule = optim.warmup_linear_schedule(
    optim_config.learning_rate, total_updates, optim_config.warmup_fraction
  )
  return float(schedule(updates_applied))


def _init_state(rng: PRNGKey, model, model_config: LxmertConfig, task: str, tx) -> TrainState:
  inputs = model_tasks.dummy_inputs(model_config, TASK_MODELS[task])
  params = model.init(rng, *inputs)["params"]
  state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  # A strongly typed step: a weak-typed 0 would make the second pmapped step recompile.
  return state.replace(step=jnp.zeros((), jnp.int32))


def abstract_train_state(rng: PRNGKey, model, model_config: LxmertConfig, task: str, tx):
  """The TrainState as ``jax.ShapeDtypeStruct`` leaves: nothing is allocated."""
  return jax.eval_shape(
    functools.partial(_init_state, model=model, model_config=model_config, task=task, tx=tx), rng
  )


def init_train_state(rng: PRNGKey, model, model_config: LxmertConfig, task: str, tx):
  """A freshly initialised TrainState (jitted, so init runs as one XLA program)."""
  init = functools.partial(_init_state, model=model, model_config=model_config, task=task, tx=tx)
  return jax.jit(init)(rng)


def log_parameter_overview(params: PyTree) -> int:
  """Logs clu's parameter table (shapes only) and returns the parameter count."""
  parameter_overview.log_parameter_overview(params, include_stats=False)
  count = parameter_overview.count_parameters(params)
  logging.info("Model parameters: %d (%.1f MiB in float32)", count, count * 4 / 2**20)
  return count


# ------------------------------------------------------------------------------------------------
# Settings of the jitted steps.


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
    qa_loss: fine-tuning QA loss, ``'bce'`` or ``'mce'`` (``QA_LOSSES``).
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
  qa_loss: str = "bce"


# ------------------------------------------------------------------------------------------------
# Run setup: config validation, sizes from dataset_info.json, step counts.


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Clear errors before anything is compiled (task, mode, batch split, data directory)."""
  if config.task not in TASK_MODELS:
    raise ValueError(
      f"config.task={config.task!r} is unknown; expected one of {sorted(TASK_MODELS)}"
    )
  if config.mode not in MODES:
    raise ValueError(
      f"config.mode={config.mode!r} is unknown; expected one of {MODES} "
      "('demo' runs through lxmert_jax.main)"
    )
  if config.mode != "eval" and (config.mode == "pretrain") != (config.task == "pretrain"):
    raise ValueError(
      f"config.mode={config.mode!r} does not fit config.task={config.task!r}: "
      "mode 'pretrain' goes with task 'pretrain', 'finetune' with the others"
    )
  if config.get("qa_loss", "bce") not in QA_LOSSES:
    raise ValueError(
      f"config.qa_loss={config.qa_loss!r} is unknown; expected one of {QA_LOSSES} "
      "('bce': sigmoid BCE on the soft scores x A, VQA/GQA default; 'mce': softmax CE on the "
      "best answer x A, the original's GQA --mceLoss)"
    )
  k = config.optim.grad_accum_steps
  if k < 1 or config.batch_size % k:
    raise ValueError(
      f"config.batch_size={config.batch_size} is not divisible by config.optim.grad_accum_steps={k}"
    )
  devices = jax.device_count()
  if (config.batch_size // k) % devices:
    raise ValueError(
      f"batch of {config.batch_size // k} examples per step (config.batch_size="
      f"{config.batch_size} / grad_accum_steps={k}) is not divisible by the "
      f"{devices} devices"
    )
  if config.eval.batch_size % devices:
    raise ValueError(
      f"config.eval.batch_size={config.eval.batch_size} is not divisible by the {devices} devices"
    )
  data_dir = config.data.data_dir
  if not data_dir or not gfile.isdir(data_dir):  # Local or gs://.
    raise FileNotFoundError(
      f"config.data.data_dir={data_dir!r} is not a directory (write it "
      "with tfrecords_tools or set --config.data.data_dir)"
    )
  shards.read_info(data_dir)
  if config.mode == "eval" and not (config.eval.splits or config.eval.predict_splits):
    raise ValueError("mode 'eval' needs config.eval.splits or config.eval.predict_splits")
  if config.init_from and not gfile.exists(config.init_from):
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
    raise ValueError(
      f"config.model.visual_feat_dim={model_config.visual_feat_dim} but the "
      f"features in {data_dir} have {from_data['visual_feat_dim']} dims"
    )
  if from_data["vocab_size"] > model_config.vocab_size:
    raise ValueError(
      f"config.model.vocab_size={model_config.vocab_size} is smaller than the "
      f"tokenizer vocabulary of {data_dir} ({from_data['vocab_size']})"
    )
  if (
    config.task != "nlvr2"
    and from_data["num_qa_labels"]
    and (model_config.num_qa_labels != from_data["num_qa_labels"])
  ):
    raise ValueError(
      f"config.model.num_qa_labels={model_config.num_qa_labels} but {data_dir} "
      f"has {from_data['num_qa_labels']} answers"
    )
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
  if config.task in QA_TASKS and not answers:
    raise ValueError(
      f"{config.data.data_dir}/dataset_info.json has no answer_vocab; task "
      f"{config.task!r} needs one"
    )
  k = config.optim.grad_accum_steps
  micro_batch = config.batch_size // k
  if config.mode == "eval":  # No training: the train splits need not exist.
    steps_per_epoch = k
  else:
    steps_per_epoch = (
      pipeline.steps_per_epoch(config.data.data_dir, config.data.train_splits, config.batch_size)
      * k
    )
  if config.total_steps is not None:  # Durations: total_steps wins over num_epochs.
    total_updates = int(config.total_steps)
  else:
    total_updates = max(1, int(round(config.num_epochs * steps_per_epoch / k)))
  eval_every = config.eval.every_steps
  if eval_every is None:
    eval_every = int(round(config.eval.every_epochs * steps_per_epoch))
  tokenizer = info.get("tokenizer", {})
  hp = StepHParams(
    task=config.task,
    num_answers=model_config.num_qa_labels,
    qa_loss=config.get("qa_loss", "bce"),
  )
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
      special_token_ids=tuple(
        int(tokenizer.get(k_, d)) for k_, d in (("pad_id", 0), ("cls_id", 101), ("sep_id", 102))
      ),
    )
  return RunSetup(
    info,
    model_config,
    answers,
    micro_batch,
    steps_per_epoch,
    total_updates,
    total_updates * k,
    max(0, eval_every),
    hp,
  )
