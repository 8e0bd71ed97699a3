"""Accelerator benchmark: bf16 pretraining step at base size, global batch 256, on one host.

Measures examples/s, model-FLOPs utilisation (MFU) from the analytic FLOP count (checked
against XLA's cost analysis of the compiled step), peak device memory, and the projected time
of the original pretraining schedule (20 epochs of 9.18M sentence-image pairs). Runs the
project's pmapped ``lxmert_jax.train.train_step`` over all local devices, like the training loop.

Prints what it finds (JAX version, backend, devices) and always writes the JSON, also when no
accelerator is visible (``status: no_accelerator``, exit code 3). ``--smoke`` runs a tiny model
on whatever backend exists (CPU included) to check the script itself.

  bash bench/device.sh                  # on the accelerator machine; JSON to $OUT
  python -m bench.device_bench --smoke  # anywhere, seconds
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import traceback

from bench import common

# Dense bf16 peak FLOP/s per chip (vendor datasheets; no structured sparsity). Matched as
# substrings of jax's device_kind, most specific first.
PEAK_BF16_FLOPS = (
  ("H100 PCIe", 756e12),
  ("H100", 989.4e12),
  ("H200", 989.4e12),
  ("GH200", 989.4e12),
  ("A100", 312e12),
  ("L40S", 362e12),
  ("L4", 121e12),
  ("TPU v6", 918e12),
  ("TPU v5p", 459e12),
  ("TPU v5", 197e12),  # v5 lite (v5e)
  ("TPU v4", 275e12),
)
PRETRAIN_PAIRS = 9.18e6  # Sentence-image pairs of the original pretraining data (spec 2.7).
PRETRAIN_EPOCHS = 20
SEQ_LEN, NUM_BOXES = 20, 36
EXIT_NO_ACCELERATOR = 3


def peak_flops(device_kind: str) -> float | None:
  for name, flops in PEAK_BF16_FLOPS:
    if name.lower() in device_kind.lower():
      return flops
  return None


def environment() -> dict:
  import jax

  devices = jax.local_devices()
  return {
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "device_kind": devices[0].device_kind,
    "num_local_devices": len(devices),
    "devices": [str(d) for d in devices],
  }


def peak_memory_bytes() -> int | None:
  """Max over local devices of the allocator's peak (None where the backend has no stats)."""
  import jax

  peaks = []
  for d in jax.local_devices():
    try:
      stats = d.memory_stats() or {}
    except Exception:  # CPU backends may not implement it.
      stats = {}
    if "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  return max(peaks) if peaks else None


def run(config, dtype: str, batch: int, steps: int, warmup: int) -> dict:
  """Compiles and times the train step; returns the measurements."""
  import jax

  from bench import jax_side, synthetic

  clean = synthetic.clean_batch(config, batch, SEQ_LEN, NUM_BOXES)
  bench = jax_side.TrainBench(config, dtype, clean)
  for _ in range(warmup):
    bench.step()
  # Per-step times (host blocks every step) and a pipelined run (steps dispatched back to
  # back, as the training loop does), whose mean is the sustained throughput.
  per_step = [common.time_call(bench.step) for _ in range(steps)]
  start = time.perf_counter()
  state, metrics = bench.state, None
  for _ in range(steps):
    state, metrics = bench.compiled.fn(state, bench.batch, bench.rng)
  jax.block_until_ready((state, metrics))
  pipelined = (time.perf_counter() - start) / steps
  bench.state = state
  loss = float(jax.device_get(metrics["loss"])[0])
  return {
    "batch": batch,
    "compile_seconds": bench.compiled.compile_seconds,
    "xla_flops_per_device": bench.compiled.flops,
    "xla_memory": bench.compiled.memory,
    "step_seconds": per_step,
    "median_step_seconds": statistics.median(per_step),
    "pipelined_step_seconds": pipelined,
    "examples_per_sec": batch / pipelined,
    "final_loss": loss,
    "peak_memory_bytes": peak_memory_bytes(),
  }


def summarize(result: dict, config, batch: int, device_kind: str, num_devices: int) -> dict:
  """MFU (analytic and XLA counts) and the projected pretraining time."""
  out = {}
  try:
    from lxmert_jax import flops

    analytic = float(flops.train_step_flops(config, SEQ_LEN, NUM_BOXES, batch))
  except ImportError:
    analytic = None
  xla = result["xla_flops_per_device"]
  xla_total = xla * num_devices if xla else None
  peak = peak_flops(device_kind)
  sec = result["pipelined_step_seconds"]
  out["analytic_flops_per_step"] = analytic
  out["xla_flops_per_step"] = xla_total
  out["xla_over_analytic"] = xla_total / analytic if analytic and xla_total else None
  out["peak_flops_per_device"] = peak
  if peak:
    total_peak = peak * num_devices
    out["mfu_analytic"] = analytic / sec / total_peak if analytic else None
    out["mfu_xla"] = xla_total / sec / total_peak if xla_total else None
  hours = PRETRAIN_PAIRS * PRETRAIN_EPOCHS / result["examples_per_sec"] / 3600
  out["projected_hours_20_epochs"] = hours
  out["projected_chip_hours_20_epochs"] = hours * num_devices
  return out


def main(argv=None) -> int:
  parser = common.base_parser(__doc__.splitlines()[0], "bench/results/device_bench.json")
  parser.add_argument("--smoke", action="store_true", help="tiny model on any backend")
  parser.add_argument("--batch", type=int, default=256, help="global batch (this host)")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
  parser.add_argument("--remat", action="store_true")
  parser.set_defaults(warmup=3)
  args = parser.parse_args(argv)
  if os.environ.get("OUT") and args.json == parser.get_default("json"):
    args.json = os.path.join(os.environ["OUT"], "device_bench.json")

  payload: dict = {"benchmark": "device_bench", "smoke": args.smoke, "dtype": args.dtype}
  try:
    env = environment()
  except Exception as e:  # jax missing or broken: say so in the JSON too.
    payload.update(status="no_jax", error=repr(e))
    common.report(payload, f"JAX is not usable here: {e!r}", args.json)
    return EXIT_NO_ACCELERATOR
  payload["environment"] = env
  print(
    f"JAX {env['jax']}, backend {env['backend']}: {env['num_local_devices']} x "
    f"{env['device_kind']}",
    flush=True,
  )
  if env["backend"] == "cpu" and not args.smoke:
    msg = (
      "No accelerator is visible to JAX (backend 'cpu'): this jax install has no CUDA/TPU "
      "plugin or no device is attached. Nothing was measured; install jax[cuda12] (GPU) or "
      "jax[tpu] or run with --smoke to check the script."
    )
    payload.update(status="no_accelerator", message=msg)
    common.report(payload, msg, args.json)
    return EXIT_NO_ACCELERATOR

  config = common.model_config(args.smoke, remat=args.remat)
  batch, steps, warmup = (8, 2, 1) if args.smoke else (args.batch, args.steps, args.warmup)
  payload.update(config=config.to_dict(), batch=batch, steps=steps, warmup=warmup)
  try:
    result = run(config, args.dtype, batch, steps, warmup)
  except Exception as e:
    if "RESOURCE_EXHAUSTED" in str(e) and not config.remat:
      print("Out of memory without remat; retrying with config.remat=True", flush=True)
      config = config.replace(remat=True)
      payload["config"] = config.to_dict()
      payload["oom_without_remat"] = True
      result = run(config, args.dtype, batch, steps, warmup)
    else:
      payload.update(status="error", error=repr(e), traceback=traceback.format_exc())
      common.report(payload, f"benchmark failed: {e!r}", args.json)
      return 1
  summary = summarize(result, config, batch, env["device_kind"], env["num_local_devices"])
  payload.update(status="ok", result=result, summary=summary)

  def gib(b):
    return f"{b / 2**30:.2f}" if b else "n/a"

  def pct(x):
    return f"{100 * x:.1f}%" if x else "n/a"

  rows = [
    ("device", f"{env['num_local_devices']} x {env['device_kind']}"),
    ("global batch / dtype / remat", f"{batch} / {args.dtype} / {config.remat}"),
    ("compile s", f"{result['compile_seconds']:.1f}"),
    ("median step s (blocking)", f"{result['median_step_seconds']:.4f}"),
    ("pipelined step s", f"{result['pipelined_step_seconds']:.4f}"),
    ("examples/s", f"{result['examples_per_sec']:.1f}"),
    ("MFU (analytic FLOPs)", pct(summary.get("mfu_analytic"))),
    ("MFU (XLA FLOPs)", pct(summary.get("mfu_xla"))),
    (
      "XLA / analytic FLOPs",
      f"{summary['xla_over_analytic']:.3f}" if summary["xla_over_analytic"] else "n/a",
    ),
    ("peak device memory GiB", gib(result["peak_memory_bytes"])),
    ("projected hours, 20 epochs x 9.18M", f"{summary['projected_hours_20_epochs']:.1f}"),
  ]
  common.report(payload, common.format_table(["measure", "value"], rows), args.json)
  return 0


if __name__ == "__main__":
  sys.exit(main())
