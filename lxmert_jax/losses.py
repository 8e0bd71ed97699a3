"""LXMERT training objectives as pure, jit-friendly functions (spec sections 2.2 and 3.3).

Every loss returns ``(loss_sum, denominator)`` instead of a mean so that a data-parallel step can
``psum`` both over devices and divide once (a batch-global mean). The original code instead
averages per-GPU means under ``nn.DataParallel`` (G14); ``pmean`` of per-device
``sum / denominator`` reproduces that if wanted. Divide with :func:`safe_mean`.

Label conventions (G8): the original code ignores label -1 everywhere (MLM, matching, QA,
object/attribute CE); transformers ignores -100. A label that is neither the ignore index nor a
valid class turns the loss into NaN (PyTorch raises on it) so a bad batch is never silently
skipped inside ``jit``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

LossPair = tuple[jax.Array, jax.Array]

# G8: ignore index of the original code and of transformers.
IGNORE_INDEX = -1
HF_IGNORE_INDEX = -100
# G9: weight of each visual loss. The original's 1/0.15 undoes the 15% object-mask rate;
# transformers rounds it to 6.67 in LxmertConfig.visual_loss_normalizer.
ORIGINAL_VISUAL_LOSS_NORMALIZER = 1 / 0.15
HF_VISUAL_LOSS_NORMALIZER = 6.67
# Pretraining tasks in the original's logging order (LOSSES_NAME: Mask_LM, Matched, Obj, Attr,
# Feat, QA).
LOSS_NAMES = ("mlm", "matched", "obj", "attr", "feat", "qa")
VISUAL_LOSS_NAMES = ("obj", "attr", "feat")
SEMANTICS = ("original", "transformers")


def safe_mean(loss_sum: jax.Array, denominator: jax.Array) -> jax.Array:
  """``loss_sum / denominator``, and 0 (not NaN) when nothing was counted.

  PyTorch's mean-reduced CE returns NaN when every label is ignored; 0 keeps an all-caption
  batch (no QA labels) from poisoning the total.
  """
  ok = denominator > 0
  return jnp.where(ok, loss_sum / jnp.where(ok, denominator, 1.0), 0.0)


def _example_weights(example_mask: jax.Array | None, batch_size: int) -> jax.Array:
  """[batch] float32 weights: 1 for real examples, 0 for eval padding."""
  if example_mask is None:
    return jnp.ones((batch_size,), jnp.float32)
  return jnp.asarray(example_mask, jnp.float32)


def _broadcast_to_labels(weights: jax.Array, labels: jax.Array) -> jax.Array:
  """[batch] -> labels' shape [batch, ...] by appending unit axes."""
  weights = weights.reshape(weights.shape + (1,) * (labels.ndim - weights.ndim))
  return jnp.broadcast_to(weights, labels.shape)


def per_position_cross_entropy(
  logits: jax.Array, labels: jax.Array, *, ignore_index: int = IGNORE_INDEX
) -> tuple[jax.Array, jax.Array]:
  """Softmax cross entropy per position, without reduction.

  Args:
    logits: [..., num_classes] (any float dtype; computed in float32).
    labels: [...] int class ids; ``ignore_index`` marks positions without a target.
    ignore_index: label value that contributes nothing.

  Returns:
    ``(loss, valid)``: [...] float32 loss (0 where ignored, NaN where the label is out of
    range) and [...] bool mask of positions that have a target.
  """
  logits = logits.astype(jnp.float32)
  labels = jnp.asarray(labels).astype(jnp.int32)
  num_classes = logits.shape[-1]
  valid = labels != ignore_index
  in_range = (labels >= 0) & (labels < num_classes)
  safe_labels = jnp.where(in_range, labels, 0)
  picked = jnp.take_along_axis(logits, safe_labels[..., None], axis=-1)[..., 0]
  loss = jax.nn.logsumexp(logits, axis=-1) - picked
  loss = jnp.where(in_range, loss, jnp.nan)
  return jnp.where(valid, loss, 0.0), valid


def cross_entropy_loss(
  logits: jax.Array,
  labels: jax.Array,
  *,
  ignore_index: int = IGNORE_INDEX,
  example_mask: jax.Array | None = None,
) -> LossPair:
  """Mean-over-labelled-positions softmax CE, as ``(sum, number of labelled positions)``.

  Args:
    logits: [batch, ..., num_classes].
    labels: [batch, ...] int; ``ignore_index`` = no target.
    ignore_index: -1 (original) or -100 (transformers), G8.
    example_mask: optional [batch]; padded examples count in neither sum nor denominator.
  """
  loss, valid = per_position_cross_entropy(logits, labels, ignore_index=ignore_index)
  weights = _broadcast_to_labels(_example_weights(example_mask, labels.shape[0]), labels)
  weights = weights * valid
  # where, not a product: padding rows must not leak a NaN from a meaningless label.
  return jnp.sum(jnp.where(weights > 0, loss * weights, 0.0)), jnp.sum(weights)


# ------------------------------------------------------------------------------------------------
# Pretraining losses (spec section 2.2).


def semantics_ignore_index(semantics: str) -> int:
  """G8: the label ignore index of ``semantics``: -1 (``'original'``) or -100 (``'transformers'``)."""
  if semantics not in SEMANTICS:
    raise ValueError(f"semantics must be one of {SEMANTICS}, got {semantics!r}")
  return IGNORE_INDEX if semantics == "original" else HF_IGNORE_INDEX


def masked_capacity(batch: int, seq_len: int, rate: float) -> int:
  """Static slot count K for the MLM decoder: mean + 6 sigma of the number of masked tokens.

  At most ``batch * (seq_len - 2)`` tokens are candidates ([CLS] and [SEP] never are; counting
  padding as a candidate only overestimates), each selected with probability ``rate``, so the
  count is at most Binomial(batch (seq_len - 2), rate); more than K masked tokens is a ~1e-9
  event per batch, which :class:`MlmSlots` users must still handle exactly (a fallback).

  Returns:
    K rounded up to a multiple of 8, at most ``batch * seq_len`` (where slots save nothing).
  """
  n = batch * max(seq_len - 2, 1)
  k = rate * n + 6 * math.sqrt(n * rate * (1 - rate))
  return min(batch * seq_len, 8 * math.ceil(k / 8))


class MlmSlots(NamedTuple):
  """The labelled MLM positions of a batch gathered into K static slots (:func:`mlm_slots`).

  Attributes:
    positions: [K] int32 flat indices into ``batch * seq_len``, in order; unused slots 0.
    labels: [K] int32 label of each slot; the ignore index in unused slots.
    example_mask: [K] float32 example weight of each slot; 0 in unused slots.
    count: [] int32 number of labelled positions; the slots hold them all iff ``count <= K``.
  """

  positions: jax.Array
  labels: jax.Array
  example_mask: jax.Array
  count: jax.Array


def mlm_slots(
  lm_labels: jax.Array,
  capacity: int,
  *,
  ignore_index: int = IGNORE_INDEX,
  example_mask: jax.Array | None = None,
) -> MlmSlots:
  """Gathers the positions that count in :func:`masked_lm_loss` into ``capacity`` slots.

  A position counts when its label is not ``ignore_index`` and its example's weight is
  non-zero. When ``count <= capacity``, ``masked_lm_loss(logits at positions, labels,
  example_mask=example_mask)`` has the same terms and the same denominator as the loss over
  every position (only the order of the float additions differs).

  Args:
    lm_labels: [batch, seq_len] int labels.
    capacity: static K (:func:`masked_capacity`).
    ignore_index: label of positions without a target.
    example_mask: optional [batch]; 0 = padding example.
  """
  labels = jnp.asarray(lm_labels).astype(jnp.int32)
  weights = _broadcast_to_labels(_example_weights(example_mask, labels.shape[0]), labels)
  labels, weights = labels.reshape(-1), weights.reshape(-1)
  counted = (labels != ignore_index) & (weights > 0)
  count = jnp.sum(counted, dtype=jnp.int32)
  (positions,) = jnp.nonzero(counted, size=capacity, fill_value=0)
  used = jnp.arange(capacity) < count
  return MlmSlots(
    positions=positions.astype(jnp.int32),
    labels=jnp.where(used, labels[positions], ignore_index),
    example_mask=jnp.where(used, weights[positions], 0.0),
    count=count,
  )


def masked_lm_loss(
  prediction_logits: jax.Array,
  lm_labels: jax.Array,
  *,
  ignore_index: int = IGNORE_INDEX,
  example_mask: jax.Array | None = None,
) -> LossPair:
  """MLM CE over the vocabulary, mean over positions whose label is not ignored.

  Args:
    prediction_logits: [batch, seq_len, vocab], or [K, vocab] at the :func:`mlm_slots`.
    lm_labels: [batch, seq_len] original token id at corrupted positions, ``ignore_index``
      elsewhere (including [CLS], [SEP] and padding); or the slots' [K] labels.
    example_mask: [batch] (or the slots' [K] example weights).
  """
  return cross_entropy_loss(
    prediction_logits, lm_labels, ignore_index=ignore_index, example_mask=example_mask
  )


def matched_loss(
  cross_relationship_score: jax.Array,
  matched_label: jax.Array,
  *,
  ignore_index: int = IGNORE_INDEX,
  example_mask: jax.Array | None = None,
) -> LossPair:
  """Image-sentence matching CE over 2 classes (class 1 = matched, G18), mean over the batch.

  Args:
    cross_relationship_score: [batch, 2].
    matched_label: [batch] 1 = matched, 0 = mismatched.
  """
  return cross_entropy_loss(
    cross_relationship_score, matched_label, ignore_index=ignore_index, example_mask=example_mask
  )


def qa_loss(
  question_answering_score: jax.Array,
  ans: jax.Array,
  *,
  ignore_index: int = IGNORE_INDEX,
  example_mask: jax.Array | None = None,
) -> LossPair:
  """Pretraining QA CE over the answer table, mean over examples with a label.

  Args:
    question_answering_score: [batch, num_qa_labels].
    ans: [batch] one sampled answer id; ``ignore_index`` for captions, questions whose
      answers were pruned, and mismatched pairs (G12: QA is the only loss they skip).
  """
  return cross_entropy_loss(
    question_answering_score, ans, ignore_index=ignore_index, example_mask=example_mask
  )


def visual_label_loss(
  logits: jax.Array,
  labels: jax.Array,
  confs: jax.Array,
  *,
  ignore_index: int = IGNORE_INDEX,
  example_mask: jax.Array | None = None,
) -> LossPair:
  """Object- or attribute-label CE weighted by detector confidence, mean over ALL boxes.

  Spec section 2.2 quirk (G22): the original code applies this loss to every box, masked or
  not, weighted by the detector's confidence, and divides by batch * num_boxes. The paper
  describes label prediction on masked objects only; we follow the code (transformers does
  the same). Boxes with an ignored label contribute 0 but stay in the denominator, as with
  PyTorch's ``reduction='none'`` followed by ``.mean()``.

  Args:
    logits: [batch, num_boxes, num_classes].
    labels: [batch, num_boxes] detector class ids.
    confs: [batch, num_boxes] detector confidences.

  Returns:
    ``(sum of conf * CE, number of boxes of real examples)``. The visual-loss normaliser is
    applied by :func:`pretraining_losses`, not here.
  """
  loss, _ = per_position_cross_entropy(logits, labels, ignore_index=ignore_index)
  weights = _broadcast_to_labels(_example_weights(example_mask, labels.shape[0]), labels)
  weighted = jnp.where(weights > 0, loss * confs.astype(jnp.float32) * weights, 0.0)
  return jnp.sum(weighted), jnp.sum(weights)


def smooth_l1(x: jax.Array, y: jax.Array, beta: float = 1.0) -> jax.Array:
  """Elementwise PyTorch ``SmoothL1Loss(reduction='none')`` (Huber with threshold ``beta``)."""
  diff = jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32))
  return jnp.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)


def feature_regression_loss(
  feat_output: jax.Array,
  feat_targets: jax.Array,
  feat_mask: jax.Array,
  *,
  example_mask: jax.Array | None = None,
) -> LossPair:
  """Masked-feature regression: SmoothL1 (beta 1) vs the ORIGINAL features.

  Named ``'l2'`` in the original config and "L2 loss" in the paper, but the code uses
  SmoothL1 (G22). Per box: mean over the feature dim, times ``feat_mask``; then mean over all
  batch * num_boxes boxes (unmasked boxes count in the denominator).

  Args:
    feat_output: [batch, num_boxes, feat_dim] predicted features.
    feat_targets: [batch, num_boxes, feat_dim] features before corruption.
    feat_mask: [batch, num_boxes] 1 for boxes chosen for masking.
  """
  per_box = jnp.mean(smooth_l1(feat_output, feat_targets), axis=-1)
  weights = _broadcast_to_labels(_example_weights(example_mask, per_box.shape[0]), per_box)
  return jnp.sum(per_box * feat_mask.astype(jnp.float32) * weights), jnp.sum(weights)


def _field(outputs: Any, name: str) -> jax.Array:
  """Reads a model output by transformers' field name from a dataclass or a mapping."""
  if isinstance(outputs, Mapping):
    if name not in outputs:
      raise KeyError(f"model outputs lack {name!r}; have {sorted(outputs)}")
    return outputs[name]
  value = getattr(outputs, name, None)
  if value is None:
    raise KeyError(f"model outputs ({type(outputs).__name__}) lack {name!r}")
  return value


def _target(targets: Mapping[str, jax.Array], name: str, task: str) -> jax.Array:
  if name not in targets:
    raise KeyError(f"the {task!r} loss needs targets[{name!r}]; have {sorted(targets)}")
  return targets[name]


def task_weights(
  weights: Mapping[str, float] | None = None,
  *,
  step: jax.Array | int | None = None,
  qa_start_step: int | None = None,
) -> dict[str, jax.Array | float]:
  """Per-task weights, with the QA weight zeroed before ``qa_start_step``.

  The GitHub recipe trains every task with weight 1 from the first step (the default). The
  EMNLP paper protocol, recorded in a code comment of the original (spec section 2.2),
  switches QA on for the second half of training with weight 2 ("> half of the data will not
  have a label"): ``weights={..., 'qa': 2.0}, qa_start_step=total_steps // 2``.

  Args:
    weights: task name -> weight; only these tasks are computed. Default: all six at 1.
    step: current (traced) step; needed when ``qa_start_step`` is set.
    qa_start_step: first step at which the QA loss counts.
  """
  weights = dict.fromkeys(LOSS_NAMES, 1.0) if weights is None else dict(weights)
  unknown = sorted(set(weights) - set(LOSS_NAMES))
  if unknown:
    raise ValueError(f"unknown pretraining tasks {unknown}; expected a subset of {LOSS_NAMES}")
  if qa_start_step is not None and "qa" in weights:
    if step is None:
      raise ValueError("qa_start_step needs the current step")
    weights["qa"] = jnp.where(jnp.asarray(step) >= qa_start_step, weights["qa"], 0.0)
  return weights


def weighted_total(per_task: Mapping[str, LossPair], weights: Mapping[str, Any]) -> jax.Array:
  """Sum over tasks of ``weight * sum / denominator``.

  Works on local pairs or on pairs already ``psum``-ed over devices (batch-global means).
  """
  total = jnp.zeros((), jnp.float32)
  for name, (loss_sum, denominator) in per_task.items():
    total = total + weights[name] * safe_mean(loss_sum, denominator)
  return total


def pretraining_losses(
  outputs: Any,
  targets: Mapping[str, jax.Array],
  *,
  weights: Mapping[str, float] | None = None,
  semantics: str = "original",
  visual_loss_normalizer: float | None = None,
  ignore_index: int | None = None,
  step: jax.Array | int | None = None,
  qa_start_step: int | None = None,
) -> tuple[jax.Array, dict[str, LossPair]]:
  """All LXMERT pretraining losses and their weighted total.

  ``semantics='original'`` follows airsplay/lxmert's ``LXRTPretraining.forward``: ignore
  index -1, visual losses x 1/0.15. ``semantics='transformers'`` reproduces transformers'
  ``LxmertForPreTraining`` loss exactly: ignore index -100 (PyTorch's default, G8) for MLM,
  matching, QA and object/attribute CE, and ``visual_loss_normalizer`` 6.67 (G9). Everything
  else is the same in both: every CE is a mean over labelled positions, obj/attr CE runs
  over all boxes weighted by detector confidence and is averaged over batch * num_boxes,
  SmoothL1 feature loss is averaged over the feature dim then over batch * num_boxes with
  ``feat_mask`` weights, and the total is the plain sum of the six terms. Differences that
  remain: a task with no labelled position gives 0 here and NaN in PyTorch; ``example_mask``
  (eval padding) has no transformers counterpart.

  Args:
    outputs: model outputs with transformers' field names: ``prediction_logits`` [B, L, V],
      ``cross_relationship_score`` [B, 2], ``question_answering_score`` [B, Q],
      ``obj_logits`` [B, N, C_obj], ``attr_logits`` [B, N, C_attr], ``feat_output``
      [B, N, F]. Only the fields of enabled tasks are read.
    targets: ``lm_labels`` [B, L], ``matched_label`` [B], ``obj_labels``/``obj_confs``,
      ``attr_labels``/``attr_confs`` [B, N], ``feat_targets`` [B, N, F] (uncorrupted
      features), ``feat_mask`` [B, N], ``ans`` [B]; optional ``example_mask`` [B].
      :func:`lxmert_jax.corruption.corrupt_pretraining_batch` produces them.
    weights: task -> weight (see :func:`task_weights`); absent tasks are not computed.
    semantics: ``'original'`` or ``'transformers'``.
    visual_loss_normalizer: overrides the semantics' default (1/0.15 or 6.67).
    ignore_index: overrides the semantics' default (-1 or -100).
    step: current step, for ``qa_start_step``.
    qa_start_step: QA weight is 0 before this step.

  Returns:
    ``(total, per_task)``: the local weighted total (scalar) and task -> ``(sum, denominator)``
    with the visual normaliser already folded into the visual sums, so ``sum / denominator``
    equals the per-task value the original logs.
  """
  default_ignore_index = semantics_ignore_index(semantics)  # Also validates ``semantics``.
  if visual_loss_normalizer is None:
    visual_loss_normalizer = (
      ORIGINAL_VISUAL_LOSS_NORMALIZER if semantics == "original" else HF_VISUAL_LOSS_NORMALIZER
    )
  if ignore_index is None:
    ignore_index = default_ignore_index
  weights = task_weights(weights, step=step, qa_start_step=qa_start_step)
  example_mask = targets.get("example_mask")
  common = dict(example_mask=example_mask)

  per_task: dict[str, LossPair] = {}
  if "mlm" in weights:
    per_task["mlm"] = masked_lm_loss(
      _field(outputs, "prediction_logits"),
      _target(targets, "lm_labels", "mlm"),
      ignore_index=ignore_index,
      **common,
    )
  if "matched" in weights:
    per_task["matched"] = matched_loss(
      _field(outputs, "cross_relationship_score"),
      _target(targets, "matched_label", "matched"),
      ignore_index=ignore_index,
      **common,
    )
  for name in ("obj", "attr"):
    if name in weights:
      loss_sum, denominator = visual_label_loss(
        _field(outputs, f"{name}_logits"),
        _target(targets, f"{name}_labels", name),
        _target(targets, f"{name}_confs", name),
        ignore_index=ignore_index,
        **common,
      )
      per_task[name] = (loss_sum * visual_loss_normalizer, denominator)
  if "feat" in weights:
    loss_sum, denominator = feature_regression_loss(
      _field(outputs, "feat_output"),
      _target(targets, "feat_targets", "feat"),
      _target(targets, "feat_mask", "feat"),
      **common,
    )
    per_task["feat"] = (loss_sum * visual_loss_normalizer, denominator)
  if "qa" in weights:
    per_task["qa"] = qa_loss(
      _field(outputs, "question_answering_score"),
      _target(targets, "ans", "qa"),
      ignore_index=ignore_index,
      **common,
    )
  return weighted_total(per_task, weights), per_task


# ------------------------------------------------------------------------------------------------
# Fine-tuning losses (spec section 3.3).


def soft_targets(answer_ids: jax.Array, answer_scores: jax.Array, num_answers: int) -> jax.Array:
  """Dense soft-score targets built inside jit from the padded answer lists.

  Args:
    answer_ids: [batch, K] answer-vocabulary ids, -1 = padding. Ids outside
      ``[0, num_answers)`` are dropped (answers outside the vocabulary have no target row,
      spec section 3.3: the example is still trained, towards all zeros).
    answer_scores: [batch, K] soft scores in [0, 1] (VQA: 0.3 per annotator up to 1).
    num_answers: size of the answer vocabulary A.

  Returns:
    [batch, num_answers] float32 with ``targets[b, answer_ids[b, k]] = answer_scores[b, k]``
    (the max if an id repeats).
  """
  answer_ids = jnp.asarray(answer_ids, jnp.int32)
  batch = answer_ids.shape[0]
  valid = (answer_ids >= 0) & (answer_ids < num_answers)
  ids = jnp.where(valid, answer_ids, num_answers)  # out of bounds -> dropped
  rows = jnp.broadcast_to(jnp.arange(batch)[:, None], ids.shape)
  targets = jnp.zeros((batch, num_answers), jnp.float32)
  return targets.at[rows, ids].max(jnp.asarray(answer_scores, jnp.float32), mode="drop")


def sigmoid_bce(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Elementwise PyTorch ``BCEWithLogitsLoss(reduction='none')``, numerically stable."""
  x = logits.astype(jnp.float32)
  return jnp.maximum(x, 0.0) - x * targets + jnp.log1p(jnp.exp(-jnp.abs(x)))


def answer_bce_loss(
  logits: jax.Array, targets: jax.Array, *, example_mask: jax.Array | None = None
) -> LossPair:
  """VQA/GQA loss: BCE-with-logits on soft scores, times the number of answers (G10).

  The original computes ``BCEWithLogitsLoss()(logit, target) * num_answers`` (mean over
  batch * A entries, times A), i.e. the per-example sum of per-answer BCE averaged over the
  batch. transformers' ``LxmertForQuestionAnswering`` uses single-label CE instead.

  Args:
    logits: [batch, num_answers].
    targets: [batch, num_answers] soft scores (:func:`soft_targets`).
    example_mask: optional [batch], 0 = eval padding.

  Returns:
    ``(sum over real examples of sum_a BCE, number of real examples)``.
  """
  per_example = jnp.sum(sigmoid_bce(logits, targets), axis=-1)
  weights = _example_weights(example_mask, per_example.shape[0])
  return jnp.sum(per_example * weights), jnp.sum(weights)


def answer_mce_loss(
  logits: jax.Array, targets: jax.Array, *, example_mask: jax.Array | None = None
) -> LossPair:
  """GQA ``--mceLoss``: softmax CE against the argmax of the soft target, times A.

  As in the original, an all-zero target row (answer outside the vocabulary) has argmax 0
  and is trained towards label 0; the CE's ignore index -1 can never trigger.

  Args:
    logits: [batch, num_answers].
    targets: [batch, num_answers] soft scores.
  """
  labels = jnp.argmax(targets, axis=-1)
  loss, _ = per_position_cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
  weights = _example_weights(example_mask, loss.shape[0])
  return jnp.sum(loss * weights) * logits.shape[-1], jnp.sum(weights)


def nlvr2_loss(
  logits: jax.Array,
  labels: jax.Array,
  *,
  ignore_index: int = IGNORE_INDEX,
  example_mask: jax.Array | None = None,
) -> LossPair:
  """NLVR2: 2-way softmax CE, mean over the batch, no scaling (G11: paper says sigmoid BCE).

  Args:
    logits: [batch, 2].
    labels: [batch] 1 = True, 0 = False.
  """
  return cross_entropy_loss(logits, labels, ignore_index=ignore_index, example_mask=example_mask)
