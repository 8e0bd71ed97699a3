"""Where each side's train step goes: gradients (forward + backward) vs the optimizer update.

``bench.model_step`` times whole steps. This splits them, on the same synthetic batch as there
(LXMERT-base, L = 20, N = 36, float32), into the two parts every step is made of:

* **gradients**: ours ``train.loss_and_gradients`` pmapped as the loop runs it (in-jit
  corruption, forward with dropout, the six losses, backward); PyTorch ``zero_grad``, forward
  with every label, ``backward``.
* **update**: ours ``TrainState.apply_gradients`` (global-norm clipping at 1.0, BertAdam with
  weight decay) on fixed gradients; PyTorch ``clip_grad_norm_(1.0)`` + ``AdamW.step``.

The four workloads alternate round-robin in one process (PyTorch's update always follows its
own backward, which leaves the gradients it needs). Forward + backward is rated in GFLOP/s of
the analytic count (``lxmert_jax.flops``), the update in GB/s of the bytes it must move: 4-byte
params, gradients and both moments read, params and moments written (7 x 4 bytes per
parameter; clipping reads the gradients once more: 8 x 4).

  python -m bench.step_parts --batch 8       # ~3 min on 2 idle cores
"""

from __future__ import annotations

import functools
import sys

from bench import common

SEQ_LEN, NUM_BOXES = 20, 36
# Bytes per parameter an update must move at least: read p, g, m, v (and g again for the
# global norm), write p, m, v; float32.
UPDATE_BYTES_PER_PARAM = 8 * 4


def build_workloads(config, batch: int, with_torch: bool = True) -> tuple[dict, dict]:
  """name -> zero-argument callable, plus facts (param count, compile seconds)."""
  import jax

  from bench import jax_side, synthetic, torch_reference
  from lxmert_jax import train

  clean = synthetic.clean_batch(config, batch, SEQ_LEN, NUM_BOXES, seed=batch)
  ours = jax_side.TrainBench(config, "float32", clean)
  hp = jax_side.pretrain_hparams(config)
  p_grads = jax.pmap(
    functools.partial(train.loss_and_gradients, hp=hp),
    axis_name=train.AXIS,
    in_axes=(0, 0, None),
  )
  grads_fn = jax_side.aot_compile(p_grads, ours.state, ours.batch, ours.rng)
  grads, _ = grads_fn.fn(ours.state, ours.batch, ours.rng)
  p_update = jax.pmap(lambda state, g: state.apply_gradients(grads=g), axis_name=train.AXIS)
  update_fn = jax_side.aot_compile(p_update, ours.state, grads)

  def ours_grads():
    jax.block_until_ready(grads_fn.fn(ours.state, ours.batch, ours.rng))

  def ours_update():
    jax.block_until_ready(update_fn.fn(ours.state, grads))

  workloads = {"ours_grads": ours_grads, "ours_update": ours_update}
  num_params = sum(x[0].size for x in jax.tree.leaves(ours.state.params))
  if with_torch:
    import torch

    model, optimizer = torch_reference.build(config)
    targets = torch_reference.to_torch(
      synthetic.pretraining_targets(config, batch, SEQ_LEN, NUM_BOXES, seed=batch)
    )
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]

    def torch_grads():
      optimizer.zero_grad(set_to_none=True)
      model(**targets["inputs"], **targets["labels"]).loss.backward()

    def torch_update():
      torch.nn.utils.clip_grad_norm_(params, 1.0)
      optimizer.step()

    workloads.update(torch_grads=torch_grads, torch_update=torch_update)
  facts = {
    "num_params": int(num_params),
    "compile_seconds": {"grads": grads_fn.compile_seconds, "update": update_fn.compile_seconds},
    "xla_flops": {"grads": grads_fn.flops, "update": update_fn.flops},
  }
  return workloads, facts


def rates(med: dict, flops: float, num_params: int) -> dict:
  """GFLOP/s of each side's gradients and GB/s of its update from the median seconds."""
  out = {}
  for side in ("ours", "torch"):
    if f"{side}_grads" in med:
      out[f"{side}_grads_gflops"] = flops / med[f"{side}_grads"] / 1e9
      out[f"{side}_update_gbps"] = UPDATE_BYTES_PER_PARAM * num_params / med[f"{side}_update"] / 1e9
  return out


def main(argv=None):
  parser = common.base_parser(__doc__.splitlines()[0], "bench/results/step_parts.json")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--no_torch", action="store_true", help="time our side only")
  args = parser.parse_args(argv)

  from lxmert_jax import flops

  config = common.model_config(args.tiny)
  workloads, facts = build_workloads(config, args.batch, with_torch=not args.no_torch)
  times = common.alternate(workloads, warmup=args.warmup, repeats=args.repeats)
  med = {name: common.summarize(t)["median"] for name, t in times.items()}
  train_flops = float(flops.train_step_flops(config, SEQ_LEN, NUM_BOXES, args.batch))
  rate = rates(med, train_flops, facts["num_params"])
  rows = []
  for part, unit in (("grads", "GFLOP/s"), ("update", "GB/s")):
    key = "gflops" if part == "grads" else "gbps"
    ours, torch_s = med[f"ours_{part}"], med.get(f"torch_{part}")
    rows.append(
      (
        part,
        ours,
        torch_s,
        f"{torch_s / ours:.2f}x" if torch_s else "",
        rate.get(f"ours_{part}_{key}"),
        rate.get(f"torch_{part}_{key}"),
        unit,
      )
    )
  table = common.format_table(
    ["part", "ours s", "torch s", "torch / ours", "ours rate", "torch rate", "rate unit"], rows
  )
  payload = {
    "benchmark": "step_parts",
    "batch": args.batch,
    "config": config.to_dict(),
    "seq_len": SEQ_LEN,
    "num_boxes": NUM_BOXES,
    "analytic_train_flops": train_flops,
    "update_bytes_per_param": UPDATE_BYTES_PER_PARAM,
    **facts,
    "raw_seconds": times,
    "median_seconds": med,
    "rates": rate,
  }
  common.report(payload, table, args.json)


if __name__ == "__main__":
  common.reexec_with_malloc_tunables("bench.step_parts", sys.argv[1:])
  main()
