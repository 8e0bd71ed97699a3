"""Losses vs independent numpy implementations, plus hand-computed cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lxmert_jax import losses

RNG = np.random.default_rng(0)


# ---- independent numpy references ---------------------------------------------------------------


def np_ce(logits, labels, ignore=-1):
  """Per-position CE (0 where ignored), via an explicit log-softmax in float64."""
  logits = np.asarray(logits, np.float64)
  m = logits.max(-1, keepdims=True)
  logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
  out = np.zeros(labels.shape)
  for idx in np.ndindex(labels.shape):
    if labels[idx] != ignore:
      out[idx] = -logp[idx + (labels[idx],)]
  return out


def np_smooth_l1(x, y):
  d = np.abs(np.asarray(x, np.float64) - y)
  return np.where(d < 1, 0.5 * d**2, d - 0.5)


def np_bce(x, t):
  x = np.asarray(x, np.float64)
  p = 1 / (1 + np.exp(-x))
  return -(t * np.log(p) + (1 - t) * np.log(1 - p))


def random_labels(shape, num_classes, ignore=-1, p_ignore=0.3):
  labels = RNG.integers(0, num_classes, shape)
  return np.where(RNG.random(shape) < p_ignore, ignore, labels)


def ratio(pair):
  return float(pair[0]) / float(pair[1])


# ---- vs numpy ------------------------------------------------------------------------------------


def test_masked_lm_loss_matches_numpy():
  logits = RNG.normal(size=(3, 7, 19)).astype(np.float32) * 3
  labels = random_labels((3, 7), 19)
  got = losses.masked_lm_loss(jnp.asarray(logits), jnp.asarray(labels))
  ce = np_ce(logits, labels)
  want = ce.sum() / (labels != -1).sum()
  np.testing.assert_allclose(ratio(got), want, rtol=1e-5)
  assert float(got[1]) == (labels != -1).sum()


def test_matched_and_qa_and_nlvr2_match_numpy():
  logits2 = RNG.normal(size=(6, 2)).astype(np.float32)
  labels2 = np.array([1, 0, 1, -1, 0, 1])
  want = np_ce(logits2, labels2).sum() / 5
  np.testing.assert_allclose(ratio(losses.matched_loss(logits2, jnp.asarray(labels2))), want, 1e-5)
  np.testing.assert_allclose(ratio(losses.nlvr2_loss(logits2, jnp.asarray(labels2))), want, 1e-5)
  logits = RNG.normal(size=(6, 13)).astype(np.float32)
  ans = np.array([3, -1, 12, 0, -1, 7])
  want = np_ce(logits, ans).sum() / 4
  np.testing.assert_allclose(ratio(losses.qa_loss(logits, jnp.asarray(ans))), want, rtol=1e-5)


def test_visual_label_loss_matches_numpy_over_all_boxes():
  logits = RNG.normal(size=(3, 5, 17)).astype(np.float32)
  labels = random_labels((3, 5), 17, p_ignore=0.2)
  confs = RNG.random((3, 5)).astype(np.float32)
  got = losses.visual_label_loss(logits, jnp.asarray(labels), confs)
  # Spec 2.2 quirk: every box (not only masked ones), weighted by conf, mean over B*N boxes.
  want = (np_ce(logits, labels) * confs).sum() / 15
  np.testing.assert_allclose(ratio(got), want, rtol=1e-5)
  assert float(got[1]) == 15


def test_feature_regression_loss_matches_numpy():
  pred = RNG.normal(size=(3, 5, 11)).astype(np.float32) * 2
  target = RNG.normal(size=(3, 5, 11)).astype(np.float32)
  mask = (RNG.random((3, 5)) < 0.4).astype(np.float32)
  got = losses.feature_regression_loss(pred, target, mask)
  want = (np_smooth_l1(pred, target).mean(-1) * mask).sum() / 15
  np.testing.assert_allclose(ratio(got), want, rtol=1e-5)


def test_soft_targets_and_bce_match_numpy():
  ids = np.array([[2, 0, -1], [-1, -1, -1], [4, 1, 3]])
  scores = np.array([[0.9, 0.3, 0.0], [0, 0, 0], [1.0, 0.6, 0.3]], np.float32)
  targets = np.asarray(losses.soft_targets(jnp.asarray(ids), jnp.asarray(scores), 5))
  want_t = np.zeros((3, 5))
  for b, k in np.ndindex(ids.shape):
    if ids[b, k] >= 0:
      want_t[b, ids[b, k]] = scores[b, k]
  np.testing.assert_allclose(targets, want_t)
  logits = RNG.normal(size=(3, 5)).astype(np.float32) * 4
  got = losses.answer_bce_loss(logits, targets)
  # Original: BCEWithLogitsLoss() (mean over B*A) * A.
  want = np_bce(logits, want_t).mean() * 5
  np.testing.assert_allclose(ratio(got), want, rtol=1e-5)


def test_mce_matches_numpy():
  logits = RNG.normal(size=(4, 6)).astype(np.float32)
  targets = np.zeros((4, 6), np.float32)
  targets[0, 3], targets[1, 5], targets[2, 1] = 1.0, 1.0, 1.0  # row 3 all zero -> label 0
  want = np_ce(logits, targets.argmax(-1)).mean() * 6
  np.testing.assert_allclose(ratio(losses.answer_mce_loss(logits, targets)), want, rtol=1e-5)


# ---- hand-computed cases -------------------------------------------------------------------------


def test_hand_computed_cross_entropies():
  # MLM: uniform logits over 4 classes at one labelled position -> ln 4 = 1.3862944;
  # the second position is ignored (-1), so the mean is ln 4 over 1 position.
  logits = jnp.zeros((1, 2, 4))
  got = losses.masked_lm_loss(logits, jnp.array([[2, -1]]))
  assert float(got[1]) == 1.0
  np.testing.assert_allclose(float(got[0]), 1.3862944, rtol=1e-6)
  # Matching: logits (0, ln 3), label 1: -log(3 / (1 + 3)) = ln(4/3) = 0.2876821.
  got = losses.matched_loss(jnp.array([[0.0, math.log(3)]]), jnp.array([1]))
  np.testing.assert_allclose(ratio(got), 0.2876821, rtol=1e-6)


def test_hand_computed_visual_losses():
  # obj: 2 boxes, 2 classes, zero logits -> CE ln 2 = 0.6931472 each; confs 0.5 and 1.0; the
  # second label is ignored (-1) -> sum 0.5 * ln 2 = 0.3465736 over 2 boxes = 0.1732868.
  got = losses.visual_label_loss(jnp.zeros((1, 2, 2)), jnp.array([[0, -1]]), jnp.array([[0.5, 1]]))
  np.testing.assert_allclose(float(got[0]), 0.3465736, rtol=1e-6)
  assert float(got[1]) == 2
  # feat: box 0 diff (0.5, 0) -> SmoothL1 (0.125, 0), mean 0.0625; box 1 diff (3, 0) ->
  # (2.5, 0), mean 1.25 but feat_mask 0. Sum 0.0625 over 2 boxes = 0.03125.
  pred = jnp.array([[[0.0, 0.0], [3.0, 0.0]]])
  target = jnp.array([[[0.5, 0.0], [0.0, 0.0]]])
  got = losses.feature_regression_loss(pred, target, jnp.array([[1.0, 0.0]]))
  np.testing.assert_allclose(ratio(got), 0.03125, rtol=1e-6)


def test_hand_computed_bce_mce():
  # BCE x A: logits (0, 2), targets (0.3, 1): BCE(0, .3) = ln 2 = 0.6931472 (any target);
  # BCE(2, 1) = ln(1 + e^-2) = 0.1269280. Per-example sum 0.8200752, batch of 1.
  got = losses.answer_bce_loss(jnp.array([[0.0, 2.0]]), jnp.array([[0.3, 1.0]]))
  np.testing.assert_allclose(ratio(got), 0.8200752, rtol=1e-6)
  # MCE: target argmax = 1, zero logits over 3 answers -> ln 3 * 3 = 3.2958369.
  got = losses.answer_mce_loss(jnp.zeros((1, 3)), jnp.array([[0.0, 0.9, 0.3]]))
  np.testing.assert_allclose(ratio(got), 3.2958369, rtol=1e-6)


# ---- pretraining_losses --------------------------------------------------------------------------


def _pretraining_case(batch=4, ignore=-1):
  L, N, F, V, Q = 6, 5, 11, 19, 13
  outputs = {
    "prediction_logits": RNG.normal(size=(batch, L, V)).astype(np.float32),
    "cross_relationship_score": RNG.normal(size=(batch, 2)).astype(np.float32),
    "question_answering_score": RNG.normal(size=(batch, Q)).astype(np.float32),
    "obj_logits": RNG.normal(size=(batch, N, 17)).astype(np.float32),
    "attr_logits": RNG.normal(size=(batch, N, 7)).astype(np.float32),
    "feat_output": RNG.normal(size=(batch, N, F)).astype(np.float32),
  }
  targets = {
    "lm_labels": random_labels((batch, L), V, ignore),
    "matched_label": RNG.integers(0, 2, (batch,)),
    "obj_labels": RNG.integers(0, 17, (batch, N)),
    "obj_confs": RNG.random((batch, N)).astype(np.float32),
    "attr_labels": RNG.integers(0, 7, (batch, N)),
    "attr_confs": RNG.random((batch, N)).astype(np.float32),
    "feat_targets": RNG.normal(size=(batch, N, F)).astype(np.float32),
    "feat_mask": (RNG.random((batch, N)) < 0.3).astype(np.float32),
    "ans": random_labels((batch,), Q, ignore, p_ignore=0.4),
  }
  targets["lm_labels"][0, 0] = 3  # at least one label per task
  targets["ans"][0] = 2
  return outputs, targets


def _np_pretraining(outputs, targets, normalizer, ignore):
  o, t = outputs, targets
  lm = np_ce(o["prediction_logits"], t["lm_labels"], ignore)
  qa = np_ce(o["question_answering_score"], t["ans"], ignore)
  per = {
    "mlm": lm.sum() / (t["lm_labels"] != ignore).sum(),
    "matched": np_ce(o["cross_relationship_score"], t["matched_label"], ignore).mean(),
    "obj": (np_ce(o["obj_logits"], t["obj_labels"], ignore) * t["obj_confs"]).mean() * normalizer,
    "attr": (np_ce(o["attr_logits"], t["attr_labels"], ignore) * t["attr_confs"]).mean()
    * normalizer,
    "feat": (np_smooth_l1(o["feat_output"], t["feat_targets"]).mean(-1) * t["feat_mask"]).mean()
    * normalizer,
    "qa": qa.sum() / (t["ans"] != ignore).sum(),
  }
  return per


@pytest.mark.parametrize("semantics", ["original", "transformers"])
def test_pretraining_losses_match_numpy(semantics):
  ignore = -1 if semantics == "original" else -100
  normalizer = 1 / 0.15 if semantics == "original" else 6.67
  outputs, targets = _pretraining_case(ignore=ignore)
  fn = jax.jit(lambda o, t: losses.pretraining_losses(o, t, semantics=semantics))
  total, per = fn(outputs, targets)
  want = _np_pretraining(outputs, targets, normalizer, ignore)
  assert set(per) == set(losses.LOSS_NAMES)
  for name, value in want.items():
    np.testing.assert_allclose(ratio(per[name]), value, rtol=1e-5, err_msg=name)
  np.testing.assert_allclose(float(total), sum(want.values()), rtol=1e-5)


def test_pretraining_weights_subset_and_qa_start():
  outputs, targets = _pretraining_case()
  want = _np_pretraining(outputs, targets, 1 / 0.15, -1)
  weights = {"mlm": 1.0, "matched": 0.5, "qa": 2.0}
  fn = jax.jit(
    lambda o, t, step: losses.pretraining_losses(o, t, weights=weights, step=step, qa_start_step=10)
  )
  for step, qa_weight in ((9, 0.0), (10, 2.0)):
    total, per = fn(outputs, targets, jnp.asarray(step))
    assert set(per) == {"mlm", "matched", "qa"}
    expect = want["mlm"] + 0.5 * want["matched"] + qa_weight * want["qa"]
    np.testing.assert_allclose(float(total), expect, rtol=1e-5)
  with pytest.raises(ValueError, match="unknown pretraining tasks"):
    losses.pretraining_losses(outputs, targets, weights={"nsp": 1.0})
  with pytest.raises(ValueError, match="semantics"):
    losses.pretraining_losses(outputs, targets, semantics="paper")
  missing = {k: v for k, v in targets.items() if k != "feat_mask"}
  with pytest.raises(KeyError, match="feat_mask"):
    losses.pretraining_losses(outputs, missing)


def test_example_mask_removes_padding_from_sums_and_denominators():
  outputs, targets = _pretraining_case(batch=5)
  mask = np.array([1, 1, 1, 0, 0], np.float32)
  fn = jax.jit(losses.pretraining_losses)
  _, per_masked = fn(outputs, dict(targets, example_mask=mask))

  def real(tree):
    return {k: v[:3] for k, v in tree.items()}

  _, per_real = fn(real(outputs), real(targets))
  for name in losses.LOSS_NAMES:
    np.testing.assert_allclose(per_masked[name][0], per_real[name][0], rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(per_masked[name][1], per_real[name][1], err_msg=name)
  # Fine-tuning losses as well.
  logits = RNG.normal(size=(5, 6)).astype(np.float32)
  targets = RNG.random((5, 6)).astype(np.float32)
  labels = np.array([0, 1, 1, 0, 1])
  for fn, t in (
    (losses.answer_bce_loss, targets),
    (losses.answer_mce_loss, targets),
    (lambda x, y, **kw: losses.nlvr2_loss(x[:, :2], y, **kw), labels),
  ):
    masked = jax.jit(fn)(logits, t, example_mask=mask)
    plain = jax.jit(fn)(logits[:3], t[:3])
    np.testing.assert_allclose(masked[0], plain[0], rtol=1e-6)
    assert float(masked[1]) == 3.0


def test_out_of_range_label_is_nan_not_skipped():
  loss_sum, _ = losses.qa_loss(jnp.zeros((2, 3)), jnp.array([1, 7]))
  assert np.isnan(float(loss_sum))
  # -1 under transformers semantics is not the ignore index, so it is an invalid label too.
  loss_sum, _ = losses.qa_loss(jnp.zeros((2, 3)), jnp.array([1, -1]), ignore_index=-100)
  assert np.isnan(float(loss_sum))
  # ...unless the example is eval padding, whose labels mean nothing.
  loss_sum, count = losses.qa_loss(
    jnp.zeros((2, 3)), jnp.array([1, 7]), example_mask=jnp.array([1.0, 0.0])
  )
  np.testing.assert_allclose(float(loss_sum), np.log(3), rtol=1e-6)
  assert float(count) == 1.0


def test_safe_mean_and_psum_style_combination():
  assert float(losses.safe_mean(jnp.array(0.0), jnp.array(0.0))) == 0.0
  # Batch-global mean from per-device pairs equals the single-device computation.
  logits = RNG.normal(size=(8, 6, 19)).astype(np.float32)
  labels = random_labels((8, 6), 19)
  mlm = jax.jit(losses.masked_lm_loss)
  pairs = [mlm(logits[i : i + 2], labels[i : i + 2]) for i in range(0, 8, 2)]
  summed = (sum(p[0] for p in pairs), sum(p[1] for p in pairs))
  np.testing.assert_allclose(
    float(losses.safe_mean(*summed)), ratio(mlm(logits, labels)), rtol=1e-5
  )
