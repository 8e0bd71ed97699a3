#!/usr/bin/env bash
# Accelerator benchmark in one prepared run (< 5 minutes), installing nothing.
#
#   bash bench/device.sh [extra flags for python -m bench.device_bench]
#
# Finds a Python that can import jax (the repo's .venv first), prints the accelerator, the JAX
# version and backend, then runs bench/device_bench.py under a hard time limit. Results go to
# $OUT/device_bench.json when OUT is set, else bench/results/device_bench.json. Exit codes:
# 0 measured, 3 no accelerator / no jax (the JSON says which), 124 time limit, other = failure.
set -u
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
out_dir="${OUT:-bench/results}"
mkdir -p "$out_dir"
json="$out_dir/device_bench.json"

python_bin=""
for candidate in .venv/bin/python /work/venv/bin/python python3 python; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import jax" >/dev/null 2>&1; then
    python_bin="$candidate"
    break
  fi
done
if [ -z "$python_bin" ]; then
  echo "No Python with jax found (tried .venv/bin/python, /work/venv/bin/python, python3, python)."
  printf '{"benchmark": "device_bench", "status": "no_jax", "message": "no python with jax"}\n' >"$json"
  exit 3
fi
echo "python: $(command -v "$python_bin")"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
else
  echo "nvidia-smi: not found"
fi
"$python_bin" - <<'PY' || true
import importlib.metadata as md
for name in ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt", "libtpu", "flax", "optax"):
  try:
    print(f"{name} {md.version(name)}")
  except md.PackageNotFoundError:
    print(f"{name}: not installed")
PY
# PYTHONPATH: the repo may not be pip-installed on the device machine.
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout 290 "$python_bin" -m bench.device_bench --json "$json" "$@"
status=$?
echo "device_bench exit status $status; results in $json"
exit $status
