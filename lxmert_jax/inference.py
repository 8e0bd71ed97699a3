"""Answering questions with a trained LXMERT checkpoint: tokenise, bucket, run, decode.

``Predictor`` wraps any checkpoint that :func:`lxmert_jax.pretrained.load_pretrained` reads, its
answer vocabulary and its WordPiece tokenizer. Questions are raw strings and object features are
numpy arrays; the batch is padded to a few fixed shapes ("buckets") so that XLA compiles the
forward pass once per bucket instead of once per request size.

Probabilities: the original LXMERT trains the VQA/GQA heads with binary cross-entropy over soft
scores (spec section 3.3), so each answer's sigmoid is its probability of being correct; these do
not sum to one. ``probability="softmax"`` gives a distribution over the answer vocabulary instead
(what transformers' single-label CE head is trained for). Raw logits are always returned too.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Batch sizes the forward pass is compiled for; larger requests run in chunks of the largest.
BATCH_BUCKETS = (1, 8, 32, 128)
PROBABILITIES = ("sigmoid", "softmax")
# load_pretrained tasks that end in an answer head.
ANSWER_TASKS = ("qa", "pretraining", "nlvr2")
# NLVR2 head: 2-way softmax (original code, spec G11); index 1 means the statement is true.
NLVR2_TRUE = 1


@dataclasses.dataclass(frozen=True)
class AttentionMaps:
  """Attention probabilities of one example, padding removed (T tokens, N boxes).

  Attributes:
    language: [l_layers, heads, T, T] language self-attention.
    vision: [r_layers, heads, N, N] object-relationship self-attention.
    language_to_vision: [x_layers, heads, T, N] cross-attention, tokens attending to boxes.
    vision_to_language: [x_layers, heads, N, T] cross-attention, boxes attending to tokens.
  """

  language: np.ndarray
  vision: np.ndarray
  language_to_vision: np.ndarray
  vision_to_language: np.ndarray

  @classmethod
  def from_batch(cls, attn: dict[str, np.ndarray], i: int, t: int, n: int) -> AttentionMaps:
    """Example ``i`` of batched maps [layers, B, heads, q, k], cut to t tokens and n boxes."""
    return cls(
      language=attn["language"][:, i, :, :t, :t],
      vision=attn["vision"][:, i, :, :n, :n],
      language_to_vision=attn["language_to_vision"][:, i, :, :t, :n],
      vision_to_language=attn["vision_to_language"][:, i, :, :n, :t],
    )


@dataclasses.dataclass(frozen=True)
class Answer:
  """One candidate answer.

  Attributes:
    text: the answer string.
    prob: its probability (sigmoid or softmax, see ``Predictor``).
    logit: the head's raw score.
    index: its row in the answer vocabulary.
  """

  text: str
  prob: float
  logit: float
  index: int


@dataclasses.dataclass(frozen=True)
class Prediction:
  """The answers to one question about one image.

  Attributes:
    question: the question as given.
    tokens: its WordPieces including [CLS] and [SEP] (T tokens, no padding).
    top: the ``top_k`` most likely answers, best first.
    logits: [num_answers] raw scores of every answer.
    boxes: [N, 4] the normalised (x1, y1, x2, y2) boxes the answer was computed from.
    probability: how ``Answer.prob`` was computed: "sigmoid" or "softmax".
    attentions: attention maps of this example when requested, else None.
  """

  question: str
  tokens: list[str]
  top: list[Answer]
  logits: np.ndarray
  boxes: np.ndarray
  probability: str
  attentions: AttentionMaps | None = None

  @property
  def answer(self) -> str:
    """The most likely answer."""
    return self.top[0].text


@dataclasses.dataclass(frozen=True)
class PairPrediction:
  """The NLVR2 verdict on one statement about an image pair.

  Attributes:
    statement: the statement as given.
    label: True when the statement holds for the pair.
    prob: probability that the statement is true (softmax of the 2-way head).
    logits: [2] raw scores (index 1 = true).
  """

  statement: str
  label: bool
  prob: float
  logits: np.ndarray


class Predictor:
  """Answers questions (or verifies NLVR2 statements) with a loaded LXMERT checkpoint."""

  def __init__(
    self,
    checkpoint: Any,
    answers: Sequence[str] | str | os.PathLike | None = None,
    tokenizer: Any = None,
    *,
    probability: str = "sigmoid",
    batch_buckets: Sequence[int] = BATCH_BUCKETS,
    seq_buckets: Sequence[int] | None = None,
    max_boxes: int | None = None,
    dtype=jnp.float32,
  ):
    """Builds a predictor.

    Args:
      checkpoint: a training workdir (see :meth:`from_workdir`), anything ``load_pretrained``
        accepts (a params directory, a transformers ``unc-nlp/lxmert-*`` directory, an
        original ``.pth``), or an already loaded ``LxmertPretrained``.
      answers: the answer vocabulary, row i = head output i: a list of strings, or a JSON list /
        ``{answer: index}`` JSON / one-answer-per-line text file. Defaults to an answer file
        inside ``checkpoint`` when it is a directory. Not needed for NLVR2 checkpoints.
      tokenizer: a ``WordPieceTokenizer`` or the path of its ``vocab.txt``. Defaults to
        ``vocab.txt`` inside ``checkpoint`` when it is a directory.
      probability: "sigmoid" (per-answer, matches the BCE-trained heads) or "softmax".
      batch_buckets: batch sizes to compile for; requests are padded up to the next one.
      seq_buckets: token lengths to compile for; defaults to the tokenizer's max length.
      max_boxes: boxes per image the checkpoint was trained with; more boxes warn (the model
        accepts any number, but the answers come from outside the training distribution).
      dtype: compute dtype of the model when it is loaded from a path (params stay float32).
    """
    from lxmert_jax.checkpoint import find_checkpoint_step
    from lxmert_jax.pretrained import load_pretrained

    if probability not in PROBABILITIES:
      raise ValueError(f"probability must be one of {PROBABILITIES}, got {probability!r}")
    directory = checkpoint if isinstance(checkpoint, str | os.PathLike) else None
    self.feature_scaling: dict | None = None
    if directory is not None and find_checkpoint_step(os.fspath(directory)) is not None:
      # A training workdir: its checkpoint carries the answers; vocab and data sit beside it.
      run = load_trained_run(directory, dtype=dtype)
      checkpoint, answers = run.model, run.answers if answers is None else answers
      tokenizer = run.tokenizer if tokenizer is None else tokenizer
      max_boxes = run.num_boxes if max_boxes is None else max_boxes
      self.feature_scaling = run.feature_scaling
    elif directory is not None:
      checkpoint = load_pretrained(checkpoint, dtype=dtype)
    self.loaded = checkpoint
    self.config = checkpoint.config
    self.task = checkpoint.task
    if self.task not in ANSWER_TASKS:
      raise ValueError(
        f"the checkpoint {directory or ''} has no answer head (task {self.task!r}); Predictor "
        f"needs one of the tasks {ANSWER_TASKS}: fine-tune it first"
      )
    self.is_nlvr2 = self.task == "nlvr2"
    self.tokenizer = load_tokenizer(tokenizer, directory)
    self.answers = None if self.is_nlvr2 else load_answer_vocab(answers, directory)
    if self.answers is not None:
      self._check_vocab_size()
    self.probability = probability
    self.batch_buckets = tuple(sorted(batch_buckets))
    max_len = int(self.tokenizer.max_seq_length)
    self.seq_buckets = tuple(sorted(seq_buckets or (max_len,)))
    if self.seq_buckets[-1] < max_len:
      raise ValueError(
        f"the largest seq bucket {self.seq_buckets[-1]} is shorter than the tokenizer's "
        f"max_seq_length {max_len}"
      )
    self.max_boxes = max_boxes
    # (batch, seq, boxes, output_attentions) -> times the forward pass was traced. jit traces
    # exactly when it compiles a new shape, so this counts compilations.
    self.compilations: collections.Counter = collections.Counter()
    self._forward = jax.jit(self._forward_impl, static_argnames=("output_attentions",))

  @classmethod
  def from_workdir(cls, workdir: str | os.PathLike, **kwargs) -> Predictor:
    """Loads the latest model that training (``python -m lxmert_jax.main``) saved in ``workdir``.

    Reads ``<workdir>/checkpoints/<latest step>`` (params, model config, answer vocabulary,
    run config), the tokenizer's ``vocab.txt`` (in the workdir, else in the run's data
    directory) at the run's ``max_seq_length``, and from the data's ``dataset_info.json`` the
    boxes per image and, for easy-VQA, the feature scaling that :meth:`image_features` applies.

    Args:
      workdir: a training workdir, its ``checkpoints`` directory or one step directory.
      **kwargs: passed to ``Predictor`` (e.g. ``probability``, ``batch_buckets``).

    Raises:
      FileNotFoundError: naming what is missing and the command that produces it.
    """
    find_trained_step(workdir)  # Raises, naming what is missing and how to produce it.
    return cls(workdir, **kwargs)

  def image_features(self, image) -> tuple[np.ndarray, np.ndarray]:
    """Runs the easy-VQA region detector on an image, as the training data was built.

    Args:
      image: [H, W, 3] uint8 RGB pixels or an image file path.

    Returns:
      ``(visual_feats [N, F], visual_pos [N, 4])`` for :meth:`predict`.
    """
    from lxmert_jax.easy_vqa import features

    if self.feature_scaling is None:
      raise ValueError(
        "this predictor has no easy-VQA feature scaling: image_features() needs a model trained "
        "on easy-VQA features (Predictor.from_workdir of such a run); for other checkpoints, "
        "extract features with the detector they were trained with"
      )
    scaling = features.FeatureScaling.from_dict(self.feature_scaling)
    num_boxes = self.max_boxes or features.regions.MAX_BOXES
    regions = features.extract_regions(image, num_boxes=num_boxes, scaling=scaling)
    return regions.features, regions.boxes

  # -------------------------------------------------------------------------------------------
  # Public API.

  def predict(
    self,
    questions: str | Sequence[str],
    visual_feats,
    visual_pos,
    top_k: int = 5,
    *,
    output_attentions: bool = False,
  ) -> Prediction | list[Prediction]:
    """Answers questions about images.

    Args:
      questions: one question, or B questions.
      visual_feats: [N, F] features of one image (shared by every question), [B, N, F], or a
        list of B arrays [N_i, F] (different box counts are padded and masked).
      visual_pos: the matching normalised (x1, y1, x2, y2) boxes: [N, 4], [B, N, 4] or a list.
      top_k: answers to return per question.
      output_attentions: also return every attention map (for ``lxmert_jax.viz``).

    Returns:
      A ``Prediction`` for a single question string, else a list of B of them.
    """
    if self.is_nlvr2:
      raise ValueError("this is an NLVR2 checkpoint: use predict_pair(statements, ...)")
    single = isinstance(questions, str)
    questions = [questions] if single else list(questions)
    feats, pos, box_mask = self._visual_batch(visual_feats, visual_pos, len(questions))
    if top_k < 1:
      raise ValueError(f"top_k must be >= 1, got {top_k}")
    top_k = min(int(top_k), len(self.answers))
    ids, lengths = self._tokenize(questions)
    logits, attn = self._run(ids, lengths, feats, pos, box_mask, output_attentions)
    probs = _normalise(logits, self.probability)
    preds = []
    for i, question in enumerate(questions):
      order = np.argsort(-logits[i], kind="stable")[:top_k]
      top = [
        Answer(self.answers[j], float(probs[i, j]), float(logits[i, j]), int(j)) for j in order
      ]
      n = int(box_mask[i].sum())
      maps = None if attn is None else AttentionMaps.from_batch(attn, i, lengths[i], n)
      tokens = self.tokenizer.convert_ids_to_tokens(ids[i][: lengths[i]])
      preds.append(Prediction(question, tokens, top, logits[i], pos[i, :n], self.probability, maps))
    return preds[0] if single else preds

  def predict_pair(
    self, statements: str | Sequence[str], feats_pair, pos_pair
  ) -> PairPrediction | list[PairPrediction]:
    """NLVR2: is each statement true of its image pair?

    Args:
      statements: one statement, or B statements.
      feats_pair: [2, N, F] features of one image pair, or [B, 2, N, F].
      pos_pair: [2, N, 4] or [B, 2, N, 4] normalised boxes.

    Returns:
      A ``PairPrediction`` for a single statement string, else a list of B of them.
    """
    if not self.is_nlvr2:
      raise ValueError("predict_pair needs an NLVR2 checkpoint (LxmertForNLVR2); use predict()")
    single = isinstance(statements, str)
    statements = [statements] if single else list(statements)
    feats = np.asarray(feats_pair, np.float32)
    pos = np.asarray(pos_pair, np.float32)
    feats, pos = (x[None] if x.ndim == 3 else x for x in (feats, pos))
    if feats.ndim != 4 or feats.shape[1] != 2 or pos.shape[:2] != feats.shape[:2]:
      raise ValueError(
        "feats_pair/pos_pair must be [2, N, F]/[2, N, 4] or [B, 2, N, F]/[B, 2, N, 4], got "
        f"shapes {feats.shape} and {pos.shape}"
      )
    b = feats.shape[0]
    if b != len(statements):
      raise ValueError(f"got {len(statements)} statements but feats_pair holds {b} image pairs")
    # Validates every image of every pair (dims, finiteness) in the [2B, N, .] layout.
    flat_feats, flat_pos, _ = self._visual_batch(
      feats.reshape(-1, *feats.shape[2:]), pos.reshape(-1, *pos.shape[2:]), 2 * b, "_pair"
    )
    ids, lengths = self._tokenize(statements)
    pair_feats = flat_feats.reshape(feats.shape)
    logits, _ = self._run(ids, lengths, pair_feats, flat_pos.reshape(pos.shape), None, False)
    probs = _normalise(logits, "softmax")[:, NLVR2_TRUE]
    preds = [
      PairPrediction(s, bool(probs[i] > 0.5), float(probs[i]), logits[i])
      for i, s in enumerate(statements)
    ]
    return preds[0] if single else preds

  @property
  def num_compilations(self) -> int:
    """How many distinct input shapes the forward pass has been compiled for."""
    return sum(self.compilations.values())

  # -------------------------------------------------------------------------------------------
  # Input checks and encoding.

  def _check_vocab_size(self):
    num_labels = self.config.num_qa_labels
    if num_labels != len(self.answers):
      raise ValueError(
        f"the answer vocabulary has {len(self.answers)} entries but the checkpoint's answer "
        f"head has {num_labels} outputs; pass the vocabulary the head was trained with"
      )

  def _visual_batch(self, visual_feats, visual_pos, batch: int, suffix: str = ""):
    """Checks features and boxes; returns [B, N, F], [B, N, 4] and the box mask [B, N]."""
    feat_dim, pos_dim = self.config.visual_feat_dim, self.config.visual_pos_dim
    feats, pos, mask = as_box_batch(
      visual_feats,
      visual_pos,
      feat_dim,
      pos_dim,
      names=(f"visual_feats{suffix}", f"visual_pos{suffix}"),
    )
    if feats.shape[0] == 1 and batch > 1:
      # One image, several questions: share its features.
      feats, pos, mask = (np.repeat(x, batch, axis=0) for x in (feats, pos, mask))
    if feats.shape[0] != batch:
      raise ValueError(
        f"got {batch} questions but visual_feats{suffix} holds {feats.shape[0]} images; "
        "pass one image per question or one image for all"
      )
    most = int(mask.sum(axis=1).max())
    if self.max_boxes is not None and most > self.max_boxes:
      warnings.warn(
        f"an image has {most} boxes but this checkpoint was trained with {self.max_boxes}; "
        "answers may be unreliable",
        stacklevel=3,
      )
    return feats, pos, mask

  def _tokenize(self, questions: list[str]) -> tuple[list[list[int]], list[int]]:
    """WordPiece ids ([CLS] ... [SEP], unpadded) and their lengths, one list per question."""
    ids = []
    for i, q in enumerate(questions):
      if not isinstance(q, str):
        raise TypeError(f"question {i} must be a string, got {type(q).__name__}")
      if not q.strip():
        raise ValueError(f"question {i} is empty")
      ids.append(list(self.tokenizer.encode(q)))
    return ids, [len(x) for x in ids]

  # -------------------------------------------------------------------------------------------
  # Bucketed execution.

  def _run(self, ids, lengths, feats, pos, box_mask, output_attentions):
    """Runs the model over bucket-padded chunks; returns logits [B, A] and attentions."""
    seq = pick_bucket(max(lengths), self.seq_buckets, "question length")
    input_ids = np.zeros((len(ids), seq), np.int32)
    for i, row in enumerate(ids):
      input_ids[i, : len(row)] = row
    attention_mask = (np.arange(seq)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    if box_mask is not None and box_mask.all():
      box_mask = None  # Equal box counts: the original's unmasked path, bit for bit.
    chunk = self.batch_buckets[-1]
    logits, attns = [], []
    for start in range(0, len(ids), chunk):
      rows = slice(start, start + chunk)
      n = len(ids[rows])
      bucket = pick_bucket(n, self.batch_buckets, "batch size")
      args = [input_ids[rows], attention_mask[rows], feats[rows], pos[rows]]
      args.append(None if box_mask is None else box_mask[rows].astype(np.int32))
      args = [None if a is None else pad_rows(a, bucket) for a in args]
      out_logits, out_attn = self._forward(
        self.loaded.params, *args, output_attentions=output_attentions
      )
      logits.append(np.asarray(out_logits, np.float32)[:n])
      if output_attentions:
        attns.append({k: np.asarray(v)[:, :n] for k, v in out_attn.items()})
    attn = None
    if output_attentions:
      attn = {k: np.concatenate([a[k] for a in attns], axis=1) for k in attns[0]}
    return np.concatenate(logits), attn

  def _forward_impl(
    self, params, input_ids, attention_mask, visual_feats, visual_pos, box_mask, output_attentions
  ):
    """The jitted forward pass (Python body runs only while tracing a new shape).

    Args:
      params: the checkpoint's parameter tree.
      input_ids, attention_mask: [b, L] int32.
      visual_feats: [b, N, F] ([b, 2, N, F] for NLVR2); visual_pos: [b, N, 4] (or pairs).
      box_mask: [b, N] int32 or None (no box padding: the original's unmasked path).
      output_attentions: return attention maps too.

    Returns:
      logits [b, A] and a dict of stacked attention maps, each [layers, b, heads, q, k].
    """
    key = (input_ids.shape[0], input_ids.shape[1], visual_feats.shape[-2], box_mask is not None)
    key += (output_attentions,)
    self.compilations[key] += 1
    out = self.loaded.model.apply(
      {"params": params},
      input_ids,
      visual_feats,
      visual_pos,
      attention_mask=attention_mask,
      visual_attention_mask=box_mask,
      deterministic=True,
      output_attentions=output_attentions,
    )
    logits = out.logits if self.is_nlvr2 else out.question_answering_score
    attn = _stack_attentions(out) if output_attentions else {}
    return logits, attn


def _normalise(logits: np.ndarray, probability: str) -> np.ndarray:
  """[B, A] logits -> probabilities, computed in float64 so tiny ones do not round to 0."""
  x = logits.astype(np.float64)
  if probability == "sigmoid":
    return np.exp(-np.logaddexp(0.0, -x))  # 1 / (1 + e^-x) without overflow for x << 0
  x = x - x.max(axis=-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis=-1, keepdims=True)


def _stack_attentions(out) -> dict[str, jax.Array]:
  """Per-layer attention tuples -> arrays [layers, b, heads, q, k] keyed by direction."""
  names = {
    "language": "language_attentions",
    "vision": "vision_attentions",
    "language_to_vision": "cross_encoder_attentions",
    "vision_to_language": "cross_encoder_attentions_vision_to_language",
  }
  return {k: jnp.stack(getattr(out, v)) for k, v in names.items()}


# ---------------------------------------------------------------------------------------------
# Helpers: buckets, visual inputs, vocabularies.


def pick_bucket(n: int, buckets: Sequence[int], what: str) -> int:
  """The smallest bucket >= n (buckets sorted ascending)."""
  for b in buckets:
    if b >= n:
      return b
  raise ValueError(f"{what} {n} exceeds the largest bucket {buckets[-1]}")


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  """Pads axis 0 to ``rows`` by repeating the last row (real inputs, so no degenerate masks)."""
  if x.shape[0] == rows:
    return x
  return np.concatenate([x, np.repeat(x[-1:], rows - x.shape[0], axis=0)])


def as_box_batch(
  visual_feats, visual_pos, feat_dim: int, pos_dim: int, names=("visual_feats", "visual_pos")
):
  """Validates object features and boxes and stacks them into a batch.

  Args:
    visual_feats: [N, F], [B, N, F] or a list of B arrays [N_i, F].
    visual_pos: the boxes in the same layout, last dim ``pos_dim``.
    feat_dim, pos_dim: what the checkpoint expects.
    names: how the two arguments are called in error messages.

  Returns:
    feats [B, N, F] float32, pos [B, N, pos_dim] float32 (zero-padded to the largest N_i) and
    the box mask [B, N] bool (False = padding).
  """
  fname, pname = names
  if isinstance(visual_feats, np.ndarray | jax.Array) or not isinstance(visual_feats, Sequence):
    feats = np.asarray(visual_feats, np.float32)
    pos = np.asarray(visual_pos, np.float32)
    if feats.ndim == 2:
      feats, pos = feats[None], pos[None]
    if feats.ndim != 3:
      raise ValueError(f"{fname} must be [N, F] or [B, N, F], got shape {feats.shape}")
    if pos.ndim != 3:
      raise ValueError(f"{pname} must have {fname}'s layout [.., N, {pos_dim}], got {pos.shape}")
    feats_list, pos_list = list(feats), list(pos)
  else:
    feats_list = [np.asarray(f, np.float32) for f in visual_feats]
    pos_list = [np.asarray(p, np.float32) for p in visual_pos]
  if len(feats_list) != len(pos_list):
    raise ValueError(f"{fname} holds {len(feats_list)} images but {pname} holds {len(pos_list)}")
  for i, (f, p) in enumerate(zip(feats_list, pos_list)):
    where = f"image {i}: " if len(feats_list) > 1 else ""
    if f.ndim != 2 or f.shape[-1] != feat_dim:
      raise ValueError(
        f"{where}{fname} must be [num_boxes, {feat_dim}] (the checkpoint's visual_feat_dim), "
        f"got shape {f.shape}"
      )
    if p.shape != (f.shape[0], pos_dim):
      raise ValueError(
        f"{where}{pname} must be [num_boxes={f.shape[0]}, {pos_dim}] to match {fname}, "
        f"got shape {p.shape}"
      )
    if f.shape[0] == 0:
      raise ValueError(f"{where}{fname} has no boxes")
    if not (np.isfinite(f).all() and np.isfinite(p).all()):
      raise ValueError(f"{where}{fname} or {pname} contains NaN or inf")
  n = max(f.shape[0] for f in feats_list)
  b = len(feats_list)
  feats = np.zeros((b, n, feat_dim), np.float32)
  pos = np.zeros((b, n, pos_dim), np.float32)
  mask = np.zeros((b, n), bool)
  for i, (f, p) in enumerate(zip(feats_list, pos_list)):
    feats[i, : len(f)], pos[i, : len(p)], mask[i, : len(f)] = f, p, True
  return feats, pos, mask


# Names the answer vocabulary goes by inside a checkpoint or work directory, in search order.
ANSWER_FILES = ("answers.json", "label2ans.json", "trainval_label2ans.json", "answers.txt")


def load_tokenizer(tokenizer, directory: str | os.PathLike | None = None):
  """A ``WordPieceTokenizer`` from itself, a ``vocab.txt`` path, or ``directory/vocab.txt``."""
  from lxmert_jax.data.tokenization import WordPieceTokenizer

  if tokenizer is None:
    if directory is None or not os.path.isfile(os.path.join(directory, "vocab.txt")):
      raise ValueError(
        "no tokenizer given and no vocab.txt in the checkpoint directory: pass tokenizer="
        "<path to the vocab.txt the model was trained with>"
      )
    tokenizer = os.path.join(directory, "vocab.txt")
  if isinstance(tokenizer, str | os.PathLike):
    return WordPieceTokenizer(os.fspath(tokenizer))
  return tokenizer


def load_answer_vocab(answers, directory: str | os.PathLike | None = None) -> list[str]:
  """The answer vocabulary (row i of the answer head = entry i).

  Args:
    answers: a list of strings; a JSON file holding a list, ``{answer: index}`` or
      ``{"answers": [...]}``; a text file with one answer per line; or None to look for
      :data:`ANSWER_FILES` inside ``directory``.
    directory: the checkpoint directory, searched when ``answers`` is None.
  """
  if answers is None:
    found = [os.path.join(directory, n) for n in ANSWER_FILES] if directory else []
    found = [p for p in found if os.path.isfile(p)]
    if not found:
      raise ValueError(
        f"no answer vocabulary given and none of {list(ANSWER_FILES)} in {directory}: pass "
        "answers=<list or JSON file of the answers the head was trained on>"
      )
    answers = found[0]
  if not isinstance(answers, str | os.PathLike):
    return [str(a) for a in answers]
  path = os.fspath(answers)
  with open(path, encoding="utf-8") as f:
    if not path.endswith(".json"):
      # Keep empty lines: VQA's label 0 is the empty answer (spec G21).
      return f.read().rstrip("\n").split("\n")
    data = json.load(f)
  if isinstance(data, dict) and "answers" in data:
    data = data["answers"]
  if isinstance(data, dict):
    # {answer: index}: the original's trainval_ans2label.json.
    order = sorted(data.items(), key=lambda kv: int(kv[1]))
    if [int(v) for _, v in order] != list(range(len(order))):
      raise ValueError(f"{path}: answer indices are not 0..{len(order) - 1}")
    return [k for k, _ in order]
  if not isinstance(data, list) or not all(isinstance(a, str) for a in data):
    raise ValueError(f"{path}: expected a JSON list of answer strings or {{answer: index}}")
  return data


# ---------------------------------------------------------------------------------------------
# Training workdirs.

TRAIN_COMMAND = "python -m lxmert_jax.main --config=configs/easy_vqa.py --workdir={workdir}"


@dataclasses.dataclass
class TrainedRun:
  """What a training workdir holds for inference.

  Attributes:
    model: the loaded model (params of the latest step, its config and task).
    answers: the answer vocabulary of its QA head ([] for NLVR2).
    tokenizer: ``WordPieceTokenizer`` at the run's ``max_seq_length``.
    num_boxes: boxes per image of the training data, if known.
    feature_scaling: easy-VQA ``FeatureScaling.to_dict()`` of the training data, else None.
    source: the step directory the params came from.
  """

  model: Any
  answers: list[str]
  tokenizer: Any
  num_boxes: int | None
  feature_scaling: dict | None
  source: str


def find_trained_step(workdir: str | os.PathLike) -> tuple[str, int]:
  """(checkpoints directory, latest step) of a training workdir, or a FileNotFoundError."""
  from lxmert_jax import checkpoint as ckpt

  workdir = os.path.abspath(os.fspath(workdir))
  found = ckpt.find_checkpoint_step(workdir)
  if found is None:
    raise FileNotFoundError(
      f"no trained model in {workdir}: expected {ckpt.checkpoint_dir(workdir)}/<step>/params. "
      f"Train one with: {TRAIN_COMMAND.format(workdir=workdir)}"
    )
  return found


def load_trained_run(workdir: str | os.PathLike, dtype=jnp.float32) -> TrainedRun:
  """Reads the latest checkpoint of a training workdir (see ``Predictor.from_workdir``)."""
  import orbax.checkpoint as ocp
  from absl import logging as absl_logging

  from lxmert_jax import checkpoint as ckpt
  from lxmert_jax.data.tokenization import WordPieceTokenizer
  from lxmert_jax.pretrained import LxmertPretrained
  from lxmert_jax.train_state import TASK_MODELS

  workdir = os.path.abspath(os.fspath(workdir))
  directory, step = find_trained_step(workdir)
  # Orbax warns on every read-only manager; for loading a finished run that is only noise.
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    loaded = ckpt.load_checkpoint_params(directory, step)
  finally:
    absl_logging.set_verbosity(verbosity)
  # The run's config (task, data directory, text length) is a JSON item of the same step.
  config_item = os.path.join(directory, str(step), "config")
  config = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(config_item)
  task = TASK_MODELS[config["task"]]
  model = LxmertPretrained(loaded.model_config, loaded.params, task, dtype)
  data = config.get("data", {})
  run_dir = (
    os.path.dirname(directory) if os.path.basename(directory) == "checkpoints" else directory
  )
  # The demo publishes vocab.txt and dataset_info.json beside its final checkpoint; a plain
  # training run finds them in its data directory.
  search = [d for d in (run_dir, workdir, data.get("data_dir")) if d]
  vocab = _first_file("vocab.txt", search)
  if vocab is None:
    raise FileNotFoundError(
      f"no vocab.txt in {search}: copy the WordPiece vocabulary the model was trained with to "
      f"{os.path.join(run_dir, 'vocab.txt')}"
    )
  info = {}
  if (info_path := _first_file("dataset_info.json", search)) is not None:
    with open(info_path) as f:
      info = json.load(f)
  return TrainedRun(
    model=model,
    answers=list(loaded.answers or []),
    tokenizer=WordPieceTokenizer(vocab, max_seq_length=int(data.get("max_seq_length") or 20)),
    num_boxes=info.get("num_boxes"),
    feature_scaling=info.get("easy_vqa", {}).get("feature_scaling"),
    source=f"{directory}/{step}",
  )


def _first_file(name: str, directories) -> str | None:
  paths = (os.path.join(d, name) for d in directories)
  return next((p for p in paths if os.path.isfile(p)), None)
