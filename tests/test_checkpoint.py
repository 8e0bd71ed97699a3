"""Orbax checkpoints: round trip, restore order, loud params-only merge, config mismatch."""

import functools
import logging as std_logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lxmert_jax import checkpoint as ckpt
from lxmert_jax import optim
from lxmert_jax import train_state as ts
from lxmert_jax.models.config import tiny_config

MODEL = tiny_config(l_layers=1, x_layers=1)
CONFIG = {"task": "easy_vqa", "dont_load": ("x",)}


# Tiny models: XLA's optimisation passes cost far more than they save (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("fast_compiles")


@functools.cache
def _fresh(model_config, seed, task):
  model = ts.build_model(model_config, task)
  tx = optim.bert_adam(1e-3, 10, 0.1, accumulation_steps=2)
  state = ts.init_train_state(jax.random.PRNGKey(seed), model, model_config, task, tx)
  abstract = ts.abstract_train_state(jax.random.PRNGKey(seed), model, model_config, task, tx)
  return state, abstract


def make_state(model_config=MODEL, seed=0, task="easy_vqa"):
  """(init_fn, abstract state); the init compiles once per (config, seed) for the module."""
  state, abstract = _fresh(model_config, seed, task)
  return (lambda: state), abstract


def assert_trees_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def save(directory, state, step, metrics=None, answers=("yes", "no")):
  mngr = ckpt.make_manager(str(directory), best_metric="accuracy")
  ckpt.save_checkpoint(
    mngr, step, state, config=CONFIG, model_config=MODEL, answers=answers, metrics=metrics
  )
  mngr.wait_until_finished()
  return mngr


def test_round_trip_and_best_checkpoint_kept(tmp_path):
  init, abstract = make_state()
  state = init()
  # Give the optimizer state non-trivial values (MultiSteps accumulators, BertAdam moments).
  grads = jax.tree.map(jnp.ones_like, state.params)
  state = jax.jit(lambda s, g: s.apply_gradients(grads=g))(state, grads)
  directory = tmp_path / "checkpoints"
  mngr = ckpt.make_manager(str(directory), max_to_keep=2, best_metric="accuracy")
  for step, acc in [(1, 0.2), (2, 0.9), (3, 0.1), (4, 0.3), (5, None)]:
    ckpt.save_checkpoint(
      mngr,
      step,
      state.replace(step=jnp.int32(step)),
      config=CONFIG,
      model_config=MODEL,
      answers=["a", "b"],
      metrics=None if acc is None else {"accuracy": acc},
    )
  mngr.wait_until_finished()
  assert mngr.all_steps() == [2, 4, 5]  # The 2 latest plus the best (step 2).
  restored = ckpt.restore_checkpoint(mngr, 5, abstract, MODEL)
  assert int(restored.step) == 5
  assert_trees_equal(restored.params, state.params)
  assert_trees_equal(restored.opt_state, state.opt_state)
  assert type(restored.opt_state) is type(state.opt_state)
  loaded = ckpt.load_checkpoint_params(str(directory), 5)
  assert loaded.answers == ["a", "b"] and loaded.model_config == MODEL
  assert_trees_equal(loaded.params, state.params)


def test_mismatched_model_config_lists_params(tmp_path):
  init, _ = make_state()
  mngr = save(tmp_path / "checkpoints", init(), 7)
  other = MODEL.replace(hidden_size=16, intermediate_size=20)
  _, abstract_other = make_state(other)
  with pytest.raises(ValueError) as e:
    ckpt.restore_checkpoint(mngr, 7, abstract_other, other)
  message = str(e.value)
  assert "checkpoints/7 does not fit this model" in message
  assert "answer_head/logit_fc/0/kernel: expected (16, 32), got (32, 64)" in message
  assert "hidden_size: checkpoint 32, config 16" in message


def test_restore_order(tmp_path, caplog):
  init, abstract = make_state()
  fresh = init()
  # (3) Nothing to restore: fresh init.
  mngr = ckpt.make_manager(str(tmp_path / "run" / "checkpoints"))
  state, source = ckpt.restore_or_initialize(mngr, abstract, init, model_config=MODEL)
  assert source == "fresh"
  assert_trees_equal(state.params, fresh.params)
  # (2) init_from: params of another run (different seed), optimizer state fresh.
  other_init, _ = make_state(seed=1)
  other = other_init().replace(step=jnp.int32(30))
  save(tmp_path / "other" / "checkpoints", other, 30)

  def load():
    return ckpt.load_params(str(tmp_path / "other"), "qa", MODEL)

  state, source = ckpt.restore_or_initialize(
    mngr, abstract, init, model_config=MODEL, load_init_params=load
  )
  assert source == "init_from" and int(state.step) == 0
  assert_trees_equal(state.params, other.params)
  # dont_load keeps the fresh init for the matching params (and says so).
  with caplog.at_level(std_logging.WARNING):
    state, _ = ckpt.restore_or_initialize(
      mngr, abstract, init, model_config=MODEL, load_init_params=load, dont_load=("answer_head/.*",)
    )
  assert_trees_equal(state.params["answer_head"], fresh.params["answer_head"])
  assert_trees_equal(state.params["lxmert"], other.params["lxmert"])
  assert "kept at their fresh init" in caplog.text
  # (1) A checkpoint in the workdir wins over init_from.
  ckpt.save_checkpoint(mngr, 3, fresh.replace(step=jnp.int32(3)), config=CONFIG, model_config=MODEL)
  mngr.wait_until_finished()
  state, source = ckpt.restore_or_initialize(
    mngr, abstract, init, model_config=MODEL, load_init_params=load
  )
  assert source == "checkpoint" and int(state.step) == 3
  assert_trees_equal(state.params, fresh.params)


def test_merge_params_is_loud():
  init = {"a": {"kernel": np.zeros((2, 3))}, "b": np.zeros(4), "head": {"w": np.zeros(2)}}
  loaded = {
    "a": {"kernel": np.ones((2, 3))},
    "b": np.ones(4),
    "head": {"w": np.ones(2)},
    "extra": np.ones(1),
  }
  merged = ckpt.merge_params(init, loaded, dont_load=("head/.*",), source="src")
  np.testing.assert_array_equal(merged["a"]["kernel"], 1)
  np.testing.assert_array_equal(merged["head"]["w"], 0)
  assert "extra" not in merged
  with pytest.raises(ValueError, match=r"missing \(1\):\n    head/w"):
    ckpt.merge_params(init, {k: v for k, v in loaded.items() if k != "head"})
  with pytest.raises(ValueError, match=r"b: expected \(4,\), got \(5,\)"):
    ckpt.merge_params(init, dict(loaded, b=np.ones(5)))


def test_find_checkpoint_step(tmp_path):
  init, _ = make_state()
  save(tmp_path / "run" / "checkpoints", init(), 4)
  expected = (str(tmp_path / "run" / "checkpoints"), 4)
  assert ckpt.find_checkpoint_step(str(tmp_path / "run")) == expected
  assert ckpt.find_checkpoint_step(str(tmp_path / "run" / "checkpoints")) == expected
  assert ckpt.find_checkpoint_step(str(tmp_path / "run" / "checkpoints" / "4")) == expected
  assert ckpt.find_checkpoint_step(str(tmp_path)) is None
