"""Side-by-side CPU benchmark: our jitted LXMERT pretraining step vs transformers + AdamW.

Both sides do the same work on the same synthetic batch (L = 20 tokens, N = 36 boxes):

* train: forward with dropout, all six pretraining losses, backward, global-norm clipping and
  the optimizer update (ours: BertAdam in ``lxmert_jax.train.train_step``, which also corrupts the
  batch in-jit; PyTorch: ``torch.optim.AdamW``);
* inference: backbone plus every pretraining head, no dropout, no gradients.

The four workloads run round-robin in ONE process after warm-up (``bench.common.alternate``), so
load from other processes hits both sides alike and the ratios stay meaningful on a shared
machine. Our compilation is ahead-of-time and reported separately.

  python -m bench.model_step --dtype float32 --batches 8 32     # ~8 min on 2 idle cores
  python -m bench.model_step --dtype bfloat16 --batches 8
"""

from __future__ import annotations

import gc
import os
import sys
import time

from bench import common

# Speed-up targets of ours over the PyTorch reference (torch time / our time).
TARGETS = {"train": 1.3, "infer": 1.2}
SEQ_LEN, NUM_BOXES = 20, 36


def analytic_flops(config, batch: int) -> dict | None:
  """FLOPs of one train step / forward from ``lxmert_jax.flops`` (None if unavailable)."""
  try:
    from lxmert_jax import flops
  except ImportError:
    return None
  out = {"train": float(flops.train_step_flops(config, SEQ_LEN, NUM_BOXES, batch))}
  if hasattr(flops, "forward_flops"):
    out["infer"] = float(flops.forward_flops(config, SEQ_LEN, NUM_BOXES, batch))
  return out


def run_batch(config, dtype: str, batch: int, torch_model, torch_opt, args) -> dict:
  """Builds both sides for one batch size, alternates the four workloads, returns the record."""
  from bench import jax_side, synthetic, torch_reference

  clean = synthetic.clean_batch(config, batch, SEQ_LEN, NUM_BOXES, seed=batch)
  targets = torch_reference.to_torch(
    synthetic.pretraining_targets(config, batch, SEQ_LEN, NUM_BOXES, seed=batch)
  )
  ours_train = jax_side.TrainBench(config, dtype, clean)
  ours_infer = jax_side.ForwardBench(ours_train.model, ours_train.params(), clean)
  workloads = {"ours_train": ours_train.step, "ours_infer": ours_infer.step}
  if torch_model is not None:
    workloads["torch_train"] = torch_reference.make_train_step(
      torch_model, torch_opt, targets, dtype
    )
    workloads["torch_infer"] = torch_reference.make_forward(torch_model, targets, dtype)
  # Each workload switches torch between train/eval mode itself, so order does not matter.
  order = ["ours_train", "torch_train", "ours_infer", "torch_infer"]
  workloads = {k: workloads[k] for k in order if k in workloads}
  start = time.perf_counter()
  times = common.alternate(workloads, warmup=args.warmup, repeats=args.repeats)
  record = {
    "batch": batch,
    "wall_seconds": time.perf_counter() - start,
    "raw_seconds": times,
    "median_seconds": {k: common.summarize(v)["median"] for k, v in times.items()},
    "summary": {k: common.summarize(v) for k, v in times.items()},
    "compile_seconds": {
      "train": ours_train.compiled.compile_seconds,
      "infer": ours_infer.compiled.compile_seconds,
    },
    "xla_flops": {"train": ours_train.compiled.flops, "infer": ours_infer.compiled.flops},
    "xla_memory": {"train": ours_train.compiled.memory, "infer": ours_infer.compiled.memory},
    "analytic_flops": analytic_flops(config, batch),
  }
  med = record["median_seconds"]
  record["speedup"] = {
    w: med[f"torch_{w}"] / med[f"ours_{w}"] for w in ("train", "infer") if f"torch_{w}" in med
  }
  del ours_train, ours_infer
  gc.collect()
  return record


def achieved(record: dict, peak_gflops: float | None) -> dict:
  """GFLOP/s of each side from one FLOP count per workload (analytic, else XLA's) and % of peak.

  The same count is used for both sides so the rates compare useful work per second even
  where one side skips work the other does.
  """
  out = {}
  for w in ("train", "infer"):
    count = (record["analytic_flops"] or {}).get(w) or record["xla_flops"].get(w)
    if not count:
      continue
    for side in ("ours", "torch"):
      sec = record["median_seconds"].get(f"{side}_{w}")
      if sec:
        rate = count / sec / 1e9
        out[f"{side}_{w}"] = {
          "gflops": rate,
          "fraction_of_peak": rate / peak_gflops if peak_gflops else None,
        }
  return out


def _rate_cells(rate: dict, key: str) -> tuple:
  """(GFLOP/s, '% of peak') of one side and workload, blanks where unknown."""
  if key not in rate:
    return None, ""
  frac = rate[key]["fraction_of_peak"]
  return rate[key]["gflops"], f"{100 * frac:.0f}%" if frac else ""


def table(records: list[dict], dtype: str) -> str:
  rows = []
  for r in records:
    for w in ("train", "infer"):
      med = r["median_seconds"]
      ours_gf, ours_pct = _rate_cells(r["achieved"], f"ours_{w}")
      torch_gf, torch_pct = _rate_cells(r["achieved"], f"torch_{w}")
      rows.append(
        (
          r["batch"],
          w,
          dtype,
          med.get(f"ours_{w}"),
          med.get(f"torch_{w}"),
          f"{r['speedup'][w]:.2f}x" if w in r["speedup"] else "",
          f">= {TARGETS[w]}x",
          ours_gf,
          torch_gf,
          ours_pct,
          torch_pct,
          r["compile_seconds"][w],
        )
      )
  headers = [
    "batch",
    "step",
    "dtype",
    "ours s",
    "torch s",
    "speed-up",
    "target",
    "ours GFLOP/s",
    "torch GFLOP/s",
    "ours % peak",
    "torch % peak",
    "our compile s",
  ]
  return common.format_table(headers, rows)


def main(argv=None):
  parser = common.base_parser(__doc__.splitlines()[0], None)
  parser.add_argument("--batches", type=int, nargs="+", default=[8, 32])
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--remat", action="store_true", help="config.remat=True on our side")
  parser.add_argument("--no_torch", action="store_true", help="time our side only")
  parser.add_argument(
    "--peak_gflops", type=float, default=None, help="skip the FMA measurement and use this peak"
  )
  args = parser.parse_args(argv)
  # One file per compute dtype, so the float32 and bfloat16 runs do not overwrite each other.
  args.json = args.json or f"bench/results/model_step_{args.dtype}.json"

  config = common.model_config(args.tiny, remat=args.remat)
  peak = {"peak_fp32_gflops": args.peak_gflops, "peak_bf16_gflops": None}
  if args.peak_gflops is None:
    from bench import cpu_peak

    peak = cpu_peak.measure(iters=2_000_000 if args.tiny else 50_000_000, gemm_size=256)
  peak_key = "peak_bf16_gflops" if args.dtype == "bfloat16" else "peak_fp32_gflops"
  torch_model = torch_opt = None
  if not args.no_torch:
    import torch

    from bench import torch_reference

    torch_model, torch_opt = torch_reference.build(config)
  records = []
  for batch in args.batches:
    record = run_batch(config, args.dtype, batch, torch_model, torch_opt, args)
    record["achieved"] = achieved(record, peak.get(peak_key))
    records.append(record)
  payload = {
    "benchmark": "model_step",
    "dtype": args.dtype,
    "config": config.to_dict(),
    "seq_len": SEQ_LEN,
    "num_boxes": NUM_BOXES,
    "warmup": args.warmup,
    "repeats": args.repeats,
    "targets": TARGETS,
    "threads": {
      "torch": None if args.no_torch else torch.get_num_threads(),
      "xla_flags": os.environ.get("XLA_FLAGS"),
    },
    "peak": peak,
    "results": records,
  }
  common.report(payload, table(records, args.dtype), args.json)


if __name__ == "__main__":
  common.reexec_with_malloc_tunables("bench.model_step", sys.argv[1:])
  main()
