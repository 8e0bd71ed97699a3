"""Exact resume: a run stopped by SIGTERM and resumed equals one that never stopped; damaged
or unfinished checkpoints are never restored."""

import os
import signal

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from absl import logging
from test_pipeline import write_dataset
from test_train import tiny_config

from configs import pretrain
from lxmert_jax import checkpoint as ckpt
from lxmert_jax import preemption, step_log, train
from lxmert_jax import train_state as ts
from lxmert_jax.models.config import tiny_config as tiny_model_config


def _read_flag(name):
  try:
    return jax.config.read(name)
  except AttributeError:  # Flags with a context manager are read as attributes.
    return getattr(jax.config, name)


@pytest.fixture(autouse=True, scope="module")
def _fast_compiles(tmp_path_factory):
  from jax.experimental.compilation_cache import compilation_cache

  names = (
    "jax_disable_most_optimizations",
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
  )
  old = {n: _read_flag(n) for n in names}
  # The resumed run loads the steps the first runs compiled from this cache.
  new = (True, str(tmp_path_factory.mktemp("jax_cache")), 0.0, -1)
  for n, v in zip(names, new):
    jax.config.update(n, v)
  compilation_cache.reset_cache()
  yield
  for n, v in old.items():
    jax.config.update(n, v)
  compilation_cache.reset_cache()


def _pretrain_config(tmp_path, total_steps):
  data_dir = tmp_path / "data"
  if not data_dir.exists():
    write_dataset(data_dir, "train", num_groups=12, learnable=True)
  # Dropout on: masking, mismatching, QA sampling and dropout all draw from the step's key.
  config = tiny_config(pretrain, data_dir, dropout=True, total_steps=total_steps)
  config.batch_size = 8  # ~30 examples: the run crosses epoch boundaries (data order resume).
  config.eval.splits = ""
  config.checkpoint.every_steps = 2
  config.log_every_steps = 4
  return config


def test_sigterm_then_resume_equals_uninterrupted_run(tmp_path, monkeypatch):
  total = 7
  config = _pretrain_config(tmp_path, total)
  reference = train.run(config, str(tmp_path / "straight"))
  expected = step_log.read(str(tmp_path / "straight" / step_log.FILE_NAME))
  assert [r["step"] for r in expected] == list(range(1, total + 1))

  real_reached = preemption.reached

  def sigterm_at_step_3(mngr, step):
    if step == 3:  # A real signal through the installed handler, not a flag set by hand.
      os.kill(os.getpid(), signal.SIGTERM)
    return real_reached(mngr, step)

  monkeypatch.setattr(preemption, "reached", sigterm_at_step_3)
  workdir = tmp_path / "stopped"
  first = train.run(config, str(workdir))
  assert first.metrics == {"step": 3, "preempted": True}
  assert ocp.CheckpointManager(str(workdir / "checkpoints")).latest_step() == 3
  assert signal.getsignal(signal.SIGTERM) is not preemption._on_sigterm  # Handler put back.
  # Simulate lines a killed run wrote after its checkpoint, the last one torn mid-write.
  with open(workdir / step_log.FILE_NAME, "a") as f:
    f.write('{"step": 4, "loss": 123.0}\n{"step": 5, "lo')
  monkeypatch.setattr(preemption, "reached", real_reached)
  resumed = train.run(config, str(workdir))

  assert resumed.metrics["init"] == "checkpoint" and resumed.metrics["step"] == total
  assert step_log.read(str(workdir / step_log.FILE_NAME)) == expected  # Bit-exact losses.
  jax.tree.map(np.testing.assert_array_equal, resumed.params, reference.params)


def _small_state(seed):
  params = {"dense": {"kernel": np.full((3, 4), float(seed), np.float32)}}
  state = ts.TrainState.create(apply_fn=None, params=params, tx=optax.adam(1e-3))
  return state.replace(step=np.int32(seed))


def _save_steps(directory, steps):
  mngr = ckpt.make_manager(directory, max_to_keep=5, async_save=True)
  for step in steps:
    ckpt.save_checkpoint(
      mngr, step, _small_state(step), config={"seed": 0}, model_config=tiny_model_config()
    )
  mngr.wait_until_finished()
  mngr.close()


def _restore(directory):
  mngr = ckpt.make_manager(directory, max_to_keep=5)
  abstract = jax.eval_shape(lambda: _small_state(0))
  state, source = ckpt.restore_or_initialize(
    mngr, abstract, lambda: pytest.fail("must not initialise"), model_config=tiny_model_config()
  )
  mngr.close()
  return state, source


def test_damaged_latest_checkpoint_falls_back_with_warning(tmp_path, monkeypatch):
  directory = str(tmp_path / "checkpoints")
  _save_steps(directory, [1, 2])
  # Damage step 2: its param arrays are gone (as after a storage fault).
  for root, _, files in os.walk(os.path.join(directory, "2", "params")):
    for name in files:
      if name != "_METADATA":
        os.remove(os.path.join(root, name))
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *a: warnings.append(msg % a))
  state, source = _restore(directory)
  assert source == "checkpoint" and int(state.step) == 1
  np.testing.assert_array_equal(state.params["dense"]["kernel"], np.full((3, 4), 1.0))
  assert any(os.path.join(directory, "2") in w and "cannot be restored" in w for w in warnings)
  # Moved aside, so a resumed run can save step 2 again.
  assert sorted(os.listdir(directory)) == ["1", "2" + preemption.CORRUPT_SUFFIX]
  _save_steps(directory, [2])
  assert int(_restore(directory)[0].step) == 2


def test_unfinished_write_is_never_restored(tmp_path, monkeypatch):
  directory = str(tmp_path / "checkpoints")
  _save_steps(directory, [1])

  async def die_before_rename(self, *args, **kwargs):
    raise RuntimeError("killed before the atomic rename")

  from orbax.checkpoint._src.path import atomicity

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", die_before_rename)
  with pytest.raises(RuntimeError, match="killed before the atomic rename"):
    _save_steps(directory, [2])
  monkeypatch.undo()
  leftovers = [d for d in os.listdir(directory) if d != "1"]
  assert leftovers and all(".orbax-checkpoint-tmp" in d for d in leftovers), leftovers
  # Step 2's arrays were fully written, but without the rename it does not exist.
  state, _ = _restore(directory)
  assert int(state.step) == 1


def test_model_mismatch_is_an_error_not_a_fallback(tmp_path):
  directory = str(tmp_path / "checkpoints")
  _save_steps(directory, [1, 2])
  mngr = ckpt.make_manager(directory)
  other = jax.eval_shape(
    lambda: _small_state(0).replace(params={"dense": {"kernel": np.zeros((5, 4), np.float32)}})
  )
  with pytest.raises(ValueError, match="does not fit this model"):
    ckpt.restore_or_initialize(mngr, other, lambda: None, model_config=tiny_model_config())
  assert sorted(os.listdir(directory)) == ["1", "2"]  # Nothing moved aside.
