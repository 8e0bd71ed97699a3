"""Memory of the pretraining step per example, with and without rematerialisation.

Nothing is allocated or run: the project's pmapped train step is lowered on abstract shapes
(``jax.ShapeDtypeStruct``) and compiled, and XLA's ``memory_analysis()`` of the executable gives

  peak = arguments (params, optimizer moments, batch) + outputs not aliased to donated inputs
         + temporaries (activations kept for the backward pass, gradients, optimizer scratch).

Compiling two batch sizes separates the fixed part from the per-example slope:

  per_example = (temp(B2) - temp(B1)) / (B2 - B1),   fixed = peak(B1) - per_example * B1,

and the largest batch that fits a device of M bytes is floor((M - fixed) / per_example). This is
an estimate: it uses the CPU compiler's buffer assignment, while a GPU/TPU compiler fuses and
schedules differently (usually tighter), and it ignores allocator fragmentation.

  python -m bench.memory                     # base size, ~4 compiles
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from bench import common

GIB = 2**30
SEQ_LEN, NUM_BOXES = 20, 36


def abstract_batch(config, batch: int, seq_len: int, num_boxes: int) -> dict:
  """ShapeDtypeStructs of one device's clean pipeline batch, with the leading device axis."""
  from bench import synthetic

  concrete = synthetic.clean_batch(config, 1, seq_len, num_boxes)
  return {
    k: jax.ShapeDtypeStruct((1, batch) + v.shape[1:], jnp.dtype(v.dtype))
    for k, v in concrete.items()
  }


def compile_step(config, dtype: str, batch: int, seq_len=SEQ_LEN, num_boxes=NUM_BOXES) -> dict:
  """Compiles the pmapped train step for one device holding ``batch`` examples."""
  from bench import jax_side
  from lxmert_jax import optim, train
  from lxmert_jax import train_state as ts

  model = ts.build_model(config, "pretrain", dtype)
  tx = optim.bert_adam(1e-4, total_steps=10_000, warmup_fraction=0.05, max_grad_norm=1.0)
  state = ts.abstract_train_state(jax.random.PRNGKey(0), model, config, "pretrain", tx)
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct((1,) + x.shape, x.dtype), state)
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
  p_step = jax.pmap(
    functools.partial(train.train_step, hp=jax_side.pretrain_hparams(config)),
    axis_name=train.AXIS,
    # As the training loop does on GPU/TPU, the devices this estimate is for (on CPU the loop
    # does not donate: train.state_donation).
    donate_argnums=(0,),
    in_axes=(0, 0, None),
  )
  compiled = jax_side.aot_compile(
    p_step, state, abstract_batch(config, batch, seq_len, num_boxes), rng
  )
  m = compiled.memory or {}
  peak = (
    m.get("argument_size_in_bytes", 0)
    + m.get("output_size_in_bytes", 0)
    - m.get("alias_size_in_bytes", 0)
    + m.get("temp_size_in_bytes", 0)
  )
  return {
    "batch": batch,
    "remat": config.remat,
    "memory": m,
    "peak_bytes": peak,
    "compile_seconds": compiled.compile_seconds,
    "xla_flops": compiled.flops,
  }


def fit(small: dict, large: dict, device_bytes: float) -> dict:
  """Per-example slope, fixed part and the largest batch fitting ``device_bytes``."""
  # Peak includes the batch arguments, so its slope is the whole per-example cost.
  per_example = (large["peak_bytes"] - small["peak_bytes"]) / (large["batch"] - small["batch"])
  fixed = small["peak_bytes"] - per_example * small["batch"]
  max_batch = math.floor((device_bytes - fixed) / per_example) if per_example > 0 else None
  return {"per_example_bytes": per_example, "fixed_bytes": fixed, "max_batch": max_batch}


def main(argv=None):
  parser = common.base_parser(__doc__.splitlines()[0], "bench/results/memory.json")
  parser.add_argument("--batches", type=int, nargs=2, default=[8, 32])
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
  parser.add_argument("--device_gib", type=float, default=16.0)
  parser.add_argument(
    "--remat_modes", nargs="+", choices=("off", "on"), default=["off", "on"], help="config.remat"
  )
  args = parser.parse_args(argv)

  base = common.model_config(args.tiny)
  device_bytes = args.device_gib * GIB
  results, rows = [], []
  for remat in (mode == "on" for mode in args.remat_modes):
    config = base.replace(remat=remat)
    small, large = (compile_step(config, args.dtype, b) for b in args.batches)
    est = fit(small, large, device_bytes)
    results.append({"remat": remat, "compiles": [small, large], **est})
    rows.append(
      (
        "on" if remat else "off",
        args.dtype,
        small["peak_bytes"] / GIB,
        large["peak_bytes"] / GIB,
        est["per_example_bytes"] / 2**20,
        est["fixed_bytes"] / GIB,
        est["max_batch"],
      )
    )
  headers = [
    "remat",
    "dtype",
    f"peak GiB @ B={args.batches[0]}",
    f"peak GiB @ B={args.batches[1]}",
    "MiB / example",
    "fixed GiB",
    f"max batch in {args.device_gib:g} GiB (est.)",
  ]
  payload = {
    "benchmark": "memory",
    "dtype": args.dtype,
    "config": base.to_dict(),
    "seq_len": SEQ_LEN,
    "num_boxes": NUM_BOXES,
    "device_gib": args.device_gib,
    "results": results,
  }
  common.report(payload, common.format_table(headers, rows), args.json)


if __name__ == "__main__":
  main()
