"""Shared benchmark plumbing: machine description, alternating timers, tables and JSON output.

Every benchmark command prints a plain-text table and writes one JSON file holding the machine
description, library versions, the configuration, every raw timing and the medians, so a number
in BENCHMARKS.md can be traced back to its run.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# CPU flags worth recording: they decide which GEMM kernels PyTorch (oneDNN/MKL) and XLA can use.
_INTERESTING_FLAGS = re.compile(r"^(avx\w*|amx\w*|fma|f16c|sse4_2)$")
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers", "tensorflow-cpu")


def lscpu() -> dict[str, str]:
  """``lscpu`` as a dict (empty if the tool is missing)."""
  try:
    text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return {}
  out = {}
  for line in text.splitlines():
    key, sep, value = line.partition(":")
    if sep:
      out[key.strip()] = value.strip()
  return out


def cpu_mhz() -> float | None:
  """Nominal clock from /proc/cpuinfo (a VM reports the TSC rate, not the boost clock)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("cpu MHz"):
          return float(line.split(":")[1])
  except OSError:
    pass
  return None


def versions() -> dict[str, str | None]:
  out: dict[str, str | None] = {"python": platform.python_version()}
  for name in _PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def machine_info() -> dict[str, Any]:
  """CPU model, core count, SIMD/matrix flags, clock, memory, library versions, env knobs."""
  info = lscpu()
  flags = sorted(f for f in info.get("Flags", "").split() if _INTERESTING_FLAGS.match(f))
  try:
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  except (ValueError, OSError):
    mem_gib = None
  return {
    "cpu_model": info.get("Model name"),
    "vendor": info.get("Vendor ID"),
    "cpu_family": info.get("CPU family"),
    "cpu_model_number": info.get("Model"),
    "cores": os.cpu_count(),
    "threads_per_core": info.get("Thread(s) per core"),
    "hypervisor": info.get("Hypervisor vendor"),
    "nominal_mhz": cpu_mhz(),
    "simd_flags": flags,
    "has_amx": any(f.startswith("amx") for f in flags),
    "memory_gib": round(mem_gib, 1) if mem_gib else None,
    "platform": platform.platform(),
    "versions": versions(),
    # Other processes on a shared machine steal cores; the load average shows how much.
    "loadavg": os.getloadavg(),
    "env": {
      k: os.environ.get(k)
      for k in ("XLA_FLAGS", "OMP_NUM_THREADS", "JAX_PLATFORMS", "GLIBC_TUNABLES")
    },
  }


def model_config(tiny: bool, **overrides):
  """LXMERT-base, or for ``--tiny`` smoke runs the smallest config with every module type."""
  from lxmert_jax.models.config import LxmertConfig, tiny_config

  base = tiny_config(l_layers=1, r_layers=1, x_layers=1) if tiny else LxmertConfig()
  return base.replace(**overrides)


def summarize(samples: Sequence[float]) -> dict[str, float]:
  """Median, min, max and inter-quartile range of a list of seconds."""
  s = sorted(samples)
  q = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0], s[0], s[0]]
  return {
    "median": statistics.median(s),
    "min": s[0],
    "max": s[-1],
    "iqr": q[2] - q[0],
    "n": len(s),
  }


def time_call(fn: Callable[[], Any]) -> float:
  """Seconds for one call; ``fn`` must block until its result is ready."""
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def alternate(
  fns: Mapping[str, Callable[[], Any]], *, warmup: int, repeats: int
) -> dict[str, list[float]]:
  """Times several workloads round-robin so machine noise hits each of them alike.

  A shared, noisy machine drifts over minutes; running A, B, A, B... instead of all A then all B
  keeps the *ratio* meaningful even when absolute times wander. Warm-up calls (compilation,
  allocator growth, oneDNN primitive caches) are run round-robin too and not recorded.

  Args:
    fns: name -> zero-argument callable that blocks until its work is done.
    warmup: untimed rounds.
    repeats: timed rounds.

  Returns:
    name -> list of ``repeats`` wall-clock seconds, in call order.
  """
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  times: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      times[name].append(time_call(fn))
  return times


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A GitHub-markdown table (also readable on a terminal)."""

  def cell(x):
    if isinstance(x, float):
      return f"{x:.3g}" if abs(x) < 1e-3 or abs(x) >= 1e4 else f"{x:.4g}"
    return "" if x is None else str(x)

  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
  return "\n".join(lines)


def _jsonable(x):
  """numpy / JAX scalars and arrays -> Python; anything else is an error, not a string."""
  if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
    return x.item()
  if hasattr(x, "tolist"):
    return x.tolist()
  raise TypeError(f"cannot write {type(x).__name__} to JSON")


def write_json(path: str, payload: Mapping[str, Any]) -> None:
  """Writes ``payload`` atomically (temp file + rename): a crash never leaves half a JSON."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(payload, f, indent=2, default=_jsonable)
      f.write("\n")
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def base_parser(description: str, default_json: str) -> argparse.ArgumentParser:
  """Flags every benchmark shares: output path, warm-up/repeat counts, tiny smoke size."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--json", default=default_json, help="where to write the JSON results")
  parser.add_argument("--warmup", type=int, default=2, help="untimed rounds (after compilation)")
  parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
  parser.add_argument(
    "--tiny", action="store_true", help="tiny model and sizes: checks the command runs, in seconds"
  )
  parser.add_argument(
    "--default_malloc",
    action="store_true",
    help="keep glibc's malloc defaults (the CLI otherwise restarts with MALLOC_TUNABLES)",
  )
  return parser


# glibc returns big freed blocks (mmap'd, or trimmed from the heap of a worker thread's arena) to
# the kernel, so every step that allocates a fresh multi-GB temporary buffer page-faults and
# zeroes it again: measured 670K minor faults (26% of the CPU time) per LXMERT-base train step at
# batch 8 on the XLA side, 171K on the PyTorch side. One arena, no mmap and no trimming keep the
# memory in the process and make steady-state steps fault-free on both sides.
MALLOC_TUNABLES = (
  "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
)


def reexec_with_malloc_tunables(module: str, argv: list[str]) -> None:
  """Restarts ``python -m module argv`` with ``MALLOC_TUNABLES`` unless already set or refused.

  glibc reads GLIBC_TUNABLES only at process start, hence the re-exec. ``--default_malloc`` in
  ``argv`` keeps glibc's defaults (to measure the difference).
  """
  if sys.platform != "linux" or "--default_malloc" in argv:
    return
  if "glibc.malloc.mmap_max" in os.environ.get("GLIBC_TUNABLES", ""):
    return
  env = dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNABLES)
  os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)


def malloc_settings() -> dict[str, Any]:
  return {"GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES")}


def report(payload: dict[str, Any], table: str, json_path: str) -> None:
  """Prints the table, adds the machine description and writes the JSON."""
  payload = {"machine": machine_info(), "argv": sys.argv, **payload}
  print(table)
  write_json(json_path, payload)
  print(f"\nwrote {json_path}")
