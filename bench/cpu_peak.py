"""Peak FLOP/s of this CPU: an FMA microkernel (the ceiling) and large GEMMs (what libraries reach).

The ceiling is measured, not computed from a spec sheet, because a VM reports only the TSC
clock (2.6 GHz here) while the cores boost higher. The microkernel keeps 12 independent FMA
chains in registers (enough to cover 2 FMA pipes x 4-6 cycles latency) so it runs at the
FMA-issue limit; from it we derive the effective clock:

  clock = (GFLOP/s per core) / (FLOP per cycle per core),
  FLOP per cycle (fp32) = FMA pipes (2) x lanes per pipe (8 for 256-bit) x 2 (mul + add).

bf16 uses AVX512_BF16 ``vdpbf16ps`` (2 products per fp32 lane). AMX tiles exist only on Intel
Sapphire Rapids and newer; ``machine.has_amx`` says whether this CPU has them.

  python -m bench.cpu_peak            # ~30 s
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

import numpy as np

from bench import common

# fp32 zmm / fp32 ymm / bf16 dot-product kernels. Each iteration issues N independent
# operations; the result is summed and printed so the compiler cannot drop the loop.
_KERNEL_C = r"""
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <omp.h>
#define N 12
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int argc, char **argv) {
  long iters = atol(argv[1]); int mode = atoi(argv[2]); float sink = 0;
  double t0 = now();
  #pragma omp parallel reduction(+:sink)
  {
    if (mode == 0) {
      __m512 a[N]; __m512 b = _mm512_set1_ps(1.0000001f), c = _mm512_set1_ps(1e-7f);
      for (int i = 0; i < N; i++) a[i] = _mm512_set1_ps((float)i);
      for (long it = 0; it < iters; it++) for (int i = 0; i < N; i++) a[i] = _mm512_fmadd_ps(a[i], b, c);
      for (int i = 0; i < N; i++) sink += _mm512_reduce_add_ps(a[i]);
    } else if (mode == 1) {
      __m256 a[N]; __m256 b = _mm256_set1_ps(1.0000001f), c = _mm256_set1_ps(1e-7f);
      for (int i = 0; i < N; i++) a[i] = _mm256_set1_ps((float)i);
      for (long it = 0; it < iters; it++) for (int i = 0; i < N; i++) a[i] = _mm256_fmadd_ps(a[i], b, c);
      for (int i = 0; i < N; i++) { float t[8]; _mm256_storeu_ps(t, a[i]); sink += t[0]; }
    } else {
      __m512 a[N];
      __m512bh b = (__m512bh)_mm512_set1_epi16(0x3f80), c = (__m512bh)_mm512_set1_epi16(0x3400);
      for (int i = 0; i < N; i++) a[i] = _mm512_set1_ps((float)i);
      for (long it = 0; it < iters; it++) for (int i = 0; i < N; i++) a[i] = _mm512_dpbf16_ps(a[i], b, c);
      for (int i = 0; i < N; i++) sink += _mm512_reduce_add_ps(a[i]);
    }
  }
  double dt = now() - t0;
  double lanes = mode == 1 ? 8 : 16, flops_per_op = mode == 2 ? 4 : 2;
  printf("%.3f %g\n", (double)iters * N * lanes * flops_per_op * omp_get_max_threads() / dt / 1e9, sink);
  return 0;
}
"""
_KERNELS = {0: "fp32_avx512_fma", 1: "fp32_avx2_fma", 2: "bf16_avx512_dpbf16"}
# FLOP per cycle per core at the FMA-issue limit, for the clock estimate (2 x 256-bit FMA pipes,
# as on AMD Zen 4 and Intel client cores; Intel server cores with 2 x 512-bit pipes have 64).
FP32_FLOP_PER_CYCLE = 32


def run_microkernel(iters: int = 100_000_000, tries: int = 3) -> dict:
  """Compiles and runs the FMA kernels on 1 core and on all cores; {} if gcc/ISA is missing."""
  cc = shutil.which("gcc") or shutil.which("cc")
  if cc is None:
    return {"error": "no C compiler found; FMA ceiling not measured"}
  with tempfile.TemporaryDirectory() as tmp:
    src, exe = os.path.join(tmp, "fma.c"), os.path.join(tmp, "fma")
    with open(src, "w") as f:
      f.write(_KERNEL_C)
    flags = ["-O3", "-fopenmp", "-mavx512f", "-mavx512bf16", "-mavx512bw", "-mfma", "-mavx2"]
    build = subprocess.run([cc, *flags, src, "-o", exe], capture_output=True, text=True)
    if build.returncode:
      return {"error": f"compiling the FMA kernel failed: {build.stderr[-500:]}"}
    flags_present = set(common.lscpu().get("Flags", "").split())
    needs = {0: "avx512f", 1: "fma", 2: "avx512_bf16"}
    out = {}
    for mode, name in _KERNELS.items():
      if needs[mode] not in flags_present:
        out[name] = {"error": f"CPU lacks {needs[mode]}"}
        continue
      row = {}
      for threads in sorted({1, os.cpu_count() or 1}):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        # A ceiling is a maximum: other processes on a shared machine only ever lower a run.
        runs = [
          subprocess.run([exe, str(iters), str(mode)], capture_output=True, text=True, env=env)
          for _ in range(tries)
        ]
        row[f"gflops_{threads}_threads"] = max(float(r.stdout.split()[0]) for r in runs)
      out[name] = row
    return out


def _best_seconds(fn, repeats: int) -> float:
  fn()
  return min(common.time_call(fn) for _ in range(repeats))


def gemm_throughput(size: int = 2048, repeats: int = 5) -> dict:
  """Best GFLOP/s of a [size, size] x [size, size] matmul in XLA and PyTorch, fp32 and bf16."""
  import jax
  import jax.numpy as jnp

  flop = 2 * size**3
  out = {}
  rng = np.random.default_rng(0)
  a, b = rng.standard_normal((2, size, size), dtype=np.float32)
  matmul = jax.jit(jnp.matmul)
  for name, dt in (("fp32", jnp.float32), ("bf16", jnp.bfloat16)):
    x, y = jnp.asarray(a, dt), jnp.asarray(b, dt)
    sec = _best_seconds(lambda x=x, y=y: matmul(x, y).block_until_ready(), repeats)
    out[f"xla_{name}"] = flop / sec / 1e9
  try:
    import torch
  except ImportError:
    return out
  for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
    x, y = torch.from_numpy(a).to(dt), torch.from_numpy(b).to(dt)
    sec = _best_seconds(lambda x=x, y=y: torch.matmul(x, y), repeats)
    out[f"torch_{name}"] = flop / sec / 1e9
  return out


def measure(iters: int = 100_000_000, gemm_size: int = 2048, repeats: int = 5) -> dict:
  """The FMA ceiling, the derived clock and GEMM throughputs."""
  start = time.perf_counter()
  kernels = run_microkernel(iters)
  cores = os.cpu_count() or 1
  result = {"microkernel": kernels, "gemm_gflops": gemm_throughput(gemm_size, repeats)}
  fp32 = kernels.get("fp32_avx512_fma", {}) or {}
  if "gflops_1_threads" in fp32:
    clock = fp32["gflops_1_threads"] / FP32_FLOP_PER_CYCLE
    all_cores = fp32.get(f"gflops_{cores}_threads", fp32["gflops_1_threads"])
    bf16 = kernels.get("bf16_avx512_dpbf16", {}).get(f"gflops_{cores}_threads")
    result.update(
      effective_clock_ghz=clock,
      peak_fp32_gflops=all_cores,
      peak_bf16_gflops=bf16,
      spec_fp32_gflops=cores * FP32_FLOP_PER_CYCLE * clock,
    )
  result["seconds"] = time.perf_counter() - start
  return result


def main(argv=None):
  parser = common.base_parser(__doc__.splitlines()[0], "bench/results/cpu_peak.json")
  args = parser.parse_args(argv)
  iters = 2_000_000 if args.tiny else 100_000_000
  result = measure(iters=iters, gemm_size=256 if args.tiny else 2048, repeats=args.repeats)
  rows = []
  for name, row in result["microkernel"].items():
    if isinstance(row, dict):
      rows += [(f"FMA kernel {name}", k, v) for k, v in row.items()]
  rows += [(f"GEMM {k}", "gflops", v) for k, v in result["gemm_gflops"].items()]
  for key in ("effective_clock_ghz", "peak_fp32_gflops", "peak_bf16_gflops"):
    if key in result:
      rows.append(("derived", key, result[key]))
  table = common.format_table(["what", "measure", "value"], rows)
  common.report({"benchmark": "cpu_peak", "result": result}, table, args.json)


if __name__ == "__main__":
  main()
