"""What-if variants of our train step, timed round-robin against the project's step.

Each variant is the project's ``lxmert_jax.train.train_step`` with one change that the model or
training code could adopt; this module measures the change before anyone edits those files:

* ``masked_mlm``: the tied MLM decoder (768 x 30522) runs only at the masked positions instead
  of all B x L positions. The loss is identical (every other position has label -1 and adds
  nothing); the positions are gathered into a static buffer of K slots (K covers the
  masked count with a six-sigma margin) and a ``lax.cond`` falls back to the full decoder in
  the rare batch with more than K masked tokens, so the result is exact for every batch.
* ``no_param_norm``: the per-step ``param_norm`` metric (an extra pass over all 228M
  parameters) is left out; the loop could compute it at log steps only.
* ``rbg_dropout``: dropout masks from the ``rbg`` PRNG (XLA's RngBitGenerator) instead of
  threefry, which XLA:CPU evaluates as many integer ops per random word.
* ``optimizer_barrier``: the new moments and the new params are materialised once
  (``lax.optimization_barrier``) before anything else reads them. Without it XLA fuses the
  moment update into both the moment output and the param update, so the donated moment
  buffers have two readers and copy insertion copies every one of them each step
  (2 x 0.9 GB at base size), and likewise the params for the ``param_norm`` metric.
  (XLA:CPU removes the barriers before fusion, so this changes nothing there; kept to show it.)
* ``no_donation``: the state is not donated. XLA:CPU may run independent thunks concurrently,
  so a donated buffer read by two fusions (one of which writes its new value) is copied first:
  at base size 1.7 GiB of moment copies, 0.85 GiB of param copies and 3x the params of
  temporary memory per step. Without donation the new state goes to fresh buffers instead.

  python -m bench.variants --batch 8 --variants project masked_mlm no_param_norm rbg_dropout all
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys

import jax
import jax.numpy as jnp
import optax

from bench import common
from lxmert_jax import losses, optim, train
from lxmert_jax.models.outputs import LxmertForPreTrainingOutput

OPTIONS = ("masked_mlm", "no_param_norm", "rbg_dropout", "optimizer_barrier", "no_donation")
VARIANTS = {
  "project": (),
  **{name: (name,) for name in OPTIONS},
  "all": ("masked_mlm", "no_param_norm", "rbg_dropout", "no_donation"),
}


def masked_capacity(batch: int, seq_len: int, rate: float = 0.15) -> int:
  """Static slot count K: mean + 6 sigma of Binomial(B (L - 2), rate), rounded up to 8."""
  n = batch * max(seq_len - 2, 1)
  k = rate * n + 6 * math.sqrt(n * rate * (1 - rate))
  return min(batch * seq_len, 8 * math.ceil(k / 8))


def _forward_masked(module, inputs, positions, *, deterministic):
  """Bound-module method: backbone and heads, MLM decoder only at ``positions`` [K]."""
  out = module.lxmert(*(inputs[k] for k in train.MODEL_INPUTS), deterministic=deterministic)
  table = module.lxmert.variables["params"]["embeddings"]["word_embeddings"]["embedding"]
  hidden = out.language_output.reshape(-1, out.language_output.shape[-1])
  # positions None: every position (the fallback branch); else the K gathered slots.
  selected = hidden if positions is None else hidden[positions]
  mlm, matched = module.cls(selected, out.pooled_output, table)
  visual = module.obj_predict_head(out.vision_output)
  return LxmertForPreTrainingOutput(
    language_output=out.language_output,
    vision_output=out.vision_output,
    pooled_output=out.pooled_output,
    prediction_logits=mlm,
    cross_relationship_score=matched,
    question_answering_score=module.answer_head(out.pooled_output),
    obj_logits=visual["obj"],
    attr_logits=visual["attr"],
    feat_output=visual["feat"],
  )


def _masked_mlm_pairs(apply_fn, params, inputs, hp, step, rngs, capacity):
  """Objective (sum, denominator) pairs, the MLM term from masked positions only (exact)."""
  labels = jnp.where(inputs["example_mask"][:, None] > 0, inputs["lm_labels"], -1).reshape(-1)
  count = jnp.sum(labels != losses.IGNORE_INDEX)
  (positions,) = jnp.nonzero(labels != losses.IGNORE_INDEX, size=capacity, fill_value=0)
  slot_labels = jnp.where(jnp.arange(capacity) < count, labels[positions], -1)
  other = dict(hp.weights)
  other.pop("mlm")
  hp_rest = dataclasses.replace(hp, weights=tuple(other.items()))

  def run(selected_positions, selected_labels):
    out = apply_fn(
      {"params": params},
      inputs,
      selected_positions,
      deterministic=False,
      rngs=rngs,
      method=_forward_masked,
    )
    loss, valid = losses.per_position_cross_entropy(out.prediction_logits, selected_labels)
    pairs, _ = train.objectives(out, inputs, hp_rest, step)
    pairs["mlm"] = (jnp.sum(loss), jnp.sum(valid).astype(jnp.float32))
    return pairs  # Not the outputs: their MLM logits differ in shape between the branches.

  # More masked tokens than slots (a ~1e-9 event per batch): same result via all positions.
  return jax.lax.cond(
    count <= capacity,
    lambda: run(positions, slot_labels),
    lambda: run(None, labels),
  )


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


def make_train_step(hp: train.StepHParams, options: tuple[str, ...], batch: int, seq_len: int):
  """``train.train_step`` with the given ``options`` applied (same signature)."""
  unknown = set(options) - set(OPTIONS)
  if unknown:
    raise ValueError(f"unknown variant options {sorted(unknown)}; known: {OPTIONS}")
  if not set(options) - {"no_donation"}:  # Donation is the caller's business (TrainBench).
    return functools.partial(train.train_step, hp=hp)
  capacity = masked_capacity(batch, seq_len, hp.word_mask_rate)

  def step(state, batch_, base_rng):
    rng = jax.random.fold_in(base_rng, state.step)
    rng = jax.random.fold_in(rng, jax.lax.axis_index(train.AXIS))
    corrupt_rng, dropout_rng = jax.random.split(rng)
    if "rbg_dropout" in options:
      dropout_rng = jax.random.wrap_key_data(
        jax.random.bits(dropout_rng, (4,), jnp.uint32), impl="rbg"
      )
    inputs = train.prepare_inputs(corrupt_rng, batch_, hp, train.AXIS)

    def loss_fn(params):
      if "masked_mlm" in options:
        pairs = _masked_mlm_pairs(
          state.apply_fn, params, inputs, hp, state.step, {"dropout": dropout_rng}, capacity
        )
        weights = losses.task_weights(dict(hp.weights))
      else:
        outputs = train.forward(
          state.apply_fn, params, inputs, deterministic=False, dropout_rng=dropout_rng
        )
        pairs, weights = train.objectives(outputs, inputs, hp, state.step)
      global_pairs = {k: (s, jax.lax.psum(d, train.AXIS)) for k, (s, d) in pairs.items()}
      return losses.weighted_total(global_pairs, weights), pairs

    (loss, pairs), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.psum(grads, train.AXIS)
    if "optimizer_barrier" in options:
      params, opt_state = _bert_adam_with_barrier(grads, state.opt_state, state.params)
      new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    else:
      new_state = state.apply_gradients(grads=grads)
    metrics = {n: jax.lax.psum(train._pair(s, d), train.AXIS) for n, (s, d) in pairs.items()}
    metrics["loss"] = jax.lax.psum(loss, train.AXIS)
    metrics["grad_norm"] = train._global_norm(grads)
    if "no_param_norm" not in options:
      metrics["param_norm"] = train._global_norm(new_state.params)
    return new_state, metrics

  return step


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
    step = make_train_step(hp, VARIANTS[name], args.batch, seq_len)
    donate = "no_donation" not in VARIANTS[name]
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
      med[name],
      f"{base / med[name]:.3f}x" if base else "",
      compile_seconds[name],
      losses_first[name],
    )
    for name in args.variants
  ]
  table = common.format_table(
    ["variant", "changes", "median s", "speed-up vs project", "compile s", "first loss"], rows
  )
  payload = {
    "benchmark": "variants",
    "batch": args.batch,
    "dtype": args.dtype,
    "config": config.to_dict(),
    "masked_capacity": masked_capacity(args.batch, seq_len),
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
