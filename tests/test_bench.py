"""Each benchmark command runs at a tiny size and writes valid, complete JSON.

Benchmarks are not tests of speed; these only prove the commands work end to end (both sides of
the side-by-side comparison included) so the numbers in BENCHMARKS.md can be regenerated.
"""

import json
import math
import subprocess
import sys

import pytest

from bench import (
  common,
  cpu_peak,
  device_bench,
  input_pipeline,
  memory,
  model_step,
  step_parts,
  variants,
)


def _load(path):
  with open(path) as f:
    data = json.load(f)
  assert data["machine"]["cores"] >= 1
  assert data["machine"]["versions"]["jax"]
  return data


def _positive(x):
  return isinstance(x, int | float) and math.isfinite(x) and x > 0


# The three tests that compile a train step take ~10-30 s each on 2 idle cores (minutes when the
# machine is loaded), hence "slow" (still run by CI).
@pytest.mark.slow
def test_model_step_tiny_runs_both_sides_alternating(tmp_path):
  out = tmp_path / "model_step.json"
  model_step.main(
    [
      "--tiny",
      "--batches",
      "8",
      "--warmup",
      "0",
      "--repeats",
      "2",
      "--peak_gflops",
      "100",
      "--json",
      str(out),
    ]
  )
  data = _load(out)
  (record,) = data["results"]
  assert set(record["raw_seconds"]) == {"ours_train", "torch_train", "ours_infer", "torch_infer"}
  assert all(len(v) == 2 and all(map(_positive, v)) for v in record["raw_seconds"].values())
  for w in ("train", "infer"):
    assert _positive(record["speedup"][w])
    assert _positive(record["compile_seconds"][w])
    assert _positive(record["achieved"][f"ours_{w}"]["gflops"])
  assert _positive(record["analytic_flops"]["train"])


@pytest.mark.slow
def test_step_parts_tiny_splits_both_sides(tmp_path):
  out = tmp_path / "step_parts.json"
  step_parts.main(["--tiny", "--warmup", "1", "--repeats", "2", "--json", str(out)])
  data = _load(out)
  parts = {"ours_grads", "ours_update", "torch_grads", "torch_update"}
  assert set(data["raw_seconds"]) == parts
  assert all(len(v) == 2 and all(map(_positive, v)) for v in data["raw_seconds"].values())
  assert set(data["rates"]) == {
    f"{side}_{rate}" for side in ("ours", "torch") for rate in ("grads_gflops", "update_gbps")
  }
  assert all(map(_positive, data["rates"].values()))
  # The tiny model's parameter count, as the update's byte count uses it.
  import jax

  from lxmert_jax.models.tasks import param_shapes

  shapes = param_shapes(common.model_config(True), "pretraining")
  assert data["num_params"] == sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


# bench.variants measured the step changes before they were adopted; its remaining what-ifs
# must still run (three tiny train-step compiles).
@pytest.mark.slow
def test_variants_tiny_runs_every_variant(tmp_path):
  out = tmp_path / "variants.json"
  variants.main(["--tiny", "--batch", "8", "--warmup", "0", "--repeats", "1", "--json", str(out)])
  data = _load(out)
  assert set(data["median_seconds"]) == set(variants.VARIANTS)
  assert data["donated"] == {"project": False, "optimizer_barrier": False, "toggle_donation": True}
  losses_first = set(data["first_step_loss"].values())
  assert len(losses_first) == 1 and all(math.isfinite(x) for x in losses_first)


@pytest.mark.slow
def test_memory_tiny_fits_a_line(tmp_path):
  out = tmp_path / "memory.json"
  memory.main(["--tiny", "--batches", "8", "16", "--remat_modes", "on", "--json", str(out)])
  data = _load(out)
  assert [r["remat"] for r in data["results"]] == [True]
  for r in data["results"]:
    small, large = r["compiles"]
    assert large["peak_bytes"] > small["peak_bytes"] > 0
    assert _positive(r["per_example_bytes"])
    assert r["max_batch"] > 16


def test_input_pipeline_tiny_reads_synthetic_shards(tmp_path):
  out = tmp_path / "pipeline.json"
  input_pipeline.main(["--tiny", "--json", str(out)])
  data = _load(out)
  assert data["runs"] and all(_positive(r["examples_per_sec"]) for r in data["runs"])
  assert _positive(data["host_cores_per_chip"])


@pytest.mark.slow
def test_device_bench_smoke_runs_on_cpu(tmp_path):
  out = tmp_path / "device.json"
  assert device_bench.main(["--smoke", "--json", str(out)]) == 0
  data = _load(out)
  assert data["status"] == "ok"
  assert _positive(data["result"]["examples_per_sec"])
  assert _positive(data["summary"]["projected_hours_20_epochs"])


def test_device_bench_without_accelerator_says_so(tmp_path):
  out = tmp_path / "device.json"
  assert device_bench.main(["--json", str(out)]) == device_bench.EXIT_NO_ACCELERATOR
  data = _load(out)
  assert data["status"] == "no_accelerator"
  assert "No accelerator" in data["message"]


def test_device_script_is_valid_bash():
  subprocess.run(["bash", "-n", "bench/device.sh"], check=True)


@pytest.mark.skipif(sys.platform != "linux", reason="FMA kernel needs gcc on Linux")
def test_cpu_peak_tiny(tmp_path):
  out = tmp_path / "peak.json"
  cpu_peak.main(["--tiny", "--repeats", "1", "--json", str(out)])
  result = _load(out)["result"]
  assert all(_positive(v) for v in result["gemm_gflops"].values())
  if "peak_fp32_gflops" in result:
    assert result["peak_fp32_gflops"] > 1


def test_alternate_interleaves_and_summarize():
  calls = []
  times = common.alternate(
    {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeats=2
  )
  assert calls == ["a", "b"] * 3
  assert {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2}
  s = common.summarize([3.0, 1.0, 2.0])
  assert (s["median"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 3.0, 3)


def test_write_json_is_atomic_on_failure(tmp_path):
  path = tmp_path / "x.json"
  common.write_json(str(path), {"a": 1})
  with pytest.raises(TypeError):
    common.write_json(str(path), {"a": 1, "b": object()})
  assert json.loads(path.read_text()) == {"a": 1}
  assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
