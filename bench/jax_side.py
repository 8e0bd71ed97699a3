"""Our side of the side-by-side benchmark: the project's own pmapped train step and forward.

The train step is ``lxmert_jax.train.train_step`` wrapped exactly as the training loop wraps it
(``jax.pmap`` over the local devices, axis ``'batch'``, state donated on GPU/TPU only:
``train.state_donation``): in-jit corruption (token/object masking, mismatched pairs, QA
sampling), forward with dropout, all six pretraining losses (the MLM decoder at the masked
positions), backward, global-norm clipping and the BertAdam update, plus the step's metrics.
Inference is the jitted ``model.apply`` with every pretraining head, no dropout.

Compilation is done ahead of time (``lower().compile()``) so its cost is reported separately and
XLA's own cost and memory analyses of the exact executable are available.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import jax_utils

from lxmert_jax import optim, train
from lxmert_jax import train_state as ts
from lxmert_jax.losses import LOSS_NAMES
from lxmert_jax.models.config import LxmertConfig

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def pretrain_hparams(config: LxmertConfig) -> train.StepHParams:
  """All six objectives at weight 1 (the GitHub recipe), original loss semantics."""
  return train.StepHParams(
    task="pretrain",
    num_answers=config.num_qa_labels,
    weights=tuple((name, 1.0) for name in LOSS_NAMES),
    vocab_size=config.vocab_size,
    mask_token_id=min(103, config.vocab_size - 1),
    special_token_ids=(0, min(101, config.vocab_size - 1), min(102, config.vocab_size - 1)),
  )


@dataclasses.dataclass
class Compiled:
  """An AOT-compiled executable with its compile time and XLA's analyses."""

  fn: Callable
  compile_seconds: float
  flops: float | None
  memory: dict | None


def _analyses(compiled) -> tuple[float | None, dict | None]:
  flops = memory = None
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float(cost.get("flops", 0.0)) or None
  except Exception:  # Not every backend implements it; the numbers are then simply absent.
    pass
  try:
    m = compiled.memory_analysis()
    memory = {
      k: int(getattr(m, k))
      for k in (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "alias_size_in_bytes",
        "temp_size_in_bytes",
        "generated_code_size_in_bytes",
      )
      if hasattr(m, k)
    }
  except Exception:
    pass
  return flops, memory


def aot_compile(fn, *args) -> Compiled:
  """``fn.lower(*args).compile()`` timed, plus XLA's cost and memory analyses."""
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  seconds = time.perf_counter() - start
  flops, memory = _analyses(compiled)
  return Compiled(compiled, seconds, flops, memory)


class TrainBench:
  """Owns a replicated TrainState and runs the compiled pmapped step on a fixed batch.

  Args:
    config: model config (``config.remat`` is honoured).
    dtype: compute dtype name; params and optimizer state stay float32.
    batch: {key: [batch, ...]} clean pipeline batch (``bench.synthetic.clean_batch``).
    seed: init seed.
    step_fn: a replacement for ``train.train_step`` with ``hp`` bound (``bench.variants``).
    donate: donate the state to the step; None: as the training loop does (GPU/TPU only).
  """

  def __init__(
    self,
    config: LxmertConfig,
    dtype: str,
    batch: Mapping[str, np.ndarray],
    seed: int = 0,
    step_fn: Callable | None = None,
    donate: bool | None = None,
  ):
    devices = jax.local_devices()
    n = len(devices)
    self.model = ts.build_model(config, "pretrain", dtype)
    tx = optim.bert_adam(1e-4, total_steps=10_000, warmup_fraction=0.05, max_grad_norm=1.0)
    init_rng, self.rng = jax.random.split(jax.random.PRNGKey(seed))
    state = ts.init_train_state(init_rng, self.model, config, "pretrain", tx)
    self.state = jax_utils.replicate(state, devices)
    del state
    # [batch, ...] -> [devices, batch / devices, ...], as pipeline.make_train_dataset yields.
    self.batch = train.shard_batch(
      {k: np.reshape(v, (n, -1) + v.shape[1:]) for k, v in batch.items()}
    )
    step_fn = step_fn or functools.partial(train.train_step, hp=pretrain_hparams(config))
    if donate is None:
      donate_argnums = train.state_donation()
    else:
      donate_argnums = (0,) if donate else ()
    p_step = jax.pmap(
      step_fn, axis_name=train.AXIS, donate_argnums=donate_argnums, in_axes=(0, 0, None)
    )
    self.compiled = aot_compile(p_step, self.state, self.batch, self.rng)

  def step(self):
    """One update; blocks until the new state and metrics exist."""
    self.state, metrics = self.compiled.fn(self.state, self.batch, self.rng)
    jax.block_until_ready((self.state, metrics))
    return metrics

  def params(self):
    """Unreplicated params of device 0 (shared with the forward benchmark)."""
    return jax.tree.map(lambda x: x[0], self.state.params)


class ForwardBench:
  """Jitted inference (``deterministic=True``) of every pretraining head on a fixed batch."""

  def __init__(self, model, params, batch: Mapping[str, np.ndarray]):
    self.params = params
    self.inputs = {k: jnp.asarray(batch[k]) for k in train.MODEL_INPUTS}

    def forward(params, inputs):
      return train.forward(model.apply, params, inputs, deterministic=True)

    self.compiled = aot_compile(jax.jit(forward), params, self.inputs)

  def step(self):
    out = self.compiled.fn(self.params, self.inputs)
    jax.block_until_ready(out)
    return out
