"""Evaluation metrics (VQA, GQA, NLVR2) and submission-file writers; host-side numpy."""

from lxmert_jax.metrics.gqa import GQAAccuracy, gqa_question_kind
from lxmert_jax.metrics.nlvr2 import NLVR2Accuracy, consistency_group
from lxmert_jax.metrics.submission import (
  write_gqa_submission,
  write_nlvr2_predictions,
  write_vqa_submission,
)
from lxmert_jax.metrics.vqa import (
  SoftScoreAccuracy,
  VQAAccuracy,
  normalize_prediction,
  soft_scores,
  vqa_accuracy,
)

__all__ = [
  "GQAAccuracy",
  "NLVR2Accuracy",
  "SoftScoreAccuracy",
  "VQAAccuracy",
  "consistency_group",
  "gqa_question_kind",
  "normalize_prediction",
  "soft_scores",
  "vqa_accuracy",
  "write_gqa_submission",
  "write_nlvr2_predictions",
  "write_vqa_submission",
]
