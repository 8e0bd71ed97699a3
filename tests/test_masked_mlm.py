"""The MLM decoder at the masked positions only: same losses and gradients as at every position.

The reference is the full decoder path (``train.objectives`` on ``train.forward`` without
``mlm_positions``), checked against transformers and numpy elsewhere; here the masked-slot path
and its ``lax.cond`` fallback must reproduce it.
"""

import dataclasses
import functools
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import jax_utils

from lxmert_jax import losses, optim, train
from lxmert_jax import train_state as ts
from lxmert_jax.models.config import tiny_config
from lxmert_jax.models.tasks import dummy_inputs

BATCH, SEQ_LEN, NUM_BOXES = 8, 20, 5
CLS, SEP, MASK = 1, 2, 3


# Tiny models: XLA's optimisation passes cost far more than they save (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("fast_compiles")


CONFIG = tiny_config(l_layers=1, x_layers=1, r_layers=1)
HP = train.StepHParams(
  task="pretrain",
  num_answers=CONFIG.num_qa_labels,
  weights=tuple((name, 1.0) for name in losses.LOSS_NAMES),
  vocab_size=CONFIG.vocab_size,
  mask_token_id=MASK,
  special_token_ids=(0, CLS, SEP),
)


def clean_batch(seed=0, padded_examples=0):
  """A pipeline batch [BATCH, ...]: sentences of 6..SEQ_LEN WordPieces, random boxes."""
  rng = np.random.default_rng(seed)
  input_ids = np.zeros((BATCH, SEQ_LEN), np.int32)
  for i, n in enumerate(rng.integers(6, SEQ_LEN + 1, size=BATCH)):
    input_ids[i, :n] = rng.integers(MASK + 1, CONFIG.vocab_size, size=n)
    input_ids[i, 0], input_ids[i, n - 1] = CLS, SEP
  answers = rng.integers(0, CONFIG.num_qa_labels, size=(BATCH, 4)).astype(np.int32)
  answers[:, 2:] = -1
  shape = (BATCH, NUM_BOXES)
  return {
    "input_ids": input_ids,
    "attention_mask": (input_ids > 0).astype(np.int32),
    "token_type_ids": np.zeros_like(input_ids),
    "visual_feats": rng.uniform(0, 3, shape + (CONFIG.visual_feat_dim,)).astype(np.float32),
    "visual_pos": np.sort(rng.uniform(0, 1, shape + (4,)), axis=-1).astype(np.float32),
    "obj_labels": rng.integers(0, CONFIG.num_object_labels, shape).astype(np.int32),
    "obj_confs": rng.uniform(0, 1, shape).astype(np.float32),
    "attr_labels": rng.integers(0, CONFIG.num_attr_labels, shape).astype(np.int32),
    "attr_confs": rng.uniform(0, 1, shape).astype(np.float32),
    "answer_ids": answers,
    "answer_scores": np.where(answers >= 0, 0.6, 0.0).astype(np.float32),
    "image_index": np.arange(BATCH, dtype=np.int32),
    "example_mask": (np.arange(BATCH) < BATCH - padded_examples).astype(np.float32),
  }


@pytest.fixture(scope="module")
def model_and_params():
  model = ts.build_model(CONFIG, "pretrain")
  params = jax.jit(model.init)(jax.random.key(0), *dummy_inputs(CONFIG, "pretraining"))["params"]
  return model, params


def test_masked_capacity_is_mean_plus_six_sigma_rounded_to_8():
  # Batch 8, L 20: n = 144 candidates, 21.6 + 6 * sqrt(144 * 0.15 * 0.85) = 47.3 -> 48.
  assert losses.masked_capacity(8, 20, 0.15) == 48
  assert losses.masked_capacity(32, 20, 0.15) == 144  # 86.4 + 6 * 8.57 = 137.8
  n = 256 * 18
  assert losses.masked_capacity(256, 20, 0.15) == 8 * math.ceil(
    (0.15 * n + 6 * math.sqrt(n * 0.15 * 0.85)) / 8
  )
  assert losses.masked_capacity(1, 4, 0.5) == 4  # Never more than batch * seq_len.


def test_mlm_slots_gather_only_counted_positions():
  labels = np.array([[-1, 5, -1, 7], [9, -1, -1, -1], [-1, 4, 4, -1]], np.int32)
  example_mask = np.array([1.0, 1.0, 0.0])  # Row 2 is padding: its labels do not count.
  slots = losses.mlm_slots(labels, 4, example_mask=example_mask)
  np.testing.assert_array_equal(slots.positions, [1, 3, 4, 0])
  np.testing.assert_array_equal(slots.labels, [5, 7, 9, -1])
  np.testing.assert_array_equal(slots.example_mask, [1, 1, 1, 0])
  assert int(slots.count) == 3
  over = losses.mlm_slots(labels, 2, example_mask=None)  # 5 labelled positions, 2 slots.
  assert int(over.count) == 5
  np.testing.assert_array_equal(over.positions, [1, 3])
  hf = losses.mlm_slots(np.where(labels < 0, -100, labels), 8, ignore_index=-100)
  assert int(hf.count) == 5


def _loss_fn(model, inputs, capacity, deterministic):
  """params -> (total loss, pairs); capacity None = the reference full-decoder path."""

  def fn(params):
    # The same dropout masks on both paths (the decoder has no dropout).
    dropout_rng = None if deterministic else train.dropout_key(jax.random.key(7))
    if capacity is None:
      outputs = train.forward(
        model.apply, params, inputs, deterministic=deterministic, dropout_rng=dropout_rng
      )
      assert outputs.prediction_logits.shape == (BATCH, SEQ_LEN, CONFIG.vocab_size)
      pairs, weights = train.objectives(outputs, inputs, HP, 0)
    else:
      outputs, pairs, weights = train.forward_and_objectives(
        model.apply,
        params,
        inputs,
        HP,
        0,
        deterministic=deterministic,
        dropout_rng=dropout_rng,
        capacity=capacity,
      )
      assert outputs.prediction_logits.shape == (capacity, CONFIG.vocab_size)
    return losses.weighted_total(pairs, weights), pairs

  return fn


def _value_and_grad(model, inputs, capacity):
  fn = jax.value_and_grad(_loss_fn(model, inputs, capacity, deterministic=False), has_aux=True)
  return jax.jit(fn)


def test_masked_positions_give_the_full_decoder_loss_and_gradients(model_and_params):
  model, params = model_and_params
  # Padding rows (eval batches) have masked tokens too: they must not count on either path.
  padded = 2
  inputs = train.prepare_inputs(jax.random.key(3), clean_batch(padded_examples=padded), HP, None)
  assert np.any(np.asarray(inputs["lm_labels"])[-padded:] >= 0)
  counted = int(losses.mlm_slots(inputs["lm_labels"], 1, example_mask=inputs["example_mask"]).count)
  default = train.mlm_capacity(HP, inputs["lm_labels"].shape)
  assert default == 48 < BATCH * SEQ_LEN
  small = 4  # Fewer slots than labelled positions: the lax.cond fallback decodes everywhere.
  assert small < counted <= default, counted
  (ref_loss, ref_pairs), ref_grads = _value_and_grad(model, inputs, None)(params)
  assert float(ref_pairs["mlm"][0]) > 0 and float(ref_pairs["mlm"][1]) == counted
  word_grad = ref_grads["lxmert"]["embeddings"]["word_embeddings"]["embedding"]
  assert float(jnp.abs(word_grad).max()) > 0
  flat_ref = jax.tree_util.tree_leaves_with_path(ref_grads)
  # atol relative to the largest gradient: some leaves (attention key biases) are exactly 0 in
  # exact arithmetic and hold rounding noise of ~1e-12 on both sides.
  scale = max(float(np.abs(ref).max()) for _, ref in flat_ref)
  for capacity in (default, small):
    (loss, pairs), grads = _value_and_grad(model, inputs, capacity)(params)
    assert set(pairs) == set(ref_pairs) == set(losses.LOSS_NAMES)
    for name in losses.LOSS_NAMES:
      np.testing.assert_allclose(pairs[name], ref_pairs[name], rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    flat = dict(jax.tree_util.tree_leaves_with_path(grads))
    assert len(flat) == len(flat_ref)
    for path, ref in flat_ref:
      np.testing.assert_allclose(
        flat[path], ref, rtol=1e-5, atol=1e-6 * scale, err_msg=f"K={capacity} {path}"
      )


# Compiles the pmapped train and eval steps twice (~1 min on 2 loaded cores).
@pytest.mark.slow
def test_train_and_eval_step_equal_the_full_decoder_step(monkeypatch):
  """The pmapped steps (one device: no gradient psum) with slots and with the full decoder."""
  model = ts.build_model(CONFIG, "pretrain")
  tx = optim.bert_adam(1e-3, total_steps=10, warmup_fraction=0.0, max_grad_norm=1.0)
  state = ts.init_train_state(jax.random.PRNGKey(0), model, CONFIG, "pretrain", tx)
  devices = jax.local_devices()[:1]
  batch = {k: v[None] for k, v in clean_batch(seed=1).items()}
  rng = jax.random.PRNGKey(5)

  def run():
    p_train = jax.pmap(
      functools.partial(train.train_step, hp=HP),
      axis_name=train.AXIS,
      in_axes=(0, 0, None),
      devices=devices,
    )
    p_eval = jax.pmap(
      functools.partial(train.eval_step, apply_fn=model.apply, hp=HP),
      axis_name=train.AXIS,
      in_axes=(0, 0, None),
      devices=devices,
    )
    new_state, metrics = p_train(jax_utils.replicate(state, devices), batch, rng)
    return new_state.params, metrics, p_eval(new_state.params, batch, rng)["metrics"]

  params, metrics, eval_metrics = run()
  assert "param_norm" not in metrics
  # capacity >= batch * seq_len: the decoder at every position (the path before slots).
  monkeypatch.setattr(train, "mlm_capacity", lambda hp, shape: shape[0] * shape[1])
  ref_params, ref_metrics, ref_eval = run()
  assert set(metrics) == set(ref_metrics) and set(eval_metrics) == set(ref_eval)
  for name in ref_metrics:
    np.testing.assert_allclose(metrics[name], ref_metrics[name], rtol=1e-5, err_msg=name)
  for name in ref_eval:
    np.testing.assert_allclose(eval_metrics[name], ref_eval[name], rtol=1e-5, err_msg=name)
  assert float(np.asarray(ref_metrics["mlm"])[0, 1]) > 0
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params, ref_params
  )
  moved = jax.tree.map(lambda a, b: float(np.abs(a[0] - b).max()), params, state.params)
  assert max(jax.tree.leaves(moved)) > 0


class _Writer:
  def __init__(self):
    self.scalars = []

  def write_scalars(self, step, scalars):
    self.scalars.append((step, scalars))


def _logger():
  setup = types.SimpleNamespace(micro_batch=8, total_updates=10, total_steps=10)
  config = types.SimpleNamespace(optim=None)  # Only read by ts.learning_rate (patched).
  return train._TrainLogger(_Writer(), config, setup, "pretrain", start_step=0)


def _step_metrics(loss, grad_norm=1.0):
  return {
    "loss": np.full((1,), loss, np.float32),
    "grad_norm": np.full((1,), grad_norm, np.float32),
    "mlm": np.array([[2.0, 4.0]], np.float32),
  }


def test_param_norm_is_computed_at_log_steps_and_checked(monkeypatch):
  monkeypatch.setattr(train.ts, "learning_rate", lambda *args: 0.0)
  logger = _logger()
  params = train.replicate({"a": np.array([3.0, 0.0], np.float32), "b": np.full((2, 2), 2.0)})
  logger.add(1, _step_metrics(1.0))
  logger.add(2, _step_metrics(3.0))
  out = logger.flush(2, params, write=True)
  assert out["param_norm"] == pytest.approx(5.0)  # sqrt(9 + 4 * 4)
  assert out["loss"] == pytest.approx(2.0) and out["loss_mlm"] == pytest.approx(0.5)
  assert logger.writer.scalars[-1][1]["train/param_norm"] == pytest.approx(5.0)
  bad = train.replicate({"a": np.array([np.inf, 0.0], np.float32)})
  logger.add(3, _step_metrics(1.0))
  logger.add(4, _step_metrics(1.0))
  with pytest.raises(FloatingPointError, match=r"params \(norm inf\) at step 4 of pretrain"):
    logger.flush(4, bad, write=False)
  logger.add(5, _step_metrics(float("nan")))
  logger.add(6, _step_metrics(1.0))
  with pytest.raises(FloatingPointError, match=r"loss \(nan\).* at step 5 of pretrain"):
    logger.flush(6, params, write=False)


def test_transformers_semantics_marks_unlabelled_targets_with_its_ignore_index(model_and_params):
  """Under ``semantics='transformers'`` the corruption writes -100 (not -1) where there is no
  target, so every loss (MLM at the slots included) ignores exactly the same positions."""
  model, params = model_and_params
  hf = dataclasses.replace(HP, semantics="transformers")
  original = train.prepare_inputs(jax.random.key(3), clean_batch(), HP, None)
  transformers = train.prepare_inputs(jax.random.key(3), clean_batch(), hf, None)
  for key in ("lm_labels", "ans"):
    want = np.where(np.asarray(original[key]) == -1, -100, np.asarray(original[key]))
    np.testing.assert_array_equal(transformers[key], want, err_msg=key)
  assert np.any(np.asarray(original["ans"]) == -1)  # Some mismatched pairs have no QA label.
  pairs = {}
  for name, hp, inputs in (("original", HP, original), ("transformers", hf, transformers)):
    _, pairs[name], _ = train.forward_and_objectives(
      model.apply, params, inputs, hp, 0, deterministic=True
    )
  for name in ("mlm", "matched", "qa"):
    assert np.all(np.isfinite(pairs["transformers"][name])), name
    np.testing.assert_allclose(
      pairs["transformers"][name], pairs["original"][name], rtol=1e-6, err_msg=name
    )
