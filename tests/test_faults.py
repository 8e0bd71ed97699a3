"""Faults on the real command line (``python -m lxmert_jax.main``), tiny model, 2 CPU devices:
kill -9 at seeded random moments (one of them during a checkpoint write), SIGTERM, an
unwritable workdir and a full disk."""

import glob
import os
import random
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from test_pipeline import write_dataset

from lxmert_jax import checkpoint as ckpt
from lxmert_jax import step_log

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_STEPS = 12
CHECKPOINT_EVERY = 2
TMP_MARK = ".orbax-checkpoint-tmp"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("faults") / "data"
  write_dataset(path, "train", num_groups=12, learnable=True)
  return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  # Shared compilation cache: restarts load the train step instead of compiling it.
  return tmp_path_factory.mktemp("jax_cache")


def _command(data_dir, workdir, total_steps=TOTAL_STEPS):
  return [
    sys.executable,
    "-m",
    "lxmert_jax.main",
    "--config=configs/easy_vqa.py:finetune,tiny",
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    "--config.model.l_layers=1",
    "--config.model.x_layers=1",
    "--config.model.num_object_labels=17",
    "--config.model.num_attr_labels=7",
    "--config.batch_size=8",
    f"--config.total_steps={total_steps}",
    "--config.eval.splits=",
    f"--config.checkpoint.every_steps={CHECKPOINT_EVERY}",
    "--config.checkpoint.max_to_keep=2",
    "--config.log_every_steps=1",
    "--config.optim.warmup_fraction=0.0",
    "--config.optim.learning_rate=1e-3",
  ]


def _env(cache_dir):
  env = dict(os.environ)
  env.update(
    {
      "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
      "JAX_PLATFORMS": "cpu",
      "TF_CPP_MIN_LOG_LEVEL": "2",
      "PYTHONPATH": REPO,
      "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
      "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
    }
  )
  return env


def _start(data_dir, workdir, cache_dir, log, total_steps=TOTAL_STEPS, preexec_fn=None):
  return subprocess.Popen(
    _command(data_dir, workdir, total_steps),
    cwd=REPO,
    env=_env(cache_dir),
    stdout=log,
    stderr=subprocess.STDOUT,
    preexec_fn=preexec_fn,
  )


def _run(data_dir, workdir, cache_dir, log_path, timeout=900, **kwargs):
  with open(log_path, "a") as log:
    proc = _start(data_dir, workdir, cache_dir, log, **kwargs)
    try:
      proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      proc.kill()
      pytest.fail(f"run timed out:\n{_tail(log_path)}")
  return proc.returncode


def _tail(path, n=3000):
  with open(path) as f:
    return f.read()[-n:]


def _logged_steps(workdir):
  return [r["step"] for r in step_log.read(os.path.join(workdir, step_log.FILE_NAME))]


def _checkpoint_steps(workdir):
  directory = os.path.join(workdir, "checkpoints")
  return (
    sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []
  )


def _tmp_dirs(workdir):
  """Unfinished writes as (path, inode): Orbax reuses the name when a step is saved again."""
  found = glob.glob(os.path.join(workdir, "checkpoints", f"*{TMP_MARK}*"))
  return [(p, i) for p in found if (i := _inode(p)) is not None]


def _final_params(workdir):
  loaded = ckpt.load_checkpoint_params(os.path.join(workdir, "checkpoints"), TOTAL_STEPS)
  return loaded.params


def _inode(path):
  try:
    return os.stat(path).st_ino
  except FileNotFoundError:
    return None


def _kill_at(proc, workdir, target_step, delay, during_write, timeout=900):
  """SIGKILLs ``proc`` ``delay`` s after it logs ``target_step``, or, with ``during_write``, as
  soon as it has a checkpoint write in flight.

  Returns:
    What was hit, and whether a new temporary checkpoint directory survived the kill.
  """
  old_tmp = set(_tmp_dirs(workdir))
  log_path = os.path.join(workdir, step_log.FILE_NAME)
  old_log = _inode(log_path)  # The run replaces the file when it starts (truncation).
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      pytest.fail(f"the run ended (status {proc.returncode}) before it was killed")
    if during_write:
      tmp = set(_tmp_dirs(workdir)) - old_tmp
      if tmp:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        left = set(_tmp_dirs(workdir)) - old_tmp
        return f"during the write of {sorted(os.path.basename(p) for p, _ in tmp)}", bool(left)
      time.sleep(0.002)
      continue
    steps = _logged_steps(workdir) if _inode(log_path) != old_log else []
    if steps and steps[-1] >= target_step:
      time.sleep(delay)
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      return f"{delay:.2f}s after step {steps[-1]} was logged", False
    time.sleep(0.01)
  proc.kill()
  pytest.fail("the run made no progress")


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_gives_the_same_run(data_dir, cache_dir, tmp_path):
  straight = tmp_path / "straight"
  log = str(tmp_path / "runs.log")
  assert _run(data_dir, straight, cache_dir, log) == 0, _tail(log)
  expected = step_log.read(str(straight / step_log.FILE_NAME))
  assert [r["step"] for r in expected] == list(range(1, TOTAL_STEPS + 1))

  rng = random.Random(1234)
  workdir = tmp_path / "killed"
  kills, tmp_left = [], []
  # Kills 3 and 5 wait for a checkpoint write in flight; the others hit a random step + delay
  # (at most step TOTAL_STEPS - 3, so the run cannot finish before the kill).
  while len(kills) < 5:
    start = max(_checkpoint_steps(workdir), default=0)
    target = rng.randint(start + 1, max(start + 1, TOTAL_STEPS - 3))
    with open(log, "a") as f:
      proc = _start(data_dir, workdir, cache_dir, f)
      seen, left = _kill_at(
        proc, str(workdir), target, rng.uniform(0.0, 0.4), during_write=len(kills) in (2, 4)
      )
    kills.append(seen)
    tmp_left.append(left)
    print(
      f"kill {len(kills)}: {seen}; checkpoints {_checkpoint_steps(workdir)}; "
      f"unfinished writes {[os.path.basename(p) for p, _ in _tmp_dirs(workdir)]}"
    )
  # At least one kill left an unfinished write behind (the rename can win the race once).
  assert tmp_left[2] or tmp_left[4], kills
  assert _run(data_dir, workdir, cache_dir, log) == 0, _tail(log)

  assert step_log.read(str(workdir / step_log.FILE_NAME)) == expected, kills
  got, want = _final_params(str(workdir)), _final_params(str(straight))
  for a, b in zip(_leaves(got), _leaves(want), strict=True):
    np.testing.assert_array_equal(a, b)


def _leaves(tree, prefix=""):
  for k in sorted(tree):
    v = tree[k]
    if isinstance(v, dict):
      yield from _leaves(v, f"{prefix}{k}/")
    else:
      yield v


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_exits_cleanly(data_dir, cache_dir, tmp_path):
  workdir = tmp_path / "work"
  log = str(tmp_path / "run.log")
  with open(log, "w") as f:
    proc = _start(data_dir, workdir, cache_dir, f)
    deadline = time.time() + 900
    while not (_logged_steps(workdir)[-1:] and _logged_steps(workdir)[-1] >= 3):
      assert proc.poll() is None and time.time() < deadline, _tail(log)
      time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, _tail(log)
  stopped_at = _logged_steps(workdir)[-1]
  assert 3 <= stopped_at < TOTAL_STEPS
  assert _checkpoint_steps(workdir)[-1] == stopped_at  # Saved at the step it stopped at.
  assert f"preempted: saved step {stopped_at}" in _tail(log, 20000)
  assert not os.path.exists(workdir / "results.json")  # Not finished: no final results.


@pytest.mark.slow
def test_unwritable_workdir_and_full_disk_are_clear_errors(data_dir, cache_dir, tmp_path):
  # A workdir below a regular file cannot be created.
  blocker = tmp_path / "file"
  blocker.write_text("x")
  log = str(tmp_path / "bad.log")
  assert _run(data_dir, blocker / "work", cache_dir, log) == 1
  assert f"error: [Errno 20] Not a directory: '{blocker}" in _tail(log)

  # Full disk: a run that wrote checkpoints 2 and 4, resumed with files capped at 16 KiB
  # (RLIMIT_FSIZE: writes fail with EFBIG, as ENOSPC would), stops with an error.
  workdir = tmp_path / "work"
  assert _run(data_dir, workdir, cache_dir, log, total_steps=4) == 0, _tail(log)
  before = _checkpoint_steps(workdir)
  assert before == [2, 4]

  def cap_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))

  # Output through a pipe: the cap applies to every file the run writes, a log file included.
  proc = subprocess.run(
    _command(data_dir, workdir, 8),
    cwd=REPO,
    env=_env(cache_dir),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    timeout=900,
    preexec_fn=cap_file_size,
  )
  with open(tmp_path / "full.log", "w") as f:
    f.write(proc.stdout)
  errors = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
  assert proc.returncode == 1 and errors, proc.stdout[-3000:]
  assert "File too large" in errors[-1], errors
  # The earlier checkpoints are intact and restorable; the failed step is not listed.
  assert _checkpoint_steps(workdir) == before
  ckpt.load_checkpoint_params(str(workdir / "checkpoints"), 4)
