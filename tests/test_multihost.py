"""Multi-host training on CPU: 2 processes x 2 devices (jax.distributed on 127.0.0.1, gloo
collectives) equal 1 process x 4 devices fed the same global batches, and resume exactly.

Also runnable as the worker: ``python tests/test_multihost.py MODE DATA_DIR WORKDIR OUT
[PORT PROCESS_ID]`` (MODE ``multi`` or ``single``).
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_STEPS = 4
NUM_SHARDS = 4  # Two files per host.


def _config(data_dir):
  from test_train import tiny_config

  from configs import easy_vqa

  config = tiny_config(easy_vqa, data_dir, "finetune,tiny", dropout=True, total_steps=TOTAL_STEPS)
  config.batch_size = 8
  config.optim.warmup_fraction = 0.0
  config.optim.learning_rate = 1e-3
  config.eval.splits = ""
  config.checkpoint.every_steps = 2
  config.checkpoint.max_to_keep = 2  # Both saves (steps 2 and 4) are asserted below.
  config.log_every_steps = 1
  return config


def _same_batches_as_two_hosts(pipeline):
  """make_train_dataset of one process feeding [host 0's batch; host 1's batch] per step."""
  import tensorflow as tf

  real = pipeline.make_train_dataset

  def two_hosts(data_dir, splits, **kwargs):
    kwargs.pop("num_devices", None)
    per_host = [
      real(data_dir, splits, num_devices=2, process_index=i, process_count=2, **kwargs)
      for i in range(2)
    ]
    return tf.data.Dataset.zip(tuple(per_host)).map(
      lambda a, b: {k: tf.concat([a[k], b[k]], 0) for k in a}
    )

  return two_hosts


def worker(mode, data_dir, workdir, out, port=None, process_id=None):
  import jax

  from lxmert_jax import distributed

  if mode == "multi":
    assert distributed.initialize(f"127.0.0.1:{port}", 2, int(process_id))
    assert jax.config.jax_cpu_collectives_implementation == "gloo"
  jax.config.update("jax_disable_most_optimizations", True)
  from flax import traverse_util

  from lxmert_jax import train
  from lxmert_jax.data import pipeline

  if mode == "single":
    pipeline.make_train_dataset = _same_batches_as_two_hosts(pipeline)
  result = train.run(_config(data_dir), workdir)
  flat = traverse_util.flatten_dict(result.params, sep="/")
  np.savez(out, **{k: np.asarray(v) for k, v in flat.items()})
  print(
    f"worker {mode} {process_id}: {jax.process_count()} processes, {jax.device_count()} "
    f"devices, step {result.metrics['step']}",
    flush=True,
  )


def preempt_worker(workdir, port, process_id):
  """Steps until preemption.reached() says stop; prints the step (SIGTERM goes to one host)."""
  import jax
  import orbax.checkpoint as ocp
  from jax.experimental import multihost_utils

  from lxmert_jax import distributed, preemption

  distributed.initialize(f"127.0.0.1:{port}", 2, int(process_id))
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  preemption.install()  # Leaves SIGTERM to JAX's preemption service here.
  open(os.path.join(workdir, f"ready{process_id}"), "w").close()
  for step in range(1, 100_000):
    if preemption.reached(mngr, step):
      print(f"process {jax.process_index()} stops at step {step}", flush=True)
      return
    multihost_utils.sync_global_devices(f"step{step}")
    time.sleep(0.01)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(num_devices):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join([REPO, os.path.join(REPO, "tests")])
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  return env


def _launch(args, num_devices, log):
  return subprocess.Popen(
    [sys.executable, __file__, *map(str, args)],
    cwd=REPO,
    env=_env(num_devices),
    stdout=log,
    stderr=subprocess.STDOUT,
  )


def _wait(procs, logs, timeout):
  deadline = time.time() + timeout
  for p in procs:
    try:
      p.wait(timeout=max(1, deadline - time.time()))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail("worker timed out:\n" + "\n".join(_tail(log) for log in logs))
  for p, log in zip(procs, logs):
    assert p.returncode == 0, _tail(log)


def _tail(path, n=4000):
  with open(path) as f:
    return f.read()[-n:]


def _losses(workdir):
  with open(os.path.join(workdir, "losses.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_initialize_needs_all_three_settings_or_none(monkeypatch):
  from lxmert_jax import distributed

  with pytest.raises(ValueError, match="--coordinator_address, --num_processes and --process_id"):
    distributed.initialize("127.0.0.1:1234", 2, None)
  with pytest.raises(ValueError, match=r"--process_id=2 is not in \[0, --num_processes=2\)"):
    distributed.initialize("127.0.0.1:1234", 2, 2)
  assert distributed.initialize("127.0.0.1:1234", 1, 0) is False  # One process: nothing to do.
  for name in ("TPU_WORKER_HOSTNAMES", "TPU_WORKER_ID", "TPU_ACCELERATOR_TYPE"):
    monkeypatch.delenv(name, raising=False)
  if not os.path.exists("/dev/accel0"):
    assert not distributed.on_tpu_vm() and distributed.initialize() is False
  monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v4-32")
  assert distributed.on_tpu_vm()


@pytest.mark.slow
def test_two_processes_equal_one_process_on_the_same_global_batches(tmp_path):
  from test_pipeline import write_dataset

  data_dir = tmp_path / "data"
  write_dataset(data_dir, "train", num_groups=12, num_shards=NUM_SHARDS, learnable=True)
  port = _free_port()
  multi_dir, single_dir = tmp_path / "multi", tmp_path / "single"
  logs = [str(tmp_path / f"host{i}.log") for i in range(2)] + [str(tmp_path / "single.log")]
  handles = [open(log, "w") for log in logs]
  procs = [
    _launch(["multi", data_dir, multi_dir, tmp_path / f"host{i}.npz", port, i], 2, handles[i])
    for i in range(2)
  ]
  procs.append(_launch(["single", data_dir, single_dir, tmp_path / "single.npz"], 4, handles[2]))
  _wait(procs, logs, timeout=480)
  for h in handles:
    h.close()
  assert "2 processes, 4 devices" in _tail(logs[0]) and "2 processes, 4 devices" in _tail(logs[1])

  host0, host1, single = (np.load(tmp_path / f"{n}.npz") for n in ("host0", "host1", "single"))
  assert sorted(host0.files) == sorted(single.files)
  moved = 0.0
  for name in single.files:
    np.testing.assert_array_equal(host0[name], host1[name], err_msg=name)
    np.testing.assert_allclose(host0[name], single[name], atol=1e-6, rtol=0, err_msg=name)
  # Written once: one line per step (not one per host), one checkpoint per save step.
  multi_losses, single_losses = _losses(multi_dir), _losses(single_dir)
  assert [r["step"] for r in multi_losses] == list(range(1, TOTAL_STEPS + 1))
  np.testing.assert_allclose(
    [r["loss"] for r in multi_losses], [r["loss"] for r in single_losses], atol=1e-6, rtol=0
  )
  assert sorted(os.listdir(multi_dir / "checkpoints")) == ["2", "4"]
  assert json.loads((multi_dir / "results.json").read_text())["step"] == TOTAL_STEPS
  moved = max(float(np.abs(single_losses[0]["loss"] - r["loss"])) for r in single_losses)
  assert moved > 0  # The runs trained (losses change), so equality is not vacuous.

  # Resume on two processes from the step-2 checkpoint they wrote. Marking the logged losses of
  # steps 1-2 shows the run restored step 2 (a fresh start would rewrite them); steps 3-4 and
  # the final params must equal the uninterrupted run's.
  shutil.rmtree(multi_dir / "checkpoints" / "4")
  marked = [dict(r, loss=100.0 + r["step"]) if r["step"] <= 2 else r for r in multi_losses]
  (multi_dir / "losses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in marked))
  logs, resume_port = [str(tmp_path / f"resume{i}.log") for i in range(2)], _free_port()
  handles = [open(log, "w") for log in logs]
  procs = [
    _launch(["multi", data_dir, multi_dir, tmp_path / f"resumed{i}.npz", resume_port, i], 2, h)
    for i, h in enumerate(handles)
  ]
  _wait(procs, logs, timeout=480)
  for h in handles:
    h.close()
  resumed = _losses(multi_dir)
  assert [r["loss"] for r in resumed[:2]] == [101.0, 102.0]
  np.testing.assert_allclose(
    [r["loss"] for r in resumed[2:]], [r["loss"] for r in multi_losses[2:]], atol=1e-6, rtol=0
  )
  for i in range(2):
    again = np.load(tmp_path / f"resumed{i}.npz")
    for name in single.files:
      np.testing.assert_allclose(again[name], host0[name], atol=1e-6, rtol=0, err_msg=name)


@pytest.mark.slow
def test_sigterm_on_one_host_stops_every_host_at_the_same_step(tmp_path):
  port = _free_port()
  logs = [str(tmp_path / f"host{i}.log") for i in range(2)]
  handles = [open(log, "w") for log in logs]
  procs = [_launch(["preempt", tmp_path, port, i], 1, handles[i]) for i in range(2)]
  deadline = time.time() + 300
  while not all(os.path.exists(tmp_path / f"ready{i}") for i in range(2)):
    assert time.time() < deadline and all(p.poll() is None for p in procs), _tail(logs[0])
    time.sleep(0.1)
  time.sleep(1.0)
  procs[1].send_signal(signal.SIGTERM)
  _wait(procs, logs, timeout=120)
  for h in handles:
    h.close()
  stops = [re.findall(r"process (\d) stops at step (\d+)", _tail(log)) for log in logs]
  assert stops[0] and stops[1], [_tail(log) for log in logs]
  assert stops[0][0][1] == stops[1][0][1]  # Same step on both hosts.
  # Through JAX's preemption service and Orbax, not a Python handler of ours.
  assert all("Reached preemption sync point" in _tail(log, 100_000) for log in logs)


if __name__ == "__main__":
  if sys.argv[1] == "preempt":
    preempt_worker(*sys.argv[2:])
  else:
    worker(*sys.argv[1:])
