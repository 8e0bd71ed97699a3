"""TrainState, the task -> model table, the optimizer, and shape-first state creation."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from clu import parameter_overview
from flax.training import train_state

from lxmert_jax import optim
from lxmert_jax.models import tasks as model_tasks
from lxmert_jax.models.config import LxmertConfig

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
