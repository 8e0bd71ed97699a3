"""Deterministic synthetic LXMERT pretraining batches, identical for the JAX and PyTorch sides.

Two forms of the same examples:

* ``clean_batch``: what ``lxmert_jax.data.pipeline`` yields (``schema.BATCH_KEYS`` plus
  ``image_index``); our train step corrupts it in-jit (masking, mismatching, QA sampling).
* ``pretraining_targets``: an already corrupted batch plus every target, in the proportions of the
  original recipe (15% of WordPieces, 15% of boxes, half the pairs mismatched), which is what
  transformers' ``LxmertForPreTraining`` needs to compute all its losses.

Values never influence speed here (no data-dependent control flow on either side), so random
numbers with the right shapes and label ranges are enough.
"""

from __future__ import annotations

import numpy as np

from lxmert_jax.models.config import LxmertConfig

# Ids of bert-base-uncased's special tokens (the synthetic text never needs a real vocab file).
CLS_ID, SEP_ID, MASK_ID = 101, 102, 103


def clean_batch(
  config: LxmertConfig, batch: int, seq_len: int, num_boxes: int, seed: int = 0
) -> dict[str, np.ndarray]:
  """A pipeline batch [batch, ...] of random sentences (lengths 6..seq_len) and features."""
  rng = np.random.default_rng(seed)
  vocab = config.vocab_size
  lengths = rng.integers(min(6, seq_len), seq_len + 1, size=batch)
  input_ids = np.zeros((batch, seq_len), np.int32)
  attention_mask = np.zeros((batch, seq_len), np.int32)
  for i, n in enumerate(lengths):
    body = rng.integers(min(1000, vocab - 1), vocab, size=n)
    body[0], body[n - 1] = min(CLS_ID, vocab - 1), min(SEP_ID, vocab - 1)
    input_ids[i, :n], attention_mask[i, :n] = body, 1
  answers = rng.integers(0, config.num_qa_labels, size=(batch, 10)).astype(np.int32)
  answers[:, 3:] = -1  # Three answers per question, the rest padding.
  # Two corners per box, sorted so that x1 <= x2 and y1 <= y2.
  boxes = np.sort(rng.uniform(0, 1, size=(batch, num_boxes, 2, 2)), axis=2)
  return {
    "input_ids": input_ids,
    "attention_mask": attention_mask,
    "token_type_ids": np.zeros_like(input_ids),
    "visual_feats": rng.uniform(0, 3, (batch, num_boxes, config.visual_feat_dim)).astype(
      np.float32
    ),
    "visual_pos": boxes.reshape(batch, num_boxes, 4).astype(np.float32),  # (x1, y1, x2, y2)
    "obj_labels": rng.integers(0, config.num_object_labels, (batch, num_boxes)).astype(np.int32),
    "obj_confs": rng.uniform(0, 1, (batch, num_boxes)).astype(np.float32),
    "attr_labels": rng.integers(0, config.num_attr_labels, (batch, num_boxes)).astype(np.int32),
    "attr_confs": rng.uniform(0, 1, (batch, num_boxes)).astype(np.float32),
    "answer_ids": answers,
    "answer_scores": np.where(answers >= 0, 0.6, 0.0).astype(np.float32),
    "answer_type": rng.integers(0, 3, size=batch).astype(np.int32),
    "label": np.full((batch,), -1, np.int32),
    "example_mask": np.ones((batch,), np.float32),
    "image_index": np.arange(batch, dtype=np.int32),
  }


def pretraining_targets(
  config: LxmertConfig, batch: int, seq_len: int, num_boxes: int, seed: int = 0
) -> dict[str, np.ndarray]:
  """A corrupted batch plus all six tasks' targets (ignore index -1, as the original).

  Keys: the model inputs (``input_ids`` ... ``visual_pos``) and ``lm_labels`` [B, L],
  ``matched_label`` [B], ``obj_labels``/``obj_confs``/``attr_labels``/``attr_confs`` [B, N],
  ``feat_targets`` [B, N, F], ``feat_mask`` [B, N], ``ans`` [B].
  """
  out = clean_batch(config, batch, seq_len, num_boxes, seed)
  rng = np.random.default_rng(seed + 1)
  ids, mask = out["input_ids"], out["attention_mask"]
  # Real WordPieces only: [CLS] (position 0) and [SEP] (last real position) are never masked.
  body = mask.astype(bool) & (np.arange(seq_len)[None] > 0)
  body &= np.arange(seq_len)[None] < mask.sum(1, keepdims=True) - 1
  selected = body & (rng.uniform(size=ids.shape) < 0.15)
  out["lm_labels"] = np.where(selected, ids, -1).astype(np.int32)
  out["input_ids"] = np.where(selected, min(MASK_ID, config.vocab_size - 1), ids).astype(np.int32)
  feat_mask = rng.uniform(size=(batch, num_boxes)) < 0.15
  out["feat_targets"] = out["visual_feats"]
  out["visual_feats"] = np.where(feat_mask[..., None], 0.0, out["visual_feats"]).astype(np.float32)
  out["feat_mask"] = feat_mask.astype(np.float32)
  matched = (rng.uniform(size=batch) < 0.5).astype(np.int32)
  out["matched_label"] = matched
  out["ans"] = np.where(matched == 1, out["answer_ids"][:, 0], -1).astype(np.int32)
  return out
