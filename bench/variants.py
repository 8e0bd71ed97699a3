"""What-if variants of our train step, timed round-robin against the project's step.

Each variant is the project's ``lxmert_jax.train.train_step`` with one change that the training
code could adopt; this module measures the change before anyone edits that file. Four changes
measured here were adopted (``train.py``): the MLM decoder only at the masked positions, the
parameter norm only at log steps, ``rbg`` dropout masks, and no state donation on XLA:CPU; the
``project`` variant is that step. What remains to measure:

* ``optimizer_barrier``: the new moments and the new params are materialised once
  (``lax.optimization_barrier``) before anything else reads them. Without it XLA fuses the
  moment update into both the moment output and the param update, so donated moment buffers
  have two readers and copy insertion copies every one of them each step (2 x 0.9 GB at base
  size). It matters only where the state is donated (GPU/TPU): XLA:CPU removes the barriers
  before fusion, and the project does not donate there.
* ``toggle_donation``: the project's step with the other donation choice: donated on XLA:CPU
  (the project's earlier step; a donated buffer read by two fusions is copied first, 2.55 GiB
  of copies per step at base size), not donated on GPU/TPU.

  python -m bench.variants --batch 8 --variants project toggle_donation
"""

from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp
import optax

from bench import common
from lxmert_jax import optim, train
from lxmert_jax.losses import masked_capacity

OPTIONS = ("optimizer_barrier", "toggle_donation")
VARIANTS = {"project": (), **{name: (name,) for name in OPTIONS}}


def _bert_adam_with_barrier(
  grads, opt_state, params, *, clip=1.0, wd=0.01, b1=0.9, b2=0.999, eps=1e-6
):
  """``optim.bert_adam`` (as built by ``jax_side.TrainBench``) with the new moments and params
  materialised once; same state layout: (clip, BertAdamState, decay, ScaleByScheduleState)."""
  clip_state, moments, decay_state, schedule_state = opt_state
  grads = optim.clip_by_global_norm(clip).update(grads, clip_state)[0]
  mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g, moments.mu, grads)
  nu = jax.tree.map(lambda v, g: b2 * v + (1.0 - b2) * g * g, moments.nu, grads)
  mu, nu = jax.lax.optimization_barrier((mu, nu))
  lr = optim.warmup_linear_schedule(1e-4, 10_000, 0.05)(schedule_state.count)
  params = jax.tree.map(lambda p, m, v: p - lr * (m / (jnp.sqrt(v) + eps) + wd * p), params, mu, nu)
  count = optax.safe_increment(schedule_state.count)
  new_state = (
    clip_state,
    optim.BertAdamState(mu=mu, nu=nu, count=moments.count + 1),
    decay_state,
    schedule_state._replace(count=count),
  )
  return jax.lax.optimization_barrier(params), new_state


def make_train_step(hp: train.StepHParams, options: tuple[str, ...]):
  """``train.train_step`` with the given ``options`` applied (same signature)."""
  unknown = set(options) - set(OPTIONS)
  if unknown:
    raise ValueError(f"unknown variant options {sorted(unknown)}; known: {OPTIONS}")
  if "optimizer_barrier" not in options:  # Donation is the caller's business (TrainBench).
    return functools.partial(train.train_step, hp=hp)

  def step(state, batch, base_rng):
    grads, metrics = train.loss_and_gradients(state, batch, base_rng, hp=hp)
    params, opt_state = _bert_adam_with_barrier(grads, state.opt_state, state.params)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


def donates(options: tuple[str, ...]) -> bool:
  """Whether the variant's state is donated: as the training loop, unless toggled."""
  return bool(train.state_donation()) != ("toggle_donation" in options)


def main(argv=None):
  parser = common.base_parser(__doc__.splitlines()[0], "bench/results/variants.json")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
  args = parser.parse_args(argv)

  from bench import jax_side, synthetic

  config = common.model_config(args.tiny)
  seq_len, num_boxes = 20, 36
  clean = synthetic.clean_batch(config, args.batch, seq_len, num_boxes)
  hp = jax_side.pretrain_hparams(config)
  benches, compile_seconds = {}, {}
  for name in args.variants:
    step = make_train_step(hp, VARIANTS[name])
    donate = donates(VARIANTS[name])
    benches[name] = jax_side.TrainBench(config, args.dtype, clean, step_fn=step, donate=donate)
    compile_seconds[name] = benches[name].compiled.compile_seconds
  losses_first = {name: float(b.step()["loss"][0]) for name, b in benches.items()}
  times = common.alternate(
    {name: b.step for name, b in benches.items()}, warmup=args.warmup, repeats=args.repeats
  )
  med = {name: common.summarize(t)["median"] for name, t in times.items()}
  base = med.get("project")
  rows = [
    (
      name,
      VARIANTS[name] and "+".join(VARIANTS[name]) or "-",
      "yes" if donates(VARIANTS[name]) else "no",
      med[name],
      f"{base / med[name]:.3f}x" if base else "",
      compile_seconds[name],
      losses_first[name],
    )
    for name in args.variants
  ]
  table = common.format_table(
    ["variant", "changes", "donated", "median s", "speed-up vs project", "compile s", "first loss"],
    rows,
  )
  payload = {
    "benchmark": "variants",
    "batch": args.batch,
    "dtype": args.dtype,
    "config": config.to_dict(),
    "backend": jax.default_backend(),
    "donated": {name: donates(VARIANTS[name]) for name in args.variants},
    "masked_capacity": masked_capacity(args.batch, seq_len, hp.word_mask_rate),
    "raw_seconds": times,
    "median_seconds": med,
    "compile_seconds": compile_seconds,
    "first_step_loss": losses_first,
    "xla_flops": {name: b.compiled.flops for name, b in benches.items()},
  }
  common.report(payload, table, args.json)


if __name__ == "__main__":
  common.reexec_with_malloc_tunables("bench.variants", sys.argv[1:])
  main()
