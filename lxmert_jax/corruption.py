"""Pretraining input corruption inside the jitted step (spec sections 2.3 and 2.4).

Everything here is a pure function of a PRNG key and the batch, so a step is reproducible
from (seed, step, device): the caller folds in the step and ``lax.axis_index`` before calling.

Where on-device sampling differs from the original data loader, and why it is equivalent in
expectation:

* Random replacement features (10% of masked boxes). The original copies box ``randint(0, 35)``
  of the image of a uniformly random sentence-entry of the whole training set. Here the source
  is a uniformly random example of the local device batch and a uniformly random box. A
  shuffled batch is a uniform sample of sentence-entries, so the source image has the same
  (sentence-weighted) distribution; only the pool is smaller.
* Mismatched sentences (50% of examples). The original draws uniformly random OTHER
  sentence-entries of the dataset until one has a different ``img_id``. Here candidates are
  drawn uniformly from the other examples of the batch (the global batch when ``axis_name``
  is given, else the device batch) and the first whose ``image_index`` differs is used, which
  is a uniform draw among the batch's sentences of other images; again the batch is a uniform
  sample of the dataset. If all ``max_tries`` candidates share the example's image (e.g. a
  device batch filled by one image group) the example stays matched, so the realised
  mismatch rate can fall slightly below 50% on badly shuffled data;
  ``1 - mean(matched_label)`` measures it.
* Token and box selections reuse one uniform draw per position exactly like the original
  (``p < rate`` selects, ``p / rate`` picks the 80/10/10 branch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from lxmert_jax.losses import IGNORE_INDEX

# Sentence arrays that travel together when a sentence is swapped for a mismatched one.
SENTENCE_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def mask_tokens(
  rng: jax.Array,
  input_ids: jax.Array,
  attention_mask: jax.Array,
  *,
  vocab_size: int,
  mask_token_id: int,
  special_token_ids: Sequence[int],
  mask_prob: float = 0.15,
  ignore_index: int = IGNORE_INDEX,
) -> tuple[jax.Array, jax.Array]:
  """BERT-style token masking (``random_word`` of the original).

  Each real WordPiece is selected independently with ``mask_prob``; a selected piece becomes
  [MASK] with probability 0.8, a uniformly random id from the ENTIRE vocabulary (special and
  unused tokens included, as the original draws from the whole vocab dict) with 0.1, and stays
  unchanged with 0.1. [CLS], [SEP] and padding are never selected: the original masks the
  pieces before adding them. No guarantee that any token is masked.

  Args:
    rng: PRNG key.
    input_ids: [batch, seq_len] int32 token ids including [CLS]/[SEP]/padding.
    attention_mask: [batch, seq_len], 1 = real token, 0 = padding.
    vocab_size: size of the WordPiece vocabulary.
    mask_token_id: id of [MASK].
    special_token_ids: ids never masked (at least [CLS], [SEP], [PAD]).
    mask_prob: selection rate (``--wordMaskRate``, 0.15).
    ignore_index: label of unselected positions.

  Returns:
    ``(masked_input_ids, lm_labels)``, both [batch, seq_len] int32; ``lm_labels`` is the
    original id at selected positions and ``ignore_index`` elsewhere.
  """
  input_ids = jnp.asarray(input_ids, jnp.int32)
  select_rng, random_rng = jax.random.split(rng)
  prob = jax.random.uniform(select_rng, input_ids.shape)
  special = jnp.asarray(list(special_token_ids), jnp.int32)
  is_special = jnp.any(input_ids[..., None] == special, axis=-1)
  selected = (jnp.asarray(attention_mask) > 0) & ~is_special & (prob < mask_prob)
  branch = prob / mask_prob
  random_ids = jax.random.randint(random_rng, input_ids.shape, 0, vocab_size, jnp.int32)
  masked = jnp.where(branch < 0.8, mask_token_id, jnp.where(branch < 0.9, random_ids, input_ids))
  masked_ids = jnp.where(selected, masked, input_ids)
  lm_labels = jnp.where(selected, input_ids, ignore_index)
  return masked_ids, lm_labels


def _sample_examples(rng: jax.Array, shape, example_mask: jax.Array | None, batch: int):
  """Uniform example indices in [0, batch), restricted to real examples if a mask is given."""
  if example_mask is None:
    return jax.random.randint(rng, shape, 0, batch, jnp.int32)
  logits = jnp.where(jnp.asarray(example_mask) > 0, 0.0, -jnp.inf)
  return jax.random.categorical(rng, logits, shape=shape).astype(jnp.int32)


def mask_objects(
  rng: jax.Array,
  visual_feats: jax.Array,
  *,
  mask_prob: float = 0.15,
  example_mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Object-feature masking (``random_feat`` of the original).

  Each box is selected independently with ``mask_prob``: its feature becomes all zeros with
  probability 0.8, the feature of a random box of a random example of the batch with 0.1
  (module docstring: the original samples from the whole dataset), and stays unchanged with
  0.1. ``feat_mask`` is 1 for every selected box. Box coordinates are never corrupted.

  Args:
    rng: PRNG key.
    visual_feats: [batch, num_boxes, feat_dim].
    mask_prob: selection rate (``--objMaskRate``, 0.15).
    example_mask: optional [batch]; padding examples are never used as feature sources.

  Returns:
    ``(masked_feats [batch, num_boxes, feat_dim], feat_mask [batch, num_boxes] float32)``.
  """
  batch, num_boxes = visual_feats.shape[:2]
  select_rng, example_rng, box_rng = jax.random.split(rng, 3)
  prob = jax.random.uniform(select_rng, (batch, num_boxes))
  selected = prob < mask_prob
  branch = prob / mask_prob
  src_example = _sample_examples(example_rng, (batch, num_boxes), example_mask, batch)
  src_box = jax.random.randint(box_rng, (batch, num_boxes), 0, num_boxes, jnp.int32)
  random_feats = visual_feats[src_example, src_box]
  masked = jnp.where(
    (branch < 0.8)[..., None],
    jnp.zeros_like(visual_feats),
    jnp.where((branch < 0.9)[..., None], random_feats, visual_feats),
  )
  masked_feats = jnp.where(selected[..., None], masked, visual_feats)
  return masked_feats, selected.astype(jnp.float32)


def mismatch_sentences(
  rng: jax.Array,
  sentences: Mapping[str, jax.Array],
  image_index: jax.Array,
  *,
  mismatch_prob: float = 0.5,
  max_tries: int = 8,
  axis_name: str | None = None,
  example_mask: jax.Array | None = None,
) -> tuple[dict[str, jax.Array], jax.Array]:
  """Replaces half of the sentences by sentences of other images (spec section 2.4).

  Candidates are drawn uniformly among the OTHER examples of the pool (global batch when
  ``axis_name`` is given, else the device batch); the first of ``max_tries`` candidates whose
  ``image_index`` differs, and that is not eval padding, supplies the sentence. With no such
  candidate the example stays matched (module docstring).

  Args:
    rng: PRNG key (already folded with the device index when ``axis_name`` is set).
    sentences: arrays of the sentence, each [batch, seq_len] (``SENTENCE_KEYS``).
    image_index: [batch] int32 image identity (hash of ``img_id``).
    mismatch_prob: probability of trying to mismatch an example.
    max_tries: candidates drawn per example before giving up.
    axis_name: pmap/shard_map axis to gather the global batch over, or None.
    example_mask: optional [batch]; padding examples are neither mismatched nor sources.

  Returns:
    ``(new_sentences, matched_label)`` with the same keys and shapes as ``sentences`` and
    ``matched_label`` [batch] int32 (1 = matched, 0 = mismatched).
  """
  image_index = jnp.asarray(image_index, jnp.int32)
  batch = image_index.shape[0]
  real = jnp.ones((batch,), bool) if example_mask is None else jnp.asarray(example_mask) > 0

  def gather(x):
    return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)

  pool = {k: gather(jnp.asarray(v)) for k, v in sentences.items()}
  pool_image, pool_real = gather(image_index), gather(real)
  pool_size = pool_image.shape[0]
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * batch
  self_index = offset + jnp.arange(batch, dtype=jnp.int32)

  flip_rng, candidate_rng = jax.random.split(rng)
  flip = jax.random.uniform(flip_rng, (batch,)) < mismatch_prob
  # Uniform over the pool minus the example itself: shift by 1 + U{0, pool_size - 2}.
  shift = 1 + jax.random.randint(
    candidate_rng, (batch, max_tries), 0, max(pool_size - 1, 1), jnp.int32
  )
  candidates = (self_index[:, None] + shift) % pool_size
  usable = (pool_image[candidates] != image_index[:, None]) & pool_real[candidates]
  first = jnp.argmax(usable, axis=-1)
  chosen = jnp.take_along_axis(candidates, first[:, None], axis=-1)[:, 0]
  mismatched = flip & real & jnp.any(usable, axis=-1)

  new_sentences = {}
  for key, value in sentences.items():
    value = jnp.asarray(value)
    other = pool[key][chosen]
    cond = mismatched.reshape((batch,) + (1,) * (value.ndim - 1))
    new_sentences[key] = jnp.where(cond, other, value)
  return new_sentences, (~mismatched).astype(jnp.int32)


def sample_qa_labels(
  rng: jax.Array,
  answer_ids: jax.Array,
  answer_scores: jax.Array,
  *,
  matched_label: jax.Array | None = None,
  ignore_index: int = IGNORE_INDEX,
) -> jax.Array:
  """Samples ONE pretraining QA label per example, with probability proportional to its score.

  As in the original: no answer -> ``ignore_index``; exactly one answer -> that answer
  whatever its score; several -> ``np.random.multinomial`` on score / sum. Several answers all
  scored 0 (the original divides by zero there) are sampled uniformly. Mismatched pairs get
  ``ignore_index`` (G12: QA is the only loss they skip).

  Args:
    rng: PRNG key.
    answer_ids: [batch, K] ids into the pretraining answer table, -1 = padding.
    answer_scores: [batch, K] soft scores.
    matched_label: optional [batch], 0 = mismatched.

  Returns:
    [batch] int32 answer ids.
  """
  answer_ids = jnp.asarray(answer_ids, jnp.int32)
  valid = answer_ids >= 0
  num_valid = jnp.sum(valid, axis=-1, keepdims=True)
  weight = jnp.where(valid, jnp.maximum(jnp.asarray(answer_scores, jnp.float32), 0.0), 0.0)
  weight = jnp.where(num_valid == 1, valid.astype(jnp.float32), weight)
  all_zero = jnp.sum(weight, axis=-1, keepdims=True) <= 0
  weight = jnp.where(all_zero, valid.astype(jnp.float32), weight)
  logits = jnp.where(weight > 0, jnp.log(jnp.where(weight > 0, weight, 1.0)), -jnp.inf)
  choice = jax.random.categorical(rng, logits, axis=-1)
  ans = jnp.take_along_axis(answer_ids, choice[:, None], axis=-1)[:, 0]
  ans = jnp.where(num_valid[:, 0] > 0, ans, ignore_index)
  if matched_label is not None:
    ans = jnp.where(jnp.asarray(matched_label) == 1, ans, ignore_index)
  return ans


def corrupt_pretraining_batch(
  rng: jax.Array,
  batch: Mapping[str, jax.Array],
  *,
  vocab_size: int,
  mask_token_id: int,
  special_token_ids: Sequence[int],
  word_mask_rate: float = 0.15,
  obj_mask_rate: float = 0.15,
  mismatch_prob: float = 0.5,
  max_tries: int = 8,
  axis_name: str | None = None,
  ignore_index: int = IGNORE_INDEX,
) -> dict[str, jax.Array]:
  """Builds the corrupted inputs and all pretraining targets from a clean batch.

  Order as in the original: the sentence is swapped first (mismatch), then its WordPieces are
  masked, the object features are masked, and the QA label is sampled from the example's own
  answers (-1 when mismatched). Mismatched pairs keep their MLM and visual losses (G12).

  Args:
    rng: PRNG key, unique per step and device (fold in both before calling).
    batch: the pipeline's batch (``lxmert_jax.data.schema`` keys): ``input_ids``,
      ``attention_mask``, ``token_type_ids`` [B, L], ``visual_feats`` [B, N, F],
      ``answer_ids``/``answer_scores`` [B, K], ``image_index`` [B] (needed when
      ``mismatch_prob > 0``), optional ``example_mask`` [B].
    vocab_size, mask_token_id, special_token_ids: see :func:`mask_tokens`.
    word_mask_rate: token selection rate.
    obj_mask_rate: box selection rate.
    mismatch_prob: probability of a mismatched pair; 0 disables the matching task's swaps.
    max_tries: mismatch candidates per example.
    axis_name: device axis for drawing mismatched sentences from the global batch.
    ignore_index: label value meaning "no target".

  Returns:
    A new dict: every input key, with ``input_ids``/``attention_mask``/``token_type_ids`` and
    ``visual_feats`` replaced by their corrupted versions, plus the targets ``lm_labels``
    [B, L], ``feat_targets`` [B, N, F] (clean features), ``feat_mask`` [B, N],
    ``matched_label`` [B] and ``ans`` [B].
  """
  match_rng, token_rng, object_rng, qa_rng = jax.random.split(rng, 4)
  example_mask = batch.get("example_mask")
  out = dict(batch)
  batch_size = batch["input_ids"].shape[0]
  sentences = {k: batch[k] for k in SENTENCE_KEYS if k in batch}
  if mismatch_prob > 0:
    if "image_index" not in batch:
      raise KeyError("mismatched pairs need batch['image_index'] (int32 hash of img_id)")
    sentences, matched_label = mismatch_sentences(
      match_rng,
      sentences,
      batch["image_index"],
      mismatch_prob=mismatch_prob,
      max_tries=max_tries,
      axis_name=axis_name,
      example_mask=example_mask,
    )
  else:
    matched_label = jnp.ones((batch_size,), jnp.int32)
  out.update(sentences)
  out["input_ids"], out["lm_labels"] = mask_tokens(
    token_rng,
    sentences["input_ids"],
    sentences["attention_mask"],
    vocab_size=vocab_size,
    mask_token_id=mask_token_id,
    special_token_ids=special_token_ids,
    mask_prob=word_mask_rate,
    ignore_index=ignore_index,
  )
  out["feat_targets"] = batch["visual_feats"]
  out["visual_feats"], out["feat_mask"] = mask_objects(
    object_rng, batch["visual_feats"], mask_prob=obj_mask_rate, example_mask=example_mask
  )
  out["matched_label"] = matched_label
  out["ans"] = sample_qa_labels(
    qa_rng,
    batch["answer_ids"],
    batch["answer_scores"],
    matched_label=matched_label,
    ignore_index=ignore_index,
  )
  return out
