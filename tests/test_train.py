"""Training loop on 8 fake CPU devices: pmap == one device, one-step run, losses fall, NaN stop."""

import functools
import json
import os
import signal

import jax
import numpy as np
import pytest
from flax import jax_utils
from test_pipeline import write_dataset

from configs import easy_vqa, nlvr2, pretrain
from lxmert_jax import preemption, train
from lxmert_jax import train_state as ts
from lxmert_jax.data import pipeline
from tfrecords_tools import shards

# Tiny models: XLA's optimisation passes cost far more than they save (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("fast_compiles")


def tiny_config(module, data_dir, arg="tiny", dropout=False, **overrides):
  config = module.get_config(arg)
  config.data.data_dir = str(data_dir)
  config.model.l_layers = config.model.x_layers = 1
  config.model.num_object_labels, config.model.num_attr_labels = 17, 7
  if not dropout:
    config.model.hidden_dropout_prob = config.model.attention_probs_dropout_prob = 0.0
  for key, value in overrides.items():
    target = config
    *path, last = key.split(".")
    for p in path:
      target = target[p]
    target[last] = value
  return config


def make_dataset(tmp_path, num_images=1):
  data_dir = tmp_path / "data"
  write_dataset(data_dir, "train", num_groups=12, num_images=num_images, learnable=True)
  write_dataset(data_dir, "test", num_groups=4, num_images=num_images, seed=1, learnable=True)
  return data_dir


def fixed_batch(config, num_devices):
  """One global batch of the train split as [num_devices, per_device, ...] numpy arrays."""
  layout = pipeline.Layout.from_info(
    config.data.data_dir, config.data.max_seq_length, 2 if config.task == "nlvr2" else 1
  )
  data = pipeline.make_eval_dataset(
    config.data.data_dir,
    "train",
    layout=layout,
    global_batch_size=16,
    num_devices=num_devices,
    process_index=0,
    process_count=1,
  )
  batch = next(iter(data))
  return {k: v for k, v in batch.items() if k not in pipeline.HOST_KEYS}


def build(config):
  setup = train.make_setup(config)
  model = ts.build_model(setup.model_config, config.task, config.model.dtype)
  tx = ts.make_optimizer(config.optim, setup.total_updates)
  state = ts.init_train_state(jax.random.PRNGKey(0), model, setup.model_config, config.task, tx)
  return setup, state


def p_step(setup, devices):
  return jax.pmap(
    functools.partial(train.train_step, hp=setup.hp),
    axis_name=train.AXIS,
    in_axes=(0, 0, None),
    devices=devices,
  )


def assert_same_on_all_devices(tree):
  for leaf in jax.tree.leaves(tree):
    shards = [np.asarray(s.data) for s in leaf.addressable_shards]
    for other in shards[1:]:
      np.testing.assert_array_equal(shards[0], other)


def test_pmap_over_8_devices_equals_one_device_step(tmp_path):
  config = tiny_config(easy_vqa, make_dataset(tmp_path), "finetune,tiny", total_steps=4)
  config.optim.warmup_fraction = 0.0  # The first update then has a non-zero learning rate.
  setup, state = build(config)
  rng = jax.random.PRNGKey(1)
  batch8 = fixed_batch(config, 8)
  batch1 = jax.tree.map(lambda x: x.reshape((1, -1) + x.shape[2:]), batch8)
  devices = jax.local_devices()
  s8, m8 = p_step(setup, devices)(jax_utils.replicate(state, devices), batch8, rng)
  s1, m1 = p_step(setup, devices[:1])(jax_utils.replicate(state, devices[:1]), batch1, rng)
  assert_same_on_all_devices(s8.params)
  assert_same_on_all_devices(m8)
  p8 = jax_utils.unreplicate(s8.params)
  p1 = jax.tree.map(lambda x: np.asarray(x)[0], s1.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), p8, p1)
  for name in ("loss", "grad_norm", "qa", "accuracy"):
    np.testing.assert_allclose(np.asarray(m8[name])[0], np.asarray(m1[name])[0], rtol=1e-5)
  assert float(np.asarray(m8["qa"])[0][1]) == 16  # The denominator counts the global batch.
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), p8, state.params)
  assert max(jax.tree.leaves(moved)) > 0


def test_one_step_train_and_evaluate(tmp_path, monkeypatch):
  data_dir = make_dataset(tmp_path)
  config = tiny_config(easy_vqa, data_dir, "finetune,tiny", dropout=True, total_steps=1)
  config.eval.predict_splits = "test"
  saved = []

  def checked_save(mngr, rstate, step, *args, **kwargs):
    assert_same_on_all_devices(rstate.params)  # Replicas never drift apart.
    saved.append(step)
    return real_save(mngr, rstate, step, *args, **kwargs)

  real_save = train._save
  monkeypatch.setattr(train, "_save", checked_save)
  workdir = tmp_path / "work"
  results = train.train_and_evaluate(config, str(workdir))
  assert saved == [1]
  assert results["step"] == 1 and results["init"] == "fresh"
  assert set(results["eval"]) == {"test"}
  metrics = results["eval"]["test"]
  assert metrics["num_examples"] == pipeline.num_examples(str(data_dir), "test")
  assert 0 <= metrics["accuracy"] <= 1 and np.isfinite(metrics["loss"])
  assert {"accuracy_binary", "accuracy_other"} <= set(metrics)
  assert np.isfinite(results["train"]["loss"]) and results["train"]["learning_rate"] == 0.0
  assert json.loads((workdir / "results.json").read_text())["eval"] == results["eval"]
  assert os.path.isdir(workdir / "checkpoints" / "1" / "params")
  rows = json.loads((workdir / "predictions" / "test_predict.json").read_text())
  assert len(rows) == metrics["num_examples"]
  assert {r["answer"] for r in rows} <= set(shards.read_info(str(data_dir))["answer_vocab"])
  # mode=eval restores the checkpoint (no training) and reproduces the eval metrics.
  config.mode = "eval"
  again = train.train_and_evaluate(config, str(workdir))
  assert again["init"] == "checkpoint" and again["step"] == 1
  assert again["eval"] == results["eval"]


def _losses_over_steps(config, steps):
  setup, state = build(config)
  batch = fixed_batch(config, 8)
  step_fn = p_step(setup, jax.local_devices())
  rstate = jax_utils.replicate(state)
  out = []
  for i in range(steps):
    rstate, metrics = step_fn(rstate, batch, jax.random.PRNGKey(i))
    out.append(float(np.asarray(metrics["loss"])[0]))
  return out


def _assert_falls(losses, factor):
  first, last = np.mean(losses[:2]), np.mean(losses[-2:])
  assert np.all(np.isfinite(losses)) and last < factor * first, losses


@pytest.mark.slow
def test_qa_loss_falls(tmp_path):
  config = tiny_config(easy_vqa, make_dataset(tmp_path), "finetune,tiny", total_steps=12)
  config.optim.learning_rate = 1e-3
  _assert_falls(_losses_over_steps(config, 12), 0.5)


@pytest.mark.slow
def test_pretrain_loss_falls(tmp_path):
  config = tiny_config(pretrain, make_dataset(tmp_path), total_steps=12)
  config.optim.learning_rate = 1e-3
  _assert_falls(_losses_over_steps(config, 12), 0.8)


@pytest.mark.slow
def test_nlvr2_loss_falls(tmp_path):
  # The 2-way head sits at ln 2 for ~10 steps, then fits (0.695 -> 0.10 in 30 steps measured).
  config = tiny_config(nlvr2, make_dataset(tmp_path, num_images=2), total_steps=30)
  config.optim.learning_rate = 3e-4
  _assert_falls(_losses_over_steps(config, 30), 0.5)


@pytest.mark.slow
def test_nonfinite_loss_stops_without_checkpoint(tmp_path):
  config = tiny_config(easy_vqa, make_dataset(tmp_path), "finetune,tiny", total_steps=6)
  config.optim.learning_rate = 1e30  # Params overflow after the first non-zero-lr update.
  config.optim.max_grad_norm = 0.0
  config.optim.warmup_fraction = 0.0
  config.checkpoint.every_steps = 1
  config.log_every_steps = 1
  workdir = tmp_path / "work"
  with pytest.raises(FloatingPointError, match=r"at step 1 of finetune easy_vqa"):
    train.train_and_evaluate(config, str(workdir))
  assert not os.path.exists(workdir / "checkpoints" / "1")


def test_config_errors_before_compiling(tmp_path):
  data_dir = make_dataset(tmp_path)
  config = tiny_config(easy_vqa, data_dir, "finetune,tiny")
  config.batch_size = 12
  with pytest.raises(ValueError, match="batch of 12 examples per step .* not divisible by the 8"):
    train.validate_config(config)
  config = tiny_config(easy_vqa, tmp_path / "missing", "finetune,tiny")
  with pytest.raises(FileNotFoundError, match="config.data.data_dir=.*missing"):
    train.validate_config(config)
  config = tiny_config(easy_vqa, data_dir, "finetune,tiny")
  config.task = "vqa2"
  with pytest.raises(ValueError, match="config.task='vqa2' is unknown"):
    train.validate_config(config)
  config = tiny_config(easy_vqa, data_dir, "finetune,tiny")
  config.qa_loss = "softmax"
  with pytest.raises(ValueError, match="config.qa_loss='softmax' is unknown"):
    train.validate_config(config)
  config = tiny_config(easy_vqa, data_dir, "finetune,tiny")
  config.model.num_qa_labels = 12
  with pytest.raises(ValueError, match="num_qa_labels=12 but .* has 13 answers"):
    train.make_setup(config)


def test_sigterm_handler_restored_when_training_raises(tmp_path, monkeypatch):
  config = tiny_config(easy_vqa, make_dataset(tmp_path), "finetune,tiny", total_steps=2)
  seen_in_loop = []

  def broken_stream(dataset):
    del dataset
    seen_in_loop.append(signal.getsignal(signal.SIGTERM))
    raise OSError("shard unreadable")
    yield  # A generator: it runs (and raises) at the loop's first next().

  def caller_handler(signum, frame):
    del signum, frame

  monkeypatch.setattr(pipeline, "train_iterator", broken_stream)
  before = signal.signal(signal.SIGTERM, caller_handler)
  try:
    with pytest.raises(OSError, match="shard unreadable"):
      train.train_and_evaluate(config, str(tmp_path / "work"))
    assert seen_in_loop == [preemption._on_sigterm]  # Installed while the loop ran...
    assert signal.getsignal(signal.SIGTERM) is caller_handler  # ... and put back after.
  finally:
    signal.signal(signal.SIGTERM, before)


def test_replicated_state_has_the_train_step_output_layout():
  # A layout change between step 1's inputs and outputs would compile the train step twice.
  tree = {"w": np.ones((3, 2), np.float32), "step": np.zeros((), np.int32)}
  step = jax.pmap(lambda t: jax.tree.map(lambda x: x + 1, t), axis_name=train.AXIS)
  once = train.replicate(tree)
  twice = step(once)
  for a, b in zip(jax.tree.leaves(once), jax.tree.leaves(twice)):
    assert a.sharding == b.sharding
  assert jax_utils.replicate(tree)["w"].sharding != twice["w"].sharding


@pytest.mark.parametrize("qa_loss", ["bce", "mce"])
def test_qa_loss_setting_picks_the_fine_tuning_loss(tmp_path, qa_loss):
  """``config.qa_loss`` reaches the step: its QA term is that loss of the model's logits."""
  from lxmert_jax import losses

  config = tiny_config(easy_vqa, make_dataset(tmp_path), "finetune,tiny", qa_loss=qa_loss)
  setup, state = build(config)
  assert setup.hp.qa_loss == qa_loss
  batch = {k: v[0] for k, v in fixed_batch(config, 1).items()}
  outputs = train.forward(state.apply_fn, state.params, batch, deterministic=True)
  pairs, _ = train.objectives(outputs, batch, setup.hp, 0)
  targets = losses.soft_targets(batch["answer_ids"], batch["answer_scores"], setup.hp.num_answers)
  logits = outputs.question_answering_score
  want = {"bce": losses.answer_bce_loss, "mce": losses.answer_mce_loss}
  other = want.pop("mce" if qa_loss == "bce" else "bce")
  mask = batch["example_mask"]
  np.testing.assert_allclose(pairs["qa"], want[qa_loss](logits, targets, example_mask=mask))
  assert not np.allclose(pairs["qa"], other(logits, targets, example_mask=mask))
